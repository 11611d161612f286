"""Many clients enroll, identify and delete at once against a real server: no 5xx, no lost or phantom faces,
and afterwards the server's FAISS index holds exactly the faces in SQL (checked through `facebank doctor`).

Run for a fixed number of operations per client so the run is bounded; print the figures with `-s`.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import sessionmaker

from service.cli import main as facebank
from service.runtime.manifest import load_manifest
from service.security import Scope
from service.storage import make_engine
from service.storage import repository as repo
from tests._live import issue_test_key
from tests.conftest import LFW
from tests.reliability._server import Server, start_server

pytestmark = pytest.mark.slow

CLIENTS = 8
OPERATIONS_PER_CLIENT = 40
PEOPLE = [
    "George_W_Bush",
    "Colin_Powell",
    "Tony_Blair",
    "Donald_Rumsfeld",
    "Gerhard_Schroeder",
    "Ariel_Sharon",
    "Hugo_Chavez",
    "Junichiro_Koizumi",
    "Jean_Chretien",
    "John_Ashcroft",
    "Jacques_Chirac",
    "Serena_Williams",
]
PHOTOS = {name: [(LFW / name / f"{name}_{n:04d}.jpg").read_bytes() for n in range(1, 9)] for name in PEOPLE}
TIMEOUT = httpx.Timeout(180.0)


@dataclass
class Ledger:
    """What the server acknowledged, kept under one lock by all clients."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    identities: dict[str, str] = field(default_factory=dict)  # id -> person
    delete_issued: set[str] = field(default_factory=set)
    deleted_identities: set[str] = field(default_factory=set)
    faces: dict[str, str] = field(default_factory=dict)  # acknowledged face id -> identity id
    deleted_faces: set[str] = field(default_factory=set)
    claimed_faces: set[str] = field(default_factory=set)
    operations: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def count(self, operation: str) -> None:
        # Under the lock: `+=` on a shared Counter from 8 threads can lose updates, and the audit
        # check below compares these counts exactly.
        with self.lock:
            self.operations[operation] += 1

    def live_faces(self) -> dict[str, str]:
        return {
            f: i
            for f, i in self.faces.items()
            if f not in self.deleted_faces and i not in self.deleted_identities
        }


def _client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=TIMEOUT)


def _create(http: httpx.Client, ledger: Ledger, person: str) -> None:
    response = http.post("/v1/identities", json={"name": person})
    ledger.count(f"create {response.status_code}")
    if response.status_code != 201:
        ledger.failures.append(f"create: {response.status_code} {response.text}")
        return
    with ledger.lock:
        ledger.identities[response.json()["id"]] = person


def _worker(server: Server, key: str, ledger: Ledger, seed: int, start: threading.Barrier) -> None:
    rng = random.Random(seed)
    with _client(server, key) as http:
        start.wait()
        for _ in range(OPERATIONS_PER_CLIENT):
            roll = rng.random()
            try:
                if roll < 0.08:
                    _create(http, ledger, rng.choice(PEOPLE))
                elif roll < 0.48:
                    _enroll(http, ledger, rng)
                elif roll < 0.73:
                    _identify(http, ledger, rng)
                elif roll < 0.78:
                    response = http.get("/v1/identities", params={"limit": 20})
                    ledger.count(f"list {response.status_code}")
                    if response.status_code != 200:
                        ledger.failures.append(f"list: {response.status_code}")
                elif roll < 0.94:
                    _delete_face(http, ledger, rng)
                else:
                    _delete_identity(http, ledger, rng)
            except httpx.HTTPError as exc:  # no request may fail at the transport level either
                ledger.failures.append(f"transport: {type(exc).__name__}: {exc}")


def _enroll(http: httpx.Client, ledger: Ledger, rng: random.Random) -> None:
    with ledger.lock:
        candidates = sorted(set(ledger.identities) - ledger.deleted_identities)
    identity = rng.choice(candidates)
    person = ledger.identities[identity]
    photo = rng.choice(PHOTOS[person])
    response = http.post(f"/v1/identities/{identity}/faces", files={"image": ("p.jpg", photo, "image/jpeg")})
    ledger.count(f"enroll {response.status_code}")
    with ledger.lock:
        if response.status_code == 201:
            ledger.faces[response.json()["id"]] = identity
        elif response.status_code == 404 and identity in ledger.delete_issued:
            pass  # deleted by another client meanwhile
        elif response.status_code == 422 and response.json()["error"]["code"] == "no_face":
            pass
        else:
            ledger.failures.append(f"enroll: {response.status_code} {response.text}")


def _identify(http: httpx.Client, ledger: Ledger, rng: random.Random) -> None:
    person = rng.choice(PEOPLE)
    response = http.post(
        "/v1/identify", files={"image": ("q.jpg", rng.choice(PHOTOS[person]), "image/jpeg")}, params={"k": 3}
    )
    ledger.count(f"identify {response.status_code}")
    if response.status_code != 200:
        ledger.failures.append(f"identify: {response.status_code} {response.text}")
        return
    with ledger.lock:
        known = set(ledger.identities)
    for found in response.json()["faces"]:
        for match in found["matches"]:
            if match["identity_id"] not in known:
                ledger.failures.append(f"identify: phantom identity {match['identity_id']}")


def _delete_face(http: httpx.Client, ledger: Ledger, rng: random.Random) -> None:
    with ledger.lock:
        choices = sorted(set(ledger.live_faces()) - ledger.claimed_faces)
        if not choices:
            return
        face = rng.choice(choices)
        ledger.claimed_faces.add(face)
        identity = ledger.faces[face]
    response = http.delete(f"/v1/identities/{identity}/faces/{face}")
    ledger.count(f"delete-face {response.status_code}")
    with ledger.lock:
        if response.status_code == 204:
            ledger.deleted_faces.add(face)
        elif not (response.status_code == 404 and identity in ledger.delete_issued):
            ledger.failures.append(f"delete face: {response.status_code} {response.text}")


def _delete_identity(http: httpx.Client, ledger: Ledger, rng: random.Random) -> None:
    with ledger.lock:
        choices = sorted(set(ledger.identities) - ledger.delete_issued)
        if len(choices) <= 4:  # keep a few people to enroll into
            return
        identity = rng.choice(choices)
        ledger.delete_issued.add(identity)
    response = http.delete(f"/v1/identities/{identity}")
    ledger.count(f"delete-identity {response.status_code}")
    with ledger.lock:
        if response.status_code == 204:
            ledger.deleted_identities.add(identity)
        else:
            ledger.failures.append(f"delete identity: {response.status_code} {response.text}")


@pytest.fixture(scope="module")
def server(database_url: str, model_dir: Path, data_dir: Path) -> Iterator[tuple[Server, str]]:
    admin = issue_test_key(database_url, Scope.ADMIN, name="stress-admin")
    running = start_server(
        data_dir=data_dir, model_dir=model_dir, database_url=database_url, log=data_dir / "log"
    )
    try:
        yield running, admin
    finally:
        running.stop()


def test_concurrent_clients_lose_nothing_and_leave_the_index_in_step_with_sql(
    server: tuple[Server, str],
    database_url: str,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, admin = server
    ledger = Ledger()
    with _client(running, admin) as http:
        for person in PEOPLE:
            _create(http, ledger, person)
    start = threading.Barrier(CLIENTS)
    workers = [
        threading.Thread(target=_worker, args=(running, admin, ledger, seed, start))
        for seed in range(CLIENTS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert not any(w.is_alive() for w in workers), "clients still running after 10 minutes"
    assert not ledger.failures, ledger.failures[:10]
    assert running.process.poll() is None, running.log_tail()
    assert not [op for op in ledger.operations if op.split()[-1].startswith("5")], ledger.operations

    # Every acknowledged face is there, nothing else is, and deleted people are gone.
    expected = ledger.live_faces()
    with _client(running, admin) as http:
        for identity in ledger.identities:
            response = http.get(f"/v1/identities/{identity}")
            if identity in ledger.deleted_identities:
                assert response.status_code == 404
                continue
            stored = {face["id"] for face in response.json()["faces"]}
            assert stored == {f for f, i in expected.items() if i == identity}, identity
        report = http.get("/v1/admin/index").json()
        assert report["in_step"] and report["sql_faces"] == report["index_faces"] == len(expected), report
        assert http.get("/readyz").status_code == 200
        audit = Counter(e["action"] for e in http.get("/v1/audit", params={"limit": 1000}).json()["items"])
    assert audit["face.enroll"] == ledger.operations["enroll 201"]
    assert audit["face.delete"] == ledger.operations["delete-face 204"]
    assert audit["identity.delete"] == ledger.operations["delete-identity 204"]

    # The doctor agrees: the running server's index holds exactly the faces in SQL.
    monkeypatch.setenv("FACEBANK_DATABASE_URL", database_url)
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    capsys.readouterr()
    assert facebank(["doctor", "--server", running.url, "--api-key", admin]) == 0
    assert "its index holds exactly" in capsys.readouterr().out

    total = sum(n for op, n in ledger.operations.items())
    with capsys.disabled():
        print(
            f"\nstress: {CLIENTS} clients, {total} operations ({dict(sorted(ledger.operations.items()))}); "
            f"{len(expected)} faces left, all acknowledged, index in step with SQL"
        )


def test_a_face_written_behind_the_servers_back_is_found_by_the_doctor_and_repaired(
    server: tuple[Server, str],
    database_url: str,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, admin = server
    # A writer that bypasses the change log (a direct import in SQL, not through facebank's storage layer)
    # adds a face of the server's model: this server's index cannot learn of it by following.
    model = httpx.get(f"{running.url}/v1/admin/index", headers={"X-API-Key": admin}).json()["model"]
    entry = next(e for e in load_manifest(model_dir / "manifest.toml").embedders() if e.tag == model)
    assert entry.embedder is not None
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with sessionmaker(bind=engine)() as session:
        identity = repo.create_identity(session, name="behind the back")
        vector = np.random.default_rng(3).normal(size=entry.embedder.dim).astype(np.float32)
        repo.add_face(
            session,
            identity_id=identity.id,
            embedding=vector / np.linalg.norm(vector),
            model=model,
            bbox=[0, 0, 1, 1],
            det_score=1.0,
            landmarks=None,
            image_sha256=uuid.uuid4().hex * 2,
        )
        session.commit()
    engine.dispose()
    time.sleep(1.0)  # five polls of the change log: nothing there to apply
    readiness = httpx.get(f"{running.url}/readyz").json()
    assert readiness["checks"]["index_in_step"] is False  # reported; readiness itself follows the lag

    monkeypatch.setenv("FACEBANK_DATABASE_URL", database_url)
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    capsys.readouterr()
    assert facebank(["doctor", "--server", running.url, "--api-key", admin]) == 1
    assert "1 missing" in capsys.readouterr().out
    assert facebank(["doctor", "--server", running.url, "--api-key", admin, "--fix"]) == 0
    assert "rebuilt its index from SQL" in capsys.readouterr().out
    assert httpx.get(f"{running.url}/readyz").json()["checks"]["index_in_step"] is True
