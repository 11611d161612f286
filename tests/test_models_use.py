"""Switching the service between embedders, end to end on SQLite and PostgreSQL.

Model A is the prepared MobileFaceNet, recorded by each test (it is no longer the default: a database that
chose it keeps it); model B (`tests/_embedders.py`) is a registered trained model whose vectors are A's with
every other sign flipped, so an A vector and a B vector of the same face score about 0: faces that were
really re-embedded with B are found by B, and A's are not.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from service.active_model import EmbedderConflict, resolve_embedder
from service.api import create_app
from service.cli import main as facebank
from service.cli.serve import load_for_serving
from service.config import DEFAULT_EMBEDDER, Settings
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import service_settings as choices
from service.storage.tables import AuditEvent, Face, ServiceSetting
from tests._client import local_client
from tests._embedders import FLIPPED, FLIPPED_TAG, add_flipped_embedder, copy_model_dir
from tests.ingest.conftest import copy_lfw_gallery

A_TAG = "mobilefacenet@1"


@pytest.fixture(scope="module")
def two_embedders(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared folder with MobileFaceNet (A) and the flipped trained model (B)."""
    target = copy_model_dir(model_dir, tmp_path_factory.mktemp("two") / "models")
    add_flipped_embedder(target)
    return target


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LFW people with one or two photos each; one more photo of each is kept apart as a probe."""
    folder = copy_lfw_gallery(tmp_path_factory.mktemp("gallery") / "people", identities=3, per_identity=3)
    first = sorted(p for p in folder.iterdir())[0]
    probes = folder.parent / "probes"
    probes.mkdir()
    for person in folder.iterdir():
        shutil.move(sorted(person.glob("*.jpg"))[-1], probes / f"{person.name}.jpg")
    assert (probes / f"{first.name}.jpg").is_file()
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'facebank.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
def environment(
    database_url: str, two_embedders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The CLI's and the app's environment: this database and model folder, FACEBANK_EMBEDDER unset."""
    monkeypatch.setenv("FACEBANK_DATABASE_URL", database_url)
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(two_embedders))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FACEBANK_EMBEDDER", raising=False)
    yield database_url


def _record_active(database_url: str, tag: str) -> None:
    """The database records `tag` as its active embedder, as one that chose it earlier does."""
    upgrade_to_head(database_url)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        choices.set_active_embedder(session, tag=tag)
        session.commit()
    engine.dispose()


def _faces_by_model(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(select(Face.model, func.count()).group_by(Face.model)).all()
        return {model: int(count) for model, count in rows}
    finally:
        engine.dispose()


def _identify(client: TestClient, photo: Path) -> str | None:
    """The name of the identity found for the largest face of `photo`, or None."""
    response = client.post("/v1/identify", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    face = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
    return face["identity"]["name"] if face["identity"] else None


def test_switching_models_keeps_them_apart_until_re_ingested_then_prunes_the_old_one(
    environment: str, gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = environment
    person = sorted(p.name for p in gallery.iterdir())[0]
    probe = gallery.parent / "probes" / f"{person}.jpg"
    n = len(list(gallery.rglob("*.jpg")))
    assert n >= 3

    # 1. Enroll with A: a fresh database records the configured embedder on the first ingest; after that
    # the variable can go, the database decides.
    monkeypatch.setenv("FACEBANK_EMBEDDER", "mobilefacenet")
    assert facebank(["ingest", str(gallery)]) == 0
    monkeypatch.delenv("FACEBANK_EMBEDDER")
    assert _faces_by_model(database_url) == {A_TAG: n}
    with local_client(create_app(Settings())) as client:
        assert client.app.state.facebank.serving.embedder_tag == A_TAG  # type: ignore[attr-defined]
        assert _identify(client, probe) == person
    capsys.readouterr()

    # 2. Switch to B: checked, recorded, and the way forward printed.
    assert facebank(["models", "use", FLIPPED]) == 0
    out = capsys.readouterr().out
    assert f"active embedder: {FLIPPED_TAG} (was {A_TAG})" in out
    assert f"{n} stored faces belong to other models ({n} of {A_TAG})" in out
    assert "3 identities cannot be found until re-enrolled" in out
    assert "facebank ingest FOLDER" in out and f"facebank models prune --model {A_TAG}" in out

    # 3. A server started now runs B; A's faces stay out of its index and are counted, not searched.
    with local_client(create_app(Settings())) as client:
        state = client.app.state.facebank  # type: ignore[attr-defined]
        assert state.serving.embedder_tag == FLIPPED_TAG and len(state.serving.gallery.index) == 0
        assert _identify(client, probe) is None
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["checks"]["other_model_faces"] == n and ready["checks"]["faces"] == 0
        assert client.get("/v1/admin/index").json()["other_models"] == {A_TAG: n}

    # 4. The doctor flags A's faces and says what to do.
    assert facebank(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"active embedder {FLIPPED_TAG} (128 dimensions; recorded in the database)" in out
    assert f"faces of other models, invisible to search: {n} of {A_TAG}" in out
    assert f"`facebank models prune --model {A_TAG}`" in out

    # 5. Ingesting the same folder again enrolls every photo anew with B (nothing is skipped as "already in").
    assert facebank(["ingest", str(gallery)]) == 0
    assert f"ingested {n}; skipped 0" in capsys.readouterr().err
    assert _faces_by_model(database_url) == {A_TAG: n, FLIPPED_TAG: n}
    with local_client(create_app(Settings())) as client:
        assert len(client.app.state.facebank.serving.gallery.index) == n  # type: ignore[attr-defined]
        assert _identify(client, probe) == person  # B's vectors really are B's: found by a B query

    # 6. Prune: never the active model; asks first; then A's rows are gone and the deletion is audited.
    assert facebank(["models", "prune", "--model", FLIPPED_TAG, "--yes"]) == 1
    assert "is the active embedder" in capsys.readouterr().err
    assert facebank(["models", "prune", "--model", A_TAG]) == 1  # no terminal to answer: nothing deleted
    assert _faces_by_model(database_url) == {A_TAG: n, FLIPPED_TAG: n}
    assert facebank(["models", "prune", "--model", A_TAG, "--yes"]) == 0
    assert f"deleted {n} faces of {A_TAG}" in capsys.readouterr().out
    assert _faces_by_model(database_url) == {FLIPPED_TAG: n}
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
        pruned = session.scalars(select(AuditEvent).where(AuditEvent.action == "model.prune")).one()
    engine.dispose()
    assert actions.count("face.delete") == n and actions.count("model.use") == 1
    assert pruned.target_id == A_TAG and pruned.detail == {
        "faces": n,
        "identities_left_without_faces": 0,
        "active": FLIPPED_TAG,
    }
    assert facebank(["models", "prune", "--model", A_TAG, "--yes"]) == 0  # again: nothing left to do
    assert "no faces of" in capsys.readouterr().out
    assert facebank(["doctor"]) == 0

    # 7. `models list` marks B active and counts its faces.
    assert facebank(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"database: active embedder {FLIPPED_TAG}" in listing
    (line,) = [row for row in listing.splitlines() if row[2:].startswith(f"{FLIPPED_TAG} ")]
    assert line.startswith("*") and "trained" in line and f"{n} faces" in line
    (line,) = [row for row in listing.splitlines() if row[2:].startswith(f"{A_TAG} ")]
    assert line.startswith(" ") and "0 faces" in line


def test_an_explicit_conflicting_embedder_refuses_to_start_naming_both_and_the_fix(
    environment: str, gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = environment
    _record_active(database_url, FLIPPED_TAG)

    # Unset: the database's choice wins.
    with local_client(create_app(Settings())) as client:
        assert client.app.state.facebank.serving.embedder_tag == FLIPPED_TAG  # type: ignore[attr-defined]

    # Set explicitly to something else: the app, `serve`, `ingest` and the doctor all refuse, saying why.
    monkeypatch.setenv("FACEBANK_EMBEDDER", "mobilefacenet")
    with pytest.raises(EmbedderConflict) as refused, local_client(create_app(Settings())):
        pass
    message = str(refused.value)
    assert f"FACEBANK_EMBEDDER=mobilefacenet ({A_TAG})" in message and FLIPPED_TAG in message
    assert "`facebank models use mobilefacenet`" in message
    assert facebank(["serve"]) == 2
    assert "refusing to serve: FACEBANK_EMBEDDER=mobilefacenet" in capsys.readouterr().err
    assert facebank(["ingest", str(gallery)]) == 1
    assert _faces_by_model(database_url) == {}
    assert facebank(["doctor"]) == 1
    assert "FACEBANK_EMBEDDER=mobilefacenet disagrees with it" in capsys.readouterr().out

    # Set explicitly to the database's choice: fine.
    monkeypatch.setenv("FACEBANK_EMBEDDER", FLIPPED)
    with local_client(create_app(Settings())) as client:
        assert client.app.state.facebank.serving.embedder_tag == FLIPPED_TAG  # type: ignore[attr-defined]


def test_a_fresh_database_is_seeded_by_the_configured_embedder_once(
    environment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = environment
    monkeypatch.setenv("FACEBANK_EMBEDDER", FLIPPED)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    assert resolve_embedder(Settings(), sessions).embedder == FLIPPED
    monkeypatch.delenv("FACEBANK_EMBEDDER")
    # The default no longer decides: the database's first choice stays.
    assert resolve_embedder(Settings(), sessions).embedder == FLIPPED
    with sessions() as session:
        assert choices.active_embedder(session) == FLIPPED_TAG
    engine.dispose()


def test_a_fresh_database_left_unconfigured_records_the_default_embedder(environment: str) -> None:
    engine = make_engine(environment, pool_size=1, max_overflow=0)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    assert resolve_embedder(Settings(), sessions).embedder == DEFAULT_EMBEDDER == "edgeface-xs-q"
    with sessions() as session:
        assert choices.active_embedder(session) == f"{DEFAULT_EMBEDDER}@1"
    engine.dispose()


def test_a_database_that_recorded_mobilefacenet_keeps_serving_it_after_the_default_changed(
    environment: str, gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """FACEBANK_EMBEDDER unset (the environment fixture): the new default reaches only fresh databases."""
    database_url = environment
    person = sorted(p.name for p in gallery.iterdir())[0]
    probe = gallery.parent / "probes" / f"{person}.jpg"
    _record_active(database_url, A_TAG)
    assert Settings().embedder != "mobilefacenet"  # the default changed
    # `serve`'s start-up check, ingest, the doctor and the app all run A, and nothing records the default.
    models, problem = load_for_serving(Settings())
    assert problem is None and models is not None and models.embedder_tag == A_TAG
    assert facebank(["ingest", str(gallery)]) == 0
    assert _faces_by_model(database_url) == {A_TAG: len(list(gallery.rglob("*.jpg")))}
    capsys.readouterr()
    assert facebank(["doctor"]) == 0
    assert f"active embedder {A_TAG} (128 dimensions; recorded in the database)" in capsys.readouterr().out
    with local_client(create_app(Settings())) as client:
        assert client.app.state.facebank.serving.embedder_tag == A_TAG  # type: ignore[attr-defined]
        assert _identify(client, probe) == person
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        assert choices.active_embedder(session) == A_TAG
    engine.dispose()


def test_a_database_from_before_the_recorded_choice_keeps_the_model_of_its_faces(
    environment: str, gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Migration 0003 added the record without writing it, so such a database holds faces of the default of
    its time and no choice: its first start records the model of its faces, not today's default."""
    database_url = environment
    person = sorted(p.name for p in gallery.iterdir())[0]
    probe = gallery.parent / "probes" / f"{person}.jpg"
    monkeypatch.setenv("FACEBANK_EMBEDDER", "mobilefacenet")
    assert facebank(["ingest", str(gallery)]) == 0
    monkeypatch.delenv("FACEBANK_EMBEDDER")
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with engine.begin() as connection:
        connection.execute(delete(ServiceSetting))  # as before migration 0003
    capsys.readouterr()
    assert facebank(["doctor"]) == 0
    assert f"active embedder {A_TAG} (128 dimensions; that of its faces;" in capsys.readouterr().out
    models, problem = load_for_serving(Settings())
    assert problem is None and models is not None and models.embedder_tag == A_TAG
    with local_client(create_app(Settings())) as client:
        assert client.app.state.facebank.serving.embedder_tag == A_TAG  # type: ignore[attr-defined]
        assert _identify(client, probe) == person
    with make_session_factory(engine)() as session:
        assert choices.active_embedder(session) == A_TAG
    engine.dispose()


def test_models_use_refuses_what_is_not_a_usable_prepared_embedder(
    environment: str, two_embedders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert facebank(["models", "use", "arcface"]) == 1
    assert "no model 'arcface'" in capsys.readouterr().err
    assert facebank(["models", "use", "retinaface-mnet025"]) == 1
    assert "is not an embedder" in capsys.readouterr().err
    tampered = copy_model_dir(two_embedders, tmp_path / "tampered")
    onnx = tampered / f"{FLIPPED}.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    assert facebank(["models", "use", FLIPPED, "--model-dir", str(tampered)]) == 1
    assert "does not match its manifest sha256" in capsys.readouterr().err
    upgrade_to_head(environment)
    engine = make_engine(environment, pool_size=1, max_overflow=0)
    with make_session_factory(engine)() as session:
        assert choices.active_embedder(session) is None  # nothing was recorded
    engine.dispose()


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_running_server_switches_to_the_new_embedder_in_step(
    environment: str, gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = sorted(next(iter(sorted(gallery.iterdir()))).glob("*.jpg"))[0]
    _record_active(environment, A_TAG)
    with local_client(create_app(Settings())) as client:
        assert client.get("/readyz").json()["checks"]["embedder"] == A_TAG
        assert facebank(["models", "use", FLIPPED]) == 0
        assert "switch to it as they follow the change log" in capsys.readouterr().out
        # The server follows the change log: it loads B and rebuilds B's index, without a restart.
        _until(lambda: client.get("/readyz").json()["checks"]["embedder"] == FLIPPED_TAG)
        response = client.get("/readyz")
        assert response.status_code == 200
        checks = response.json()["checks"]
        assert checks["embedder_active"] is True and checks["restart_needed"] is False
        assert checks["changes"]["switch_problem"] is None
        # It now embeds with B: identify answers under B, and a face enrolled now is stored under B.
        identity = client.post("/v1/identities", json={"name": "After Switch"}).json()["id"]
        enroll = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
        assert client.post(f"/v1/identities/{identity}/faces", files=enroll).status_code == 201
        assert client.post("/v1/identify", files=enroll).json()["model"] == FLIPPED_TAG
    assert _faces_by_model(environment) == {FLIPPED_TAG: 1}


def test_a_server_that_cannot_load_the_new_embedder_says_why_and_refuses_to_enroll(
    environment: str, gallery: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its model folder lacks B: it keeps serving A, stays ready, reports the problem, and stores nothing
    under a model nobody searches any more."""
    photo = sorted(next(iter(sorted(gallery.iterdir()))).glob("*.jpg"))[0]
    _record_active(environment, A_TAG)
    with local_client(create_app(Settings(model_dir=model_dir))) as client:
        identity = client.post("/v1/identities", json={"name": "Before Switch"}).json()["id"]
        enroll = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
        assert client.post(f"/v1/identities/{identity}/faces", files=enroll).status_code == 201
        assert facebank(["models", "use", FLIPPED]) == 0
        capsys.readouterr()
        _until(lambda: client.get("/readyz").json()["checks"]["changes"]["switch_problem"] is not None)
        response = client.get("/readyz")
        # Unready would take every server on the database out at once: it stays ready on its old model.
        assert response.status_code == 200
        checks = response.json()["checks"]
        assert checks["embedder"] == A_TAG and checks["restart_needed"] is True
        assert (
            FLIPPED_TAG in checks["changes"]["switch_problem"]
            and "not prepared" in checks["changes"]["switch_problem"]
        )
        response = client.post(f"/v1/identities/{identity}/faces", files=enroll)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "embedder_switched"
        assert FLIPPED_TAG in response.json()["error"]["message"]
    # The refused photo left nothing behind: one face, stored under A.
    assert _faces_by_model(environment) == {A_TAG: 1}
