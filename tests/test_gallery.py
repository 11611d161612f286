"""Gallery.rebuild and Gallery.audit against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from service.gallery import Gallery
from service.index import make_index
from service.storage import repository as repo
from service.storage.tables import Face
from tests._stored import DIM, MODEL, migrated_sessions, new_person, store_face, unit


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, f"sqlite:///{tmp_path / 'g.db'}")


def _store(sessions: sessionmaker[Session], identity: uuid.UUID, seed: int, model: str = MODEL) -> int:
    """Commit one face straight to SQL, as another process would; returns its key."""
    return store_face(sessions, identity, seed, model)[0]


def _drop_in_sql(sessions: sessionmaker[Session], key: int) -> None:
    with sessions() as session:
        session.execute(delete(Face).where(Face.key == key))
        session.commit()


def test_a_rebuilt_gallery_holds_exactly_the_models_faces_and_audits_in_step(
    sessions: sessionmaker[Session],
) -> None:
    person = new_person(sessions)
    keys = [_store(sessions, person, seed) for seed in range(5)]
    _store(sessions, person, 99, model="other@1")  # another model's face never enters this index
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    assert gallery.rebuild() == 5
    assert gallery.index.ids().tolist() == sorted(keys)
    for audit in (gallery.audit(), gallery.audit(since_rebuild=True)):
        assert audit.in_step and audit.sql_faces == audit.index_faces == 5


def test_the_audit_after_a_rebuild_compares_with_what_the_rebuild_read_not_sql_again(
    sessions: sessionmaker[Session],
) -> None:
    person = new_person(sessions)
    keys = [_store(sessions, person, seed) for seed in range(4)]
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    gallery.rebuild()
    _drop_in_sql(sessions, keys[1])  # another process deletes a row behind the gallery's back
    assert gallery.audit(since_rebuild=True).in_step  # the keys the rebuild read, no SQL read
    fresh = gallery.audit()  # reads SQL: the index holds a face SQL no longer has
    assert not fresh.in_step and fresh.stale_in_index == 1 and fresh.stale_keys == [keys[1]]


def test_a_write_through_the_gallery_makes_the_after_rebuild_audit_read_sql(
    sessions: sessionmaker[Session],
) -> None:
    person = new_person(sessions)
    keys = [_store(sessions, person, seed) for seed in range(3)]
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    gallery.rebuild()
    new_key = _store(sessions, person, 50)
    gallery.added(new_key, person, unit(50))
    _drop_in_sql(sessions, keys[0])
    audit = gallery.audit(since_rebuild=True)
    assert audit.sql_faces == 3 and audit.stale_keys == [keys[0]]


def test_the_audit_lists_faces_missing_from_the_index_and_stale_ones_sorted(
    sessions: sessionmaker[Session],
) -> None:
    person = new_person(sessions)
    keys = [_store(sessions, person, seed) for seed in range(3)]
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    gallery.rebuild()
    later = [_store(sessions, person, seed) for seed in range(10, 13)]  # committed by someone else
    _drop_in_sql(sessions, keys[2])
    audit = gallery.audit()
    assert (audit.sql_faces, audit.index_faces) == (5, 3)
    assert audit.missing_from_index == 3 and audit.missing_keys == sorted(later)
    assert audit.stale_in_index == 1 and audit.stale_keys == [keys[2]]
    assert gallery.rebuild() == 5 and gallery.audit(since_rebuild=True).in_step


def test_an_empty_database_rebuilds_to_an_empty_index_in_step(sessions: sessionmaker[Session]) -> None:
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    assert gallery.rebuild() == 0
    audit = gallery.audit(since_rebuild=True)
    assert audit.in_step and audit.sql_faces == 0 and len(gallery.index) == 0


def _store_vector(sessions: sessionmaker[Session], identity: uuid.UUID, vector: np.ndarray, tag: str) -> None:
    with sessions() as session:
        repo.add_face(
            session,
            identity_id=identity,
            embedding=(vector / np.linalg.norm(vector)).astype(np.float32),
            model=MODEL,
            bbox=[0, 0, 1, 1],
            det_score=1.0,
            landmarks=None,
            image_sha256=tag.rjust(64, "0"),
        )
        session.commit()


def test_many_queries_go_to_the_index_together_and_only_crowded_ones_again_deeper(
    sessions: sessionmaker[Session],
) -> None:
    rng = np.random.default_rng(7)
    direction = unit(1000)
    crowd, runner_up = new_person(sessions), new_person(sessions)
    # 40 faces of one person around `direction`: they fill the first 32 results of a query there.
    for n in range(40):
        _store_vector(sessions, crowd, direction + 0.01 * rng.normal(size=DIM), f"c{n}")
    _store_vector(sessions, runner_up, direction + 0.3 * rng.normal(size=DIM), "r")
    for n in range(10):
        _store_vector(sessions, new_person(sessions), rng.normal(size=DIM), f"o{n}")
    # The depth mechanics of the best-face ranking each rule starts from (mean asks for more people).
    gallery = Gallery(make_index(DIM), sessions, MODEL, identity_score="best")
    gallery.rebuild()
    queries = np.stack([direction, unit(2000), unit(3000)])

    one_by_one = [gallery.identify(query[None, :], k=2)[0] for query in queries]
    calls: list[int] = []
    search = gallery.index.search

    def counting_search(batch: np.ndarray, k: int):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return search(batch, k)

    gallery.index.search = counting_search  # type: ignore[method-assign]
    together = gallery.identify(queries, k=2)

    assert together == one_by_one
    assert [m.identity_id for m in together[0]] == [crowd, runner_up]
    # All three at once, then only the crowded query deeper.
    assert calls == [3, 1]


def test_asking_for_more_people_than_the_gallery_holds_does_not_search_every_face(
    sessions: sessionmaker[Session],
) -> None:
    rng = np.random.default_rng(11)
    people = [new_person(sessions) for _ in range(3)]
    for number, person in enumerate(people):
        for n in range(60):
            _store_vector(sessions, person, rng.normal(size=DIM), f"p{number}-{n}")
    gallery = Gallery(make_index(DIM), sessions, MODEL)
    gallery.rebuild()
    depths: list[int] = []
    search = gallery.index.search

    def recording_search(batch: np.ndarray, k: int):  # type: ignore[no-untyped-def]
        depths.append(k)
        return search(batch, k)

    gallery.index.search = recording_search  # type: ignore[method-assign]
    (matches,) = gallery.identify(unit(5)[None, :], k=50)

    assert sorted(m.identity_id for m in matches) == sorted(people)
    # All three people are among the first 32 faces; k=50 alone would have gone to all 180.
    assert max(depths) < 180, depths


def test_an_index_that_lost_track_of_its_vectors_is_rebuilt_from_sql_not_left_broken(
    sessions: sessionmaker[Session],
) -> None:
    from service.index import CpuFlatStorage, IndexNeedsRebuild, SlotIndex
    from service.index.faiss_gpu import InterleavedStorage
    from tests.index.test_slot_index_failures import FailingStorage

    parts = [FailingStorage(DIM) for _ in range(2)]
    index = SlotIndex(InterleavedStorage(parts), new_storage=lambda: CpuFlatStorage(DIM))
    gallery = Gallery(index, sessions, MODEL)
    ada = new_person(sessions)
    for seed in range(4):
        _store(sessions, ada, seed)
    gallery.rebuild()
    bob = new_person(sessions)
    key = _store(sessions, bob, 99)
    parts[1].fail_next_append = True  # one shard stores its share of the batch, the other runs out of memory
    with pytest.raises(IndexNeedsRebuild):  # the index is broken from now on, until reset
        index.add(np.arange(1000, 1004), np.stack([unit(s) for s in range(4)]))

    gallery.added(key, bob, unit(99))  # raises IndexNeedsRebuild inside; the gallery reloads SQL instead

    assert gallery.audit().in_step
    (matches,) = gallery.identify(unit(99)[None, :], k=1)
    assert matches[0].identity_id == bob


def test_by_mean_a_face_deleted_in_sql_stops_counting_before_the_index_hears_of_it(
    sessions: sessionmaker[Session],
) -> None:
    person, other = new_person(sessions), new_person(sessions)
    keys = [_store(sessions, person, seed) for seed in (1, 2)]
    _store(sessions, other, 3)
    gallery = Gallery(make_index(DIM), sessions, MODEL)  # mean of faces, the default
    gallery.rebuild()
    ((top, *_),) = gallery.identify(unit(1)[None, :], 2)
    both = unit(1) + unit(2)
    assert top.identity_id == person
    assert top.score == pytest.approx(float(unit(1) @ both / np.linalg.norm(both)), abs=1e-5)
    _drop_in_sql(sessions, keys[0])  # another process deletes it; this index still holds it
    scores = {m.identity_id: m.score for m in gallery.identify(unit(1)[None, :], 2)[0]}
    assert scores[person] == pytest.approx(float(unit(1) @ unit(2)), abs=1e-5)
    _drop_in_sql(sessions, keys[1])  # no face left in SQL: not a candidate at all
    assert person not in {m.identity_id for m in gallery.identify(unit(1)[None, :], 2)[0]}
