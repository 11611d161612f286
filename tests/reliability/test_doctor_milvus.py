"""`facebank doctor` with FACEBANK_VECTOR_STORE=milvus: it compares the active model's collection with SQL
key by key, and `--fix` re-syncs it (missing faces added, stale ones deleted) as the elected writer, never
beside a running one. Real milvus-lite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.cli import main as facebank
from service.config import DEFAULT_EMBEDDER, Settings
from service.index.milvus import MilvusStore, MilvusTarget
from service.runtime.manifest import load_manifest
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import repository as repo
from service.storage.locks import writer_lock
from tests._milvus import embedded_uri, new_prefix


@pytest.fixture
def setup(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MilvusStore, list[int], str]]:
    """Three faces of the active model in SQL, an empty collection for it; (store, keys, database url)."""
    entry = load_manifest(model_dir / "manifest.toml").get(DEFAULT_EMBEDDER)
    assert entry.embedder is not None
    url = f"sqlite:///{tmp_path / 'd.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    keys = []
    with make_session_factory(engine)() as session:
        person = repo.create_identity(session, name="someone").id
        for seed in range(3):
            vector = np.random.default_rng(seed).normal(size=entry.embedder.dim).astype(np.float32)
            face = repo.add_face(
                session,
                identity_id=person,
                embedding=vector / np.linalg.norm(vector),
                model=entry.tag,
                bbox=[0, 0, 1, 1],
                det_score=1.0,
                landmarks=None,
                image_sha256=uuid.uuid4().hex * 2,
            )
            keys.append(face.key)
        session.commit()
    engine.dispose()
    for uri in embedded_uri(tmp_path):
        environment = {
            "FACEBANK_DATABASE_URL": url,
            "FACEBANK_MODEL_DIR": str(model_dir),
            "FACEBANK_VECTOR_STORE": "milvus",
            "FACEBANK_MILVUS_URI": uri,
            "FACEBANK_MILVUS_COLLECTION_PREFIX": new_prefix(),
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        store = MilvusStore.open(MilvusTarget.of(Settings()), model_tag=entry.tag, dim=entry.embedder.dim)
        yield store, keys, url


def test_the_doctor_finds_a_collection_behind_sql_and_fix_resyncs_it(
    setup: tuple[MilvusStore, list[int], str], capsys: pytest.CaptureFixture[str]
) -> None:
    store, keys, _ = setup
    store.upsert(np.array([10**9]), [uuid.uuid4()], np.ones((1, store.dim), np.float32) / np.sqrt(store.dim))
    assert facebank(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL   the Milvus collection" in out and "(3 missing, 1 stale" in out
    assert facebank(["doctor", "--fix"]) == 0
    assert "fixed  re-synced the Milvus collection" in capsys.readouterr().out
    assert store.keys().tolist() == sorted(keys)
    assert store.applied_position() is not None
    assert facebank(["doctor"]) == 0


def test_fix_leaves_milvus_alone_while_another_process_is_its_writer(
    setup: tuple[MilvusStore, list[int], str], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, url = setup
    engine = make_engine(url)
    running_writer = writer_lock(engine)
    assert running_writer.try_acquire()
    try:
        assert facebank(["doctor", "--fix"]) == 1
        assert "a running server is the Milvus writer" in capsys.readouterr().out
        assert store.count() == 0
    finally:
        running_writer.release()
        engine.dispose()


def test_models_prune_drops_the_old_models_collection(
    setup: tuple[MilvusStore, list[int], str], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, _ = setup
    old = MilvusStore.open(store.target, model_tag="oldnet@0", dim=4)
    old.upsert(np.array([1]), [uuid.uuid4()], np.array([[1.0, 0, 0, 0]], np.float32))
    assert facebank(["models", "prune", "--model", "oldnet@0", "--yes"]) == 0
    assert "dropped the Milvus collection of oldnet@0" in capsys.readouterr().out
    assert old.applied_position() is None  # no collection any more
    assert store.count() == 0  # the active model's collection is untouched
