"""`facebank doctor` on a database with faces of another model version and unusable embeddings."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from service.cli import main as facebank
from service.config import DEFAULT_EMBEDDER
from service.runtime.manifest import load_manifest
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import repository as repo
from service.storage.tables import AuditEvent, Face
from tests.api.conftest import empty_database


def _unit(seed: int, dim: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def database(
    database_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str, dict[str, uuid.UUID]]:
    """Two people with current faces, one known only by an old model's face, and two broken vectors."""
    upgrade_to_head(database_url)
    empty_database(database_url)  # the module's database: each test starts from nothing
    monkeypatch.setenv("FACEBANK_DATABASE_URL", database_url)
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    entry = load_manifest(model_dir / "manifest.toml").get(DEFAULT_EMBEDDER)
    assert entry.embedder is not None
    tag, dim = entry.tag, entry.embedder.dim
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    upgrade_to_head(engine)
    people: dict[str, uuid.UUID] = {}
    with make_session_factory(engine)() as session:
        for name in ("current", "mixed", "old-only", "broken"):
            people[name] = repo.create_identity(session, name=name).id

        def face(identity: str, model: str, vector: np.ndarray) -> Face:
            return repo.add_face(
                session,
                identity_id=people[identity],
                embedding=vector,
                model=model,
                bbox=[0, 0, 1, 1],
                det_score=1.0,
                landmarks=None,
                image_sha256=uuid.uuid4().hex * 2,
            )

        face("current", tag, _unit(1, dim))
        face("mixed", tag, _unit(2, dim))
        face("mixed", "oldnet@0", _unit(3, 256))
        face("old-only", "oldnet@0", _unit(4, 256))
        not_unit = face("broken", tag, _unit(5, dim) * 3.0)
        truncated = face("broken", tag, _unit(6, dim))
        session.flush()
        # A vector cut short (as by a bad manual import), which no server could load into its index.
        session.execute(
            update(Face).where(Face.key == truncated.key).values(embedding=truncated.embedding[:-8])
        )
        assert not_unit.key
        session.commit()
    engine.dispose()
    return database_url, tag, people


def _count(database_url: str, *conditions: object) -> int:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(Face).where(*conditions))  # type: ignore[arg-type]
    engine.dispose()
    return int(count or 0)


def test_doctor_reports_other_models_and_unusable_embeddings_without_changing_anything(
    database: tuple[str, str, dict[str, uuid.UUID]], capsys: pytest.CaptureFixture[str]
) -> None:
    database_url, tag, _ = database
    assert facebank(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "faces of other models, invisible to search: 2 of oldnet@0" in out
    assert "1 identities have no face of" in out
    assert f"2 faces of {tag} have unusable embeddings" in out
    assert _count(database_url) == 6  # a check changes nothing


def test_doctor_fix_removes_unusable_faces_and_keeps_other_models_unless_asked(
    database: tuple[str, str, dict[str, uuid.UUID]], capsys: pytest.CaptureFixture[str]
) -> None:
    database_url, tag, people = database
    assert facebank(["doctor", "--drop-other-models"]) == 2  # destructive flags need --fix
    assert facebank(["doctor", "--fix"]) == 1  # the other model's faces remain, so still not healthy
    out = capsys.readouterr().out
    assert "fixed  deleted 2 faces with unusable embeddings" in out
    assert "an index rebuilt from SQL holds exactly its 2 faces" in out
    assert _count(database_url, Face.identity_id == people["broken"]) == 0
    assert _count(database_url, Face.model == "oldnet@0") == 2

    assert facebank(["doctor", "--fix", "--drop-other-models"]) == 0
    out = capsys.readouterr().out
    assert "fixed  deleted 2 faces of other models" in out and "healthy" in out
    assert _count(database_url) == _count(database_url, Face.model == tag) == 2
    # Each deletion is audited, with why.
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        reasons = sorted(
            e.detail["reason"]
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action == "face.delete"))
            if e.detail
        )
    engine.dispose()
    assert reasons == ["doctor: other embedding model"] * 2 + ["doctor: unusable embedding"] * 2
    assert facebank(["doctor"]) == 0


def test_doctor_migrates_an_old_schema_only_with_fix(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACEBANK_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    assert facebank(["doctor"]) == 1
    assert "database schema at nothing" in capsys.readouterr().out
    assert facebank(["doctor", "--fix"]) == 0
    assert "migrated the schema" in capsys.readouterr().out
