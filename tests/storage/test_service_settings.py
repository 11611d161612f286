"""The active embedder in SQL: seeded once, changed only on purpose, agreed on by concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from service.storage import make_session_factory
from service.storage import service_settings as choices
from service.storage.tables import ServiceSetting
from tests._db import lock_waits
from tests._threads import first_of


@pytest.fixture
def clean(engine: Engine) -> Iterator[Engine]:
    """The backend's engine with no service settings before and after the test."""
    with engine.begin() as connection:
        connection.execute(delete(ServiceSetting))
    yield engine
    with engine.begin() as connection:
        connection.execute(delete(ServiceSetting))


def test_a_fresh_database_records_the_first_embedder_offered_and_keeps_it(clean: Engine) -> None:
    sessions = make_session_factory(clean)
    with sessions() as session:
        assert choices.active_embedder(session) is None
        assert choices.seed_active_embedder(session, tag="a@1") == "a@1"
        session.commit()
    with sessions() as session:
        # A later seed (another process's FACEBANK_EMBEDDER) changes nothing: the database's choice wins.
        assert choices.seed_active_embedder(session, tag="b@1") == "a@1"
        session.commit()
        assert choices.active_embedder(session) == "a@1"


def test_setting_the_active_embedder_returns_the_one_it_replaces(clean: Engine) -> None:
    sessions = make_session_factory(clean)
    with sessions() as session:
        assert choices.set_active_embedder(session, tag="a@1") is None
        session.commit()
    with sessions() as session:
        assert choices.set_active_embedder(session, tag="b@2") == "a@1"
        session.commit()
    with sessions() as session:
        assert choices.active_embedder(session) == "b@2"
        row = session.get(ServiceSetting, choices.ACTIVE_EMBEDDER)
        assert row is not None and row.updated_at.tzinfo is not None


def test_an_uncommitted_switch_leaves_the_choice_as_it_was(clean: Engine) -> None:
    sessions = make_session_factory(clean)
    with sessions() as session:
        choices.seed_active_embedder(session, tag="a@1")
        session.commit()
    with sessions() as session:
        choices.set_active_embedder(session, tag="b@2")
        session.rollback()
    with sessions() as session:
        assert choices.active_embedder(session) == "a@1"


def test_processes_seeding_a_fresh_database_at_once_all_see_one_choice(clean: Engine) -> None:
    sessions = make_session_factory(clean)
    start = threading.Barrier(4)
    seen: list[str] = []
    errors: list[BaseException] = []

    def seed(tag: str) -> None:
        try:
            session: Session
            with sessions() as session:
                start.wait()
                seen.append(choices.seed_active_embedder(session, tag=tag))
                session.commit()
        except BaseException as exc:  # collected: a primary-key race would show here
            errors.append(exc)

    threads = [threading.Thread(target=seed, args=(f"m{i}@1",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with sessions() as session:
        winner = choices.active_embedder(session)
    assert winner is not None and winner.startswith("m")
    # Whoever inserted first won; every other seeder waited for it and read back its choice, not its own.
    assert seen == [winner] * 4


def test_a_locked_read_holds_off_a_switch_until_the_reader_commits(clean: Engine) -> None:
    if clean.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time anyway")
    sessions = make_session_factory(clean)
    with sessions() as session:
        choices.set_active_embedder(session, tag="a@1")
        session.commit()
    order: list[str] = []

    def switch() -> None:
        with sessions() as session:
            choices.set_active_embedder(session, tag="b@2")
            session.commit()
            order.append("switched")

    with sessions() as enrolment:
        assert choices.active_embedder(enrolment, lock=True) == "a@1"
        switcher = threading.Thread(target=switch)
        switcher.start()
        # Waiting for the enrolment's lock, as PostgreSQL reports it, not merely slow to start.
        verdict = first_of(
            got_through=lambda: not switcher.is_alive(), held_back=lambda: bool(lock_waits(clean))
        )
        assert verdict == "held_back"
        order.append("enrolled")
        enrolment.commit()
    switcher.join(timeout=10)
    assert order == ["enrolled", "switched"]
