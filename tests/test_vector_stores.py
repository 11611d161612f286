"""One contract for both vector stores behind `SearchGallery`: the in-process FAISS gallery and a Milvus
collection (real milvus-lite, or the server FACEBANK_TEST_MILVUS_URI names). Faces reach either store
the way they do in service, from SQL through the change log: add, replace, delete, identity-level top-k,
model versions apart, rebuild from SQL, audit against SQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.follower import ChangeFollower
from service.gallery import SearchGallery, gallery_for
from service.index.milvus import MilvusStore, VectorStoreRefused, collection_name
from service.storage import repository as repo
from tests._milvus import SERVER_URI_ENV, embedded_uri, new_prefix
from tests._stored import DIM, MODEL, migrated_sessions, new_person, store_face, unit

MakeGallery = Callable[..., SearchGallery]


@pytest.fixture(params=["sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, f"sqlite:///{tmp_path / 'v.db'}")


@pytest.fixture(params=["faiss", "milvus"])
def make_gallery(
    request: pytest.FixtureRequest, sessions: sessionmaker[Session], tmp_path: Path
) -> Iterator[MakeGallery]:
    """`make_gallery(model_tag, identity_score="mean")`: a gallery of the store under test that this process
    writes."""
    if request.param == "faiss":
        yield lambda tag, identity_score="mean": gallery_for(
            Settings(vector_store="faiss", identity_score=identity_score), sessions, tag, DIM
        )
        return
    for uri in embedded_uri(tmp_path):
        prefix = new_prefix()
        yield lambda tag, identity_score="mean": gallery_for(
            Settings(
                vector_store="milvus",
                milvus_uri=uri,  # noqa: B023
                milvus_collection_prefix=prefix,  # noqa: B023
                identity_score=identity_score,
            ),
            sessions,
            tag,
            DIM,
            writer=True,
        )


def _follower(gallery: SearchGallery, sessions: sessionmaker[Session]) -> ChangeFollower:
    follower = ChangeFollower(gallery, sessions, poll_s=0.05, retention_s=3600)
    follower.rebuild()
    return follower


def _exact_ranking(
    sessions: sessionmaker[Session], query: np.ndarray, k: int, rule: str
) -> list[tuple[uuid.UUID, float]]:
    """The exact identity ranking computed from SQL: by each identity's best face, or by the cosine to the
    normalised mean of its faces."""
    faces: dict[uuid.UUID, list[np.ndarray]] = {}
    with sessions() as session:
        for _keys, vectors, owners in repo.iter_embeddings(session, model=MODEL):
            for vector, owner in zip(vectors, owners, strict=True):
                faces.setdefault(owner, []).append(vector)
    scores = {}
    for owner, vectors in faces.items():
        if rule == "best":
            scores[owner] = max(float(v @ query) for v in vectors)
        else:
            total = np.sum(vectors, axis=0)
            scores[owner] = float(total @ query / np.linalg.norm(total))
    return sorted(scores.items(), key=lambda item: -item[1])[:k]


@pytest.mark.parametrize("rule", ["best", "mean"])
def test_added_faces_are_found_ranked_by_identity_under_each_identity_score_rule(
    make_gallery: MakeGallery, sessions: sessionmaker[Session], rule: str
) -> None:
    follower = _follower(make_gallery(MODEL, identity_score=rule), sessions)
    people = [new_person(sessions, f"p{n}") for n in range(6)]
    for number, person in enumerate(people):
        for seed in range(5):  # many faces of one person must not crowd others out of the top k
            store_face(sessions, person, 100 * number + seed)
    follower.catch_up()
    rankings_differ = False
    for seed in (3, 205, 499, 12345, 7, 8, 9):
        query = unit(seed)
        matches = follower.gallery.identify(query[None, :], 4)[0]
        exact = _exact_ranking(sessions, query, 4, rule)
        assert [m.identity_id for m in matches] == [owner for owner, _ in exact]
        assert [m.score for m in matches] == pytest.approx([score for _, score in exact], abs=1e-5)
        assert len({m.identity_id for m in matches}) == 4
        other = _exact_ranking(sessions, query, 4, "mean" if rule == "best" else "best")
        rankings_differ |= [o for o, _ in other] != [m.identity_id for m in matches]
    assert rankings_differ  # the two rules really rank these people differently
    assert follower.gallery.face_count() == 30
    assert follower.gallery.audit().in_step


def test_a_face_added_again_replaces_its_vector_and_is_counted_once(
    make_gallery: MakeGallery, sessions: sessionmaker[Session]
) -> None:
    gallery = make_gallery(MODEL, identity_score="best")  # what the store holds, not SQL's faces
    person = new_person(sessions)
    key, _ = store_face(sessions, person, 1)
    with gallery.writing():
        gallery.added(key, person, unit(1))
    with gallery.writing():
        gallery.added(key, person, unit(2))
    assert gallery.face_count() == 1
    assert gallery.identify(unit(2)[None, :], 1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_deleting_a_face_or_an_identity_removes_it_from_search_and_the_audit_stays_in_step(
    make_gallery: MakeGallery, sessions: sessionmaker[Session]
) -> None:
    follower = _follower(make_gallery(MODEL), sessions)
    alice, bob = new_person(sessions, "alice"), new_person(sessions, "bob")
    _, alice_face = store_face(sessions, alice, 1)
    store_face(sessions, alice, 2)
    for seed in (3, 4):
        store_face(sessions, bob, seed)
    follower.catch_up()
    with sessions() as session:
        repo.delete_face(session, identity_id=alice, face_id=alice_face)
        session.commit()
    follower.catch_up()
    assert follower.gallery.face_count() == 3
    top = follower.gallery.identify(unit(1)[None, :], 2)[0]
    assert all(m.score < 0.999 for m in top)  # face 1's exact vector is gone
    with sessions() as session:
        repo.delete_identity(session, identity_id=bob)
        session.commit()
    follower.catch_up()
    assert [m.identity_id for m in follower.gallery.identify(unit(3)[None, :], 5)[0]] == [alice]
    audit = follower.gallery.audit()
    assert audit.in_step and audit.sql_faces == audit.index_faces == 1


def test_each_model_version_has_its_own_store_and_never_sees_anothers_faces(
    make_gallery: MakeGallery, sessions: sessionmaker[Session]
) -> None:
    person = new_person(sessions)
    store_face(sessions, person, 1, model=MODEL)
    store_face(sessions, person, 2, model="other@2")
    store_face(sessions, person, 3, model="other@2")
    old, new = make_gallery(MODEL), make_gallery("other@2")
    assert (old.rebuild(), new.rebuild()) == (1, 2)
    assert (old.face_count(), new.face_count()) == (1, 2)
    assert old.identify(unit(2)[None, :], 1)[0][0].score < 0.999
    both = unit(2) + unit(3)  # the person's template under other@2: the mean of its two faces
    expected = float(unit(2) @ both / np.linalg.norm(both))
    assert new.identify(unit(2)[None, :], 1)[0][0].score == pytest.approx(expected, abs=1e-5)
    assert old.audit().in_step and new.audit().in_step


def test_the_audit_finds_missing_and_stale_faces_and_a_rebuild_from_sql_repairs_both(
    make_gallery: MakeGallery, sessions: sessionmaker[Session]
) -> None:
    gallery = make_gallery(MODEL)
    person = new_person(sessions)
    keys = [store_face(sessions, person, seed)[0] for seed in range(4)]
    with gallery.writing():  # the store drifted: one face never arrived, one that SQL lacks did
        for key, seed in zip(keys[:3], range(3), strict=True):
            gallery.added(key, person, unit(seed))
        gallery.added(999_999, person, unit(42))
    audit = gallery.audit()
    assert (audit.missing_keys, audit.stale_keys) == ([keys[3]], [999_999])
    assert gallery.rebuild() == 4
    audit = gallery.audit()
    assert audit.in_step and audit.index_faces == 4


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    yield from embedded_uri(tmp_path)


def test_a_collection_of_another_dimension_or_metric_is_refused_not_used(milvus_uri: str) -> None:
    from pymilvus import DataType, MilvusClient

    prefix = new_prefix()
    MilvusStore.connect(milvus_uri, model_tag=MODEL, dim=DIM + 1, prefix=prefix)
    with pytest.raises(VectorStoreRefused, match=f"holds {DIM + 1}-dimensional vectors"):
        MilvusStore.connect(milvus_uri, model_tag=MODEL, dim=DIM, prefix=prefix)
    client = MilvusClient(milvus_uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("key", DataType.INT64, is_primary=True)
    schema.add_field("identity", DataType.VARCHAR, max_length=36)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    client.create_collection(collection_name(prefix, "l2@1"), schema=schema, index_params=index)
    with pytest.raises(VectorStoreRefused, match="metric L2"):
        MilvusStore.connect(milvus_uri, model_tag="l2@1", dim=DIM, prefix=prefix)


def test_wrong_credentials_are_refused(milvus_uri: str) -> None:
    if not os.environ.get(SERVER_URI_ENV):
        pytest.skip(f"milvus-lite has no authentication: needs {SERVER_URI_ENV} with authorization enabled")
    with pytest.raises(VectorStoreRefused, match="cannot use Milvus"):
        MilvusStore.connect(milvus_uri, model_tag=MODEL, dim=DIM, token="facebank-test:wrong-password")
