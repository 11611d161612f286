"""A missing prerequisite skips a test on a developer's machine and fails it in CI (tests/_ci.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ci import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_prerequisite_skips_with_its_reason(
    ci: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="needs /nowhere/lfw"):
        skip_or_fail_in_ci("needs /nowhere/lfw")


@pytest.mark.parametrize("ci", ["true", "1", "True"])
def test_in_ci_a_missing_prerequisite_fails_with_its_reason(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="needs /nowhere/lfw; CI must provide it"):
        skip_or_fail_in_ci("needs /nowhere/lfw")


_USES_THE_REAL_GATES = """
from tests._db import postgres_or_skip
from tests.conftest import require_shared

def test_postgres():
    next(postgres_or_skip())

def test_shared():
    require_shared()
"""


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: a connection there is refused at once
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("ci", "outcome"), [(None, "2 skipped"), ("true", "2 failed")])
def test_the_postgres_and_shared_gates_skip_or_fail_in_a_real_pytest_run(
    ci: str | None, outcome: str, tmp_path: Path
) -> None:
    (tmp_path / "test_gates.py").write_text(_USES_THE_REAL_GATES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {
        "PYTHONPATH": str(ROOT),
        "FACEBANK_SHARED_DIR": str(tmp_path / "no-shared"),
        "FACEBANK_TEST_POSTGRES_URL": f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/postgres",
    }
    if ci is not None:
        env["CI"] = ci
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfs",
            str(tmp_path / "test_gates.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in run.stdout, run.stdout + run.stderr
    assert run.returncode == (0 if ci is None else 1), run.stdout
    assert "PostgreSQL not reachable" in run.stdout and "needs ../shared" in run.stdout
