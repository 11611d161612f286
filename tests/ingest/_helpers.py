"""Run the ingest command in-process or as an OS process, and read back what it stored."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from service.config import Settings
from service.ingest.cli import register
from service.storage.engine import make_engine

ROOT = Path(__file__).resolve().parents[2]


def run_ingest(argv: list[str], settings: Settings) -> int:
    """`facebank ingest ARGV` in this process, with these settings."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ingest", *argv])
    return int(args.handler(args, settings))


def ingest_env(settings: Settings) -> dict[str, str]:
    """The environment for `python -m service.ingest` with these settings."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "FACEBANK_MODEL_DIR": str(settings.model_dir),
        "FACEBANK_DATA_DIR": str(settings.data_dir),
    }
    if settings.database_url:
        env["FACEBANK_DATABASE_URL"] = settings.database_url
    return env


def start_ingest(argv: list[str], settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.ingest", *argv],
        cwd=ROOT,
        env=ingest_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stored_faces(database_url: str) -> Counter[tuple[str, str | None, str]]:
    """(identity name, external_id, image sha256) of every stored face, with multiplicity."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT i.name, i.external_id, f.image_sha256 FROM faces f "
                    "JOIN identities i ON i.id = f.identity_id"
                )
            )
            return Counter((name, external_id, sha) for name, external_id, sha in rows)
    finally:
        engine.dispose()


def identity_names(database_url: str) -> Counter[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return Counter(connection.execute(text("SELECT name FROM identities")).scalars())
    finally:
        engine.dispose()


def identities_without_faces(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM identities WHERE id NOT IN (SELECT identity_id FROM faces)"
            return int(connection.execute(text(query)).scalar_one())
    finally:
        engine.dispose()
