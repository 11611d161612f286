"""The change log and its follower against real SQLite and PostgreSQL: every write that changes what a
search returns is logged in its own transaction, and a follower's index ends equal to SQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from service.follower import ChangeFollower
from service.gallery import Gallery
from service.index import make_index
from service.storage import (
    changes,
    integrity,
    service_settings,
)
from service.storage import repository as repo
from service.storage.tables import Change
from tests._stored import DIM, MODEL, migrated_sessions, new_person, store_face


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, f"sqlite:///{tmp_path / 'f.db'}")


def _follower(sessions: sessionmaker[Session], model: str = MODEL) -> ChangeFollower:
    follower = ChangeFollower(
        Gallery(make_index(DIM), sessions, model), sessions, poll_s=0.05, retention_s=3600
    )
    follower.rebuild()
    return follower


def _kinds(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return [c.kind for c in changes.after(session, position=0, limit=100)]


def _in_step(follower: ChangeFollower) -> bool:
    return follower.gallery.audit().in_step


def test_each_committed_write_is_logged_once_and_a_rolled_back_one_not_at_all(
    sessions: sessionmaker[Session],
) -> None:
    person = new_person(sessions)
    _, face_id = store_face(sessions, person, 1)
    with sessions() as session:
        repo.delete_face(session, identity_id=person, face_id=face_id)
        session.rollback()
    second, _ = store_face(sessions, person, 2)
    with sessions() as session:
        repo.delete_face(session, identity_id=person, face_id=face_id)
        integrity.delete_faces(session, keys=[second])
        service_settings.set_active_embedder(session, tag="other@2")
        repo.delete_identity(session, identity_id=person)
        session.commit()

    assert _kinds(sessions) == [
        "face.added",
        "face.added",
        "face.removed",
        "face.removed",
        "embedder.switched",
        "identity.removed",
    ]


def test_a_follower_applies_other_processes_adds_and_removals_in_order(
    sessions: sessionmaker[Session],
) -> None:
    follower = _follower(sessions)
    ada, bob = new_person(sessions, "ada"), new_person(sessions, "bob")
    key1, face1 = store_face(sessions, ada, 1)
    key2, _ = store_face(sessions, ada, 2)
    store_face(sessions, bob, 3)
    store_face(sessions, bob, 4, model="other@1")  # another model's face never enters this index
    with sessions() as session:
        repo.delete_face(session, identity_id=ada, face_id=face1)
        session.commit()

    assert follower.catch_up() == 5
    assert not follower.gallery.holds(key1) and follower.gallery.holds(key2)
    assert len(follower.gallery.index) == 2 and _in_step(follower)
    with sessions() as session:
        repo.delete_identity(session, identity_id=bob)
        session.commit()
    follower.catch_up()
    assert len(follower.gallery.index) == 1 and _in_step(follower)
    assert follower.catch_up() == 0  # at the head: nothing more to do
    assert follower.status().lag_s < 5


def test_a_face_added_then_deleted_before_the_follower_looks_is_never_indexed(
    sessions: sessionmaker[Session],
) -> None:
    follower = _follower(sessions)
    person = new_person(sessions)
    key, face_id = store_face(sessions, person, 1)
    with sessions() as session:
        repo.delete_face(session, identity_id=person, face_id=face_id)
        session.commit()
    follower.catch_up()
    assert not follower.gallery.holds(key) and len(follower.gallery.index) == 0


def test_applying_again_after_a_rebuild_changes_nothing(sessions: sessionmaker[Session]) -> None:
    person = new_person(sessions)
    store_face(sessions, person, 1)
    follower = _follower(sessions)
    follower.position = 0  # as if the rebuild had read the head before these commits
    follower.catch_up()
    assert len(follower.gallery.index) == 1 and _in_step(follower)


def test_a_follower_whose_position_was_pruned_rebuilds_and_ends_equal_to_sql(
    sessions: sessionmaker[Session],
) -> None:
    follower = _follower(sessions)
    person = new_person(sessions)
    keys = [store_face(sessions, person, seed)[0] for seed in range(5)]
    with sessions() as session:
        # Age every entry so that pruning deletes all but the newest, past this follower's position 0.
        session.execute(update(Change).values(at=datetime.now(UTC) - timedelta(days=2)))
        assert changes.prune(session, before=datetime.now(UTC) - timedelta(days=1)) == 4
        session.commit()
        assert changes.pruned_through(session) == changes.head(session) - 1
    follower.catch_up()
    assert all(follower.gallery.holds(key) for key in keys) and _in_step(follower)
    with sessions() as session:
        assert follower.position == changes.head(session)


def test_an_entry_that_cannot_be_applied_is_reported_then_skipped_by_a_rebuild(
    sessions: sessionmaker[Session],
) -> None:
    follower = _follower(sessions)
    follower.start()
    try:
        with sessions() as session:
            session.add(Change(kind="nonsense"))
            session.commit()
        person = new_person(sessions)
        key, _ = store_face(sessions, person, 1)
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        seen_error = None
        while datetime.now(UTC) < deadline and not follower.gallery.holds(key):
            seen_error = seen_error or follower.status().error
        assert seen_error is not None and "unknown kind 'nonsense'" in seen_error
        assert follower.gallery.holds(key) and _in_step(follower)
    finally:
        follower.close()


def test_while_the_log_cannot_be_read_the_follower_reports_why_and_falls_behind_then_recovers(
    sessions: sessionmaker[Session],
) -> None:
    engine = sessions.kw["bind"]
    follower = _follower(sessions)
    person = new_person(sessions)
    follower.start()
    try:
        with engine.begin() as connection:  # the log table out of reach, as for a broken database
            connection.execute(text("ALTER TABLE changes RENAME TO changes_away"))
        _until(lambda: follower.status().error is not None)
        assert "changes" in (follower.status().error or "")
        stalled = follower.status().lag_s
        time.sleep(0.5)
        assert follower.status().lag_s > stalled  # the lag grows: /readyz turns unready past its bound
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE changes_away RENAME TO changes"))
        key, _ = store_face(sessions, person, 1)
        _until(lambda: follower.gallery.holds(key) and follower.status().error is None)
        assert follower.status().lag_s < 5 and _in_step(follower)
    finally:
        follower.close()


def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def test_a_committed_write_is_not_failed_when_applying_it_at_once_fails(
    sessions: sessionmaker[Session],
) -> None:
    follower = _follower(sessions)
    with sessions.kw["bind"].begin() as connection:
        connection.execute(text("ALTER TABLE changes RENAME TO changes_away"))
    with pytest.raises(Exception, match="changes"):
        follower.catch_up()
    follower.after_write()  # the request's answer does not depend on it: the follower catches up later
