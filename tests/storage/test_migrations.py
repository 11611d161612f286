from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from service.storage import Base, current_revision, head_revision, make_engine, upgrade_to_head
from service.storage.migrate import MIGRATION_LOCK_KEY, alembic_config
from tests._db import lock_waits
from tests._threads import first_of

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"identities", "faces", "api_keys", "audit_events", "service_settings", "changes", "alembic_version"}

# A separate OS process that imports, says "ready", waits for a line on stdin, then migrates.
_MIGRATE_IN_CHILD = """
import sys
from service.storage.migrate import upgrade_to_head
print("ready", flush=True)
sys.stdin.readline()
upgrade_to_head(sys.argv[1])
"""


def _start_migrating_child(url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _MIGRATE_IN_CHILD, url],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
    return child


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def _finish(child: subprocess.Popen[str]) -> None:
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr


def _schema_diffs(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_a_new_database_has_no_revision_until_it_is_upgraded_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = make_engine(url)
    assert current_revision(engine) is None
    upgrade_to_head(url)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()


def test_upgrading_a_database_already_at_head_changes_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade_to_head(engine)
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.parametrize(
    "backend",
    [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)],
)
def test_the_migrated_schema_matches_the_orm_metadata(request: pytest.FixtureRequest, backend: str) -> None:
    engine: Engine = request.getfixturevalue(f"{backend}_engine")
    assert _schema_diffs(engine) == []


def test_the_migrations_downgrade_to_an_empty_database_and_upgrade_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade_to_head(engine)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_to_head(engine)
    assert _schema_diffs(engine) == []
    engine.dispose()


def test_env_reads_the_database_url_from_the_environment_when_no_connection_is_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("FACEBANK_DATABASE_URL", url)
    command.upgrade(alembic_config(), "head")
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.postgres
def test_two_processes_migrating_a_fresh_postgres_database_at_once_both_succeed(
    fresh_postgres_url: str,
) -> None:
    children = [_start_migrating_child(fresh_postgres_url) for _ in range(2)]
    for child in children:  # both are imported and waiting; release them together
        _go(child)
    for child in children:
        _finish(child)

    engine = make_engine(fresh_postgres_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        names = connection.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        ).scalars()
        assert sorted(names) == sorted(TABLES)
    assert _schema_diffs(engine) == []
    engine.dispose()


@pytest.mark.postgres
def test_a_postgres_upgrade_waits_while_another_holds_the_migration_lock(fresh_postgres_url: str) -> None:
    engine = make_engine(fresh_postgres_url)
    child = _start_migrating_child(fresh_postgres_url)
    with engine.begin() as holder:
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        _go(child)
        # Not "still running after a second?" (a slow child is too): either PostgreSQL reports it waiting
        # for the advisory lock, or it migrated and exited without waiting.
        verdict = first_of(
            got_through=lambda: child.poll() is not None, held_back=lambda: "advisory" in lock_waits(engine)
        )
        assert verdict == "held_back", "the upgrade did not wait for the lock"
        assert current_revision(engine) is None
    _finish(child)  # the lock went with the holder's commit
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_processes_migrating_a_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """SQLite runs DDL outside a transaction unless one is begun explicitly: without the write lock taken
    first, processes starting together each create the tables and all but one fail."""
    url = f"sqlite:///{tmp_path / 'facebank.db'}"
    children = [_start_migrating_child(url) for _ in range(4)]
    for child in children:
        _go(child)
    for child in children:
        _finish(child)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()
