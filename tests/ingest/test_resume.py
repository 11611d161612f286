"""Stopping a run at any moment — kill -9, Ctrl-C, or a second process racing it — then running it again
ends exactly as one uninterrupted run: each accepted photo stored once, no identity without its face."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from service.config import Settings
from tests.ingest._helpers import (
    identities_without_faces,
    identity_names,
    run_ingest,
    start_ingest,
    stored_faces,
)
from tests.ingest.conftest import copy_lfw_gallery

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 60 LFW photos: long enough (a second or two) to be stopped in the middle."""
    return copy_lfw_gallery(tmp_path_factory.mktemp("resume"), identities=15, singles=6, per_identity=4)


@pytest.fixture(scope="module")
def reference(gallery: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What one uninterrupted run stores."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("reference"), model_dir=model_dir)
    assert run_ingest([str(gallery)], settings) == 0
    return {
        "faces": stored_faces(settings.resolved_database_url),
        "identities": identity_names(settings.resolved_database_url),
    }


def _sqlite_faces(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM faces").fetchone()[0])
    except sqlite3.OperationalError:  # not created or not migrated yet
        return 0


def _wait_for_faces(database: Path, at_least: int, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        count = _sqlite_faces(database)
        if count >= at_least or process.poll() is not None:
            return count
        time.sleep(0.01)
    raise AssertionError("the ingest process stored nothing in 120 s")


def test_kill_9_twice_mid_run_then_resuming_stores_each_photo_exactly_once(
    gallery: Path, model_dir: Path, reference: dict, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model_dir=model_dir)
    database = tmp_path / "data" / "facebank.db"
    total = sum(reference["faces"].values())

    seen = 0
    for more in (1, 15):
        process = start_ingest([str(gallery)], settings)
        seen = _wait_for_faces(database, seen + more, process)
        process.kill()
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
        assert 0 < seen < total, "the kill landed in the middle of the run"
        assert identities_without_faces(settings.resolved_database_url) == 0
        seen = _sqlite_faces(database)

    report = tmp_path / "resume.json"
    assert run_ingest([str(gallery), "--report", str(report)], settings) == 0

    assert stored_faces(settings.resolved_database_url) == reference["faces"]
    assert identity_names(settings.resolved_database_url) == reference["identities"]
    totals = json.loads(report.read_text())["totals"]
    assert totals["skipped"] == seen and totals["ingested"] == total - seen


def test_ctrl_c_finishes_the_photos_in_flight_reports_them_and_exits_130(
    gallery: Path, model_dir: Path, reference: dict, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model_dir=model_dir)
    database = tmp_path / "data" / "facebank.db"
    report = tmp_path / "stopped.json"
    process = start_ingest([str(gallery), "--report", str(report)], settings)
    _wait_for_faces(database, 1, process)

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "SIGINT: stopping after the photos in flight" in stderr
    assert "stopped early" in stderr and "Traceback" not in stderr
    document = json.loads(report.read_text())
    assert document["meta"]["interrupted"] is True
    stored = sum(stored_faces(settings.resolved_database_url).values())
    assert document["totals"]["ingested"] == stored < sum(reference["faces"].values())

    assert run_ingest([str(gallery)], settings) == 0
    assert stored_faces(settings.resolved_database_url) == reference["faces"]


@pytest.mark.postgres
def test_two_processes_ingesting_one_folder_into_postgres_at_once_store_each_photo_once(
    gallery: Path, model_dir: Path, reference: dict, tmp_path: Path, fresh_postgres_url: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model_dir=model_dir, database_url=fresh_postgres_url)
    processes = [start_ingest([str(gallery), "--workers", "1"], settings) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr

    assert stored_faces(fresh_postgres_url) == reference["faces"]
    assert identity_names(fresh_postgres_url) == reference["identities"], "no identity was created twice"
