from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import select, text

from service.storage import Identity, make_engine, make_session_factory, upgrade_to_head
from service.storage.engine import normalise_url


def test_a_sqlite_file_database_enforces_foreign_keys_and_uses_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_a_sqlite_engine_creates_the_parent_directory_of_its_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    engine.dispose()
    assert path.exists()


def test_an_in_memory_sqlite_database_is_one_database_for_every_thread() -> None:
    engine = make_engine("sqlite://")
    upgrade_to_head(engine)
    factory = make_session_factory(engine)
    with factory() as session:
        session.add(Identity(name="seen from another thread"))
        session.commit()
    names: list[str] = []

    def read() -> None:
        with factory() as session:
            names.extend(session.scalars(select(Identity.name)))

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert names == ["seen from another thread"]


def test_a_bare_postgresql_url_gets_the_psycopg_3_driver_and_pre_ping() -> None:
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    engine = make_engine("postgresql://u@h/db", pool_size=3)  # no connection is made yet
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
    assert engine.pool.size() == 3  # type: ignore[attr-defined]


def test_the_session_factory_keeps_loaded_attributes_after_commit() -> None:
    engine = make_engine("sqlite://")
    upgrade_to_head(engine)
    with make_session_factory(engine)() as session:
        identity = Identity(name="kept")
        session.add(identity)
        session.commit()
        assert "name" in identity.__dict__  # not expired, so no reload is needed to read it


def test_sqlite_overwrites_deleted_rows(tmp_path: Path) -> None:
    from service.storage.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'secure.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    engine.dispose()
