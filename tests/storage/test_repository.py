"""Repository functions, each run against SQLite and PostgreSQL (see the `session` fixture)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.storage import Face, Identity
from service.storage import repository as repo
from service.storage.repository import UNSET, Conflict, InvalidCursor

SHA = "ab" * 32


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _add(
    session: Session, identity: Identity, *, seed: int = 0, model: str = "m@1", sha: str = SHA, dim: int = 8
) -> Face:
    return repo.add_face(
        session,
        identity_id=identity.id,
        embedding=_vec(seed, dim),
        model=model,
        bbox=[1.0, 2.0, 30.5, 40.25],
        det_score=0.98,
        landmarks=[[1.0, 2.0]] * 5,
        image_sha256=sha,
    )


# --- identities ----------------------------------------------------------------------------------------


def test_an_identity_is_created_with_its_fields_and_read_back_from_another_session(session: Session) -> None:
    created = repo.create_identity(session, name="Ada", external_id="ext-1", metadata={"team": ["x", 1]})
    session.commit()
    with Session(session.get_bind()) as other:
        got = repo.get_identity(other, identity_id=created.id)
        assert got is not None
        assert (got.name, got.external_id, got.metadata_) == ("Ada", "ext-1", {"team": ["x", 1]})
        assert got.created_at.tzinfo is UTC and got.updated_at.tzinfo is UTC
        assert got.created_at == created.created_at


def test_getting_an_unknown_identity_returns_none(session: Session) -> None:
    assert repo.get_identity(session, identity_id=uuid.uuid4()) is None


def test_a_duplicate_external_id_is_a_conflict(session: Session) -> None:
    repo.create_identity(session, name="a", external_id="same")
    with pytest.raises(Conflict) as caught:
        repo.create_identity(session, name="b", external_id="same")
    assert caught.value.field == "external_id"
    # The pre-check caught it, so the transaction is still usable.
    repo.create_identity(session, name="c", external_id=None)
    repo.create_identity(session, name="d", external_id=None)  # many identities may have no external id
    session.commit()


def test_the_unique_constraint_catches_a_duplicate_the_pre_check_missed(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.create_identity(session, name="a", external_id="raced")
    session.commit()
    # As if another transaction committed "raced" between our check and our insert.
    monkeypatch.setattr(repo, "_external_id_taken", lambda *args, **kwargs: False)
    with pytest.raises(Conflict):
        repo.create_identity(session, name="b", external_id="raced")
    session.rollback()
    assert len(repo.list_identities(session, limit=10)[0]) == 1


def test_update_changes_only_the_fields_given(session: Session) -> None:
    identity = repo.create_identity(session, name="old", external_id="e", metadata={"a": 1})
    before = identity.updated_at
    updated = repo.update_identity(session, identity_id=identity.id, name="new")
    assert updated is not None
    assert (updated.name, updated.external_id, updated.metadata_) == ("new", "e", {"a": 1})
    assert updated.updated_at > before


def test_update_with_explicit_none_clears_a_field(session: Session) -> None:
    identity = repo.create_identity(session, name="n", external_id="e", metadata={"a": 1})
    repo.update_identity(session, identity_id=identity.id, external_id=None, metadata=None)
    session.commit()
    session.expire_all()
    got = repo.get_identity(session, identity_id=identity.id)
    assert got is not None
    assert (got.name, got.external_id, got.metadata_) == ("n", None, None)


def test_update_to_an_external_id_another_identity_holds_is_a_conflict(session: Session) -> None:
    repo.create_identity(session, name="a", external_id="taken")
    b = repo.create_identity(session, name="b", external_id="mine")
    with pytest.raises(Conflict):
        repo.update_identity(session, identity_id=b.id, external_id="taken")
    # Re-setting one's own external id is not a conflict.
    assert repo.update_identity(session, identity_id=b.id, external_id="mine", name=UNSET) is not None


def test_updating_or_deleting_an_unknown_identity_returns_none(session: Session) -> None:
    assert repo.update_identity(session, identity_id=uuid.uuid4(), name="x") is None
    assert repo.delete_identity(session, identity_id=uuid.uuid4()) is None


# --- pagination ----------------------------------------------------------------------------------------


def _walk(session: Session, *, limit: int) -> list[list[Identity]]:
    pages: list[list[Identity]] = []
    cursor: str | None = None
    while True:
        page, cursor = repo.list_identities(session, limit=limit, cursor=cursor)
        pages.append(page)
        if cursor is None:
            return pages
        assert base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))  # url-safe base64
        assert not set(cursor) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_pages_follow_creation_order_and_the_cursor_reaches_every_identity_once(session: Session) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    created = [repo.create_identity(session, name=f"p{i}") for i in range(7)]
    for i, identity in enumerate(created):
        identity.created_at = start + timedelta(seconds=i)
    session.commit()

    pages = _walk(session, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i.id for p in pages for i in p] == [i.id for i in created]


def test_a_last_page_that_is_exactly_full_has_no_next_cursor(session: Session) -> None:
    for i in range(4):
        repo.create_identity(session, name=f"p{i}")
    assert [len(p) for p in _walk(session, limit=2)] == [2, 2]
    page, cursor = repo.list_identities(session, limit=4)
    assert (len(page), cursor) == (4, None)


def test_identities_created_in_the_same_instant_are_paged_by_id_without_loss(session: Session) -> None:
    same = datetime(2024, 5, 5, 12, 0, 0, 123456, tzinfo=UTC)
    created = [repo.create_identity(session, name=f"t{i}") for i in range(5)]
    for identity in created:
        identity.created_at = same
    session.commit()
    seen = [i.id for p in _walk(session, limit=2) for i in p]
    assert sorted(seen) == sorted(i.id for i in created)
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        "x",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"c": "2024-01-01T00:00:00+00:00"}').decode(),
        base64.urlsafe_b64encode(b'{"c": "yesterday", "i": "00"}').decode(),
        base64.urlsafe_b64encode(b'{"c": "2024-01-01T00:00:00", "i": "' + b"0" * 32 + b'"}').decode(),
    ],
    ids=["not-base64", "bad-padding", "not-utf8", "not-an-object", "no-id", "bad-date", "naive-date"],
)
def test_a_malformed_cursor_is_rejected(session: Session, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        repo.list_identities(session, limit=10, cursor=cursor)


def test_a_limit_below_one_is_refused(session: Session) -> None:
    with pytest.raises(ValueError):
        repo.list_identities(session, limit=0)


# --- faces ---------------------------------------------------------------------------------------------


def test_added_faces_get_increasing_keys_and_their_embeddings_back_bit_exactly(session: Session) -> None:
    identity = repo.create_identity(session, name="f")
    faces = [_add(session, identity, seed=s, dim=512) for s in range(3)]
    keys = [f.key for f in faces]
    assert all(isinstance(k, int) for k in keys) and keys == sorted(keys) and len(set(keys)) == 3
    session.commit()
    session.expire_all()

    stored = repo.list_faces(session, identity_id=identity.id)
    assert [f.key for f in stored] == keys
    for seed, face in enumerate(stored):
        assert face.dim == 512
        assert repo.from_bytes(face.embedding, face.dim).tobytes() == _vec(seed, 512).tobytes()
    assert stored[0].bbox == [1.0, 2.0, 30.5, 40.25]
    assert stored[0].landmarks == [[1.0, 2.0]] * 5
    assert stored[0].det_score == pytest.approx(0.98)


def test_a_face_for_an_unknown_identity_violates_the_foreign_key(session: Session) -> None:
    with pytest.raises(IntegrityError):
        _add(session, Identity(id=uuid.uuid4(), name="ghost"))


def test_a_face_is_found_and_deleted_only_through_its_own_identity(session: Session) -> None:
    owner = repo.create_identity(session, name="owner")
    stranger = repo.create_identity(session, name="stranger")
    face = _add(session, owner)

    assert repo.get_face(session, identity_id=stranger.id, face_id=face.id) is None
    assert repo.delete_face(session, identity_id=stranger.id, face_id=face.id) is None
    assert repo.get_face(session, identity_id=owner.id, face_id=face.id) is face
    assert repo.delete_face(session, identity_id=owner.id, face_id=face.id) == face.key
    assert repo.get_face(session, identity_id=owner.id, face_id=face.id) is None
    assert repo.delete_face(session, identity_id=owner.id, face_id=face.id) is None


def test_the_key_of_a_deleted_newest_face_is_never_handed_out_again(session: Session) -> None:
    identity = repo.create_identity(session, name="k")
    _add(session, identity)
    newest = _add(session, identity, seed=1)
    session.commit()
    repo.delete_face(session, identity_id=identity.id, face_id=newest.id)
    session.commit()
    assert _add(session, identity, seed=2).key > newest.key


def test_deleting_an_identity_deletes_its_faces_and_returns_their_keys(session: Session) -> None:
    doomed = repo.create_identity(session, name="doomed")
    kept = repo.create_identity(session, name="kept")
    doomed_keys = [_add(session, doomed, seed=s).key for s in range(3)]
    kept_face = _add(session, kept, seed=9)
    session.commit()

    assert repo.delete_identity(session, identity_id=doomed.id) == doomed_keys
    session.commit()
    assert repo.get_identity(session, identity_id=doomed.id) is None
    assert session.scalars(select(Face.key)).all() == [kept_face.key]


def test_deleting_an_identity_whose_faces_are_loaded_in_the_session_works(session: Session) -> None:
    identity = repo.create_identity(session, name="loaded")
    keys = [_add(session, identity, seed=s).key for s in range(2)]
    session.commit()
    assert len(identity.faces) == 2  # loads the collection into the session
    assert repo.delete_identity(session, identity_id=identity.id) == keys
    session.commit()
    assert repo.count_faces(session) == 0


def test_the_database_itself_cascades_an_identity_delete_to_its_faces(session: Session) -> None:
    identity = repo.create_identity(session, name="c")
    _add(session, identity)
    session.commit()
    session.execute(delete(Identity).where(Identity.id == identity.id))  # bypasses the ORM
    session.commit()
    assert repo.count_faces(session) == 0


def test_face_counts_include_identities_without_faces(session: Session) -> None:
    two = repo.create_identity(session, name="two")
    none = repo.create_identity(session, name="none")
    _add(session, two)
    _add(session, two, seed=1)
    unknown = uuid.uuid4()
    assert repo.face_counts(session, identity_ids=[two.id, none.id, unknown]) == {
        two.id: 2,
        none.id: 0,
        unknown: 0,
    }
    assert repo.face_counts(session, identity_ids=[]) == {}


def test_identity_names_are_returned_for_the_identities_that_exist(session: Session) -> None:
    a = repo.create_identity(session, name="Ann")
    b = repo.create_identity(session, name="Bob")
    names = repo.identity_names(session, identity_ids=[a.id, b.id, uuid.uuid4()])
    assert names == {a.id: "Ann", b.id: "Bob"}


def test_faces_are_counted_per_model(session: Session) -> None:
    identity = repo.create_identity(session, name="m")
    for seed in range(3):
        _add(session, identity, seed=seed, model="b@1")
    _add(session, identity, model="a@2")
    assert repo.count_faces(session) == 4
    assert repo.count_faces(session, model="b@1") == 3
    assert repo.count_faces(session, model="unknown") == 0
    assert repo.models_in_use(session) == {"a@2": 1, "b@1": 3}


def test_a_face_is_found_by_identity_image_and_model(session: Session) -> None:
    identity = repo.create_identity(session, name="i")
    other = repo.create_identity(session, name="o")
    face = _add(session, identity, sha="cd" * 32, model="m@1")
    find = repo.find_face_by_image
    assert find(session, identity_id=identity.id, image_sha256="cd" * 32, model="m@1") is face
    assert find(session, identity_id=identity.id, image_sha256="cd" * 32, model="m@2") is None
    assert find(session, identity_id=other.id, image_sha256="cd" * 32, model="m@1") is None
    assert find(session, identity_id=identity.id, image_sha256="ef" * 32, model="m@1") is None


# --- streaming embeddings ------------------------------------------------------------------------------


def test_embeddings_stream_in_key_order_in_batches_of_the_given_size(session: Session) -> None:
    a = repo.create_identity(session, name="a")
    b = repo.create_identity(session, name="b")
    expected: list[tuple[int, uuid.UUID, np.ndarray]] = []
    for seed in range(8):
        owner = a if seed % 3 else b
        face = _add(session, owner, seed=seed, dim=16)
        expected.append((face.key, owner.id, _vec(seed, 16)))
        _add(session, owner, seed=100 + seed, model="other@1", dim=4)  # interleaved, must be skipped
    session.commit()

    batches = list(repo.iter_embeddings(session, model="m@1", batch_size=3))
    assert [len(keys) for keys, _, _ in batches] == [3, 3, 2]
    keys = np.concatenate([k for k, _, _ in batches])
    vectors = np.concatenate([v for _, v, _ in batches])
    identity_ids = [i for _, _, ids in batches for i in ids]
    assert keys.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape == (8, 16)
    assert keys.tolist() == [k for k, _, _ in expected]
    assert identity_ids == [i for _, i, _ in expected]
    assert vectors.tobytes() == np.stack([v for _, _, v in expected]).tobytes()
    assert vectors.flags.writeable


def test_streaming_a_model_without_faces_yields_nothing(session: Session) -> None:
    assert list(repo.iter_embeddings(session, model="nobody@1")) == []


def test_streaming_refuses_a_model_whose_embeddings_differ_in_size(session: Session) -> None:
    identity = repo.create_identity(session, name="mixed")
    _add(session, identity, dim=8)
    _add(session, identity, seed=1, dim=16)
    with pytest.raises(repo.StorageError, match="different sizes"):
        list(repo.iter_embeddings(session, model="m@1"))
