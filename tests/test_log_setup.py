"""The command line shows facebank's own lines; Alembic's and FAISS's chatter only with -v."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _facebank(tmp_path: Path, *argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACEBANK_DATA_DIR": str(tmp_path)}
    env.pop("FACEBANK_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_migrating_a_new_database_prints_no_alembic_lines_unless_verbose(tmp_path: Path) -> None:
    quiet = _facebank(tmp_path / "a", "keys", "list")
    assert "alembic" not in quiet and "setup plugin" not in quiet, quiet
    verbose = _facebank(tmp_path / "b", "-v", "keys", "list")
    assert "alembic" in verbose, "with -v the library lines are there"


def test_loading_faiss_prints_nothing_unless_verbose() -> None:
    code = (
        "import sys; from service.log_setup import configure_logging; "
        "configure_logging(len(sys.argv) > 1); import faiss"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "faiss" not in quiet.stderr, quiet.stderr
    verbose = subprocess.run(
        [sys.executable, "-c", code, "-v"], env=env, capture_output=True, text=True, check=True
    )
    assert "faiss.loader" in verbose.stderr
