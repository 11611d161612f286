"""Two `facebank serve` processes on one database follow each other through the change log: what one
enrolls the other finds, what one deletes the other stops returning, embedded ingest reaches both, and a
replica killed while the other takes writes converges when it comes back. Real processes, real SQLite and
PostgreSQL. The bounds here are generous (this machine may be loaded); `facebank bench` measures the lag."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.security import Scope
from tests._live import issue_test_key
from tests.conftest import LFW
from tests.reliability._server import ROOT, Server, start_server

pytestmark = pytest.mark.slow

# A write on one replica reaches the other within this (polling every 0.2 s; identify itself takes a while).
BOUND_S = 5.0


def _photo(name: str, number: int) -> bytes:
    return (LFW / name / f"{name}_{number:04d}.jpg").read_bytes()


class Replica:
    def __init__(self, server: Server, key: str) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120.0)

    def top(self, photo: bytes) -> tuple[str | None, float]:
        """(identity id, score) of the best match of the photo's largest face; (None, -1) when none."""
        response = self.http.post(
            "/v1/identify", files={"image": ("p.jpg", photo, "image/jpeg")}, params={"k": 1}
        )
        assert response.status_code == 200, response.text
        faces = response.json()["faces"]
        face = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
        if not face["matches"]:
            return None, -1.0
        return face["matches"][0]["identity_id"], face["matches"][0]["score"]

    def enroll(self, name: str, *numbers: int) -> tuple[str, list[str]]:
        identity = self.http.post("/v1/identities", json={"name": name})
        assert identity.status_code == 201, identity.text
        identity_id = identity.json()["id"]
        faces = []
        for number in numbers:
            response = self.http.post(
                f"/v1/identities/{identity_id}/faces",
                files={"image": ("p.jpg", _photo(name, number), "image/jpeg")},
            )
            assert response.status_code == 201, response.text
            faces.append(response.json()["id"])
        return identity_id, faces

    def identities(self) -> list[dict[str, str]]:
        """Every identity, through every page."""
        found: list[dict[str, str]] = []
        cursor = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self.http.get("/v1/identities", params=params).json()
            found += page["items"]
            if not (cursor := page["next_cursor"]):
                return found

    def index_in_step(self) -> bool:
        report = self.http.get("/v1/admin/index")
        assert report.status_code == 200, report.text
        return bool(report.json()["in_step"])


def _within(bound_s: float, condition: Callable[[], bool]) -> float:
    """Seconds until `condition` held; fails past `bound_s`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < bound_s, f"not within {bound_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def key(database_url: str) -> str:
    return issue_test_key(database_url, Scope.ADMIN, name="replicas")


@pytest.fixture(scope="module")
def replicas(
    database_url: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory, key: str
) -> Iterator[tuple[Replica, Replica]]:
    servers = []
    for name in ("a", "b"):
        data_dir = tmp_path_factory.mktemp(f"replica-{name}")
        servers.append(
            start_server(
                data_dir=data_dir, model_dir=model_dir, database_url=database_url, log=data_dir / "log"
            )
        )
    pair = Replica(servers[0], key), Replica(servers[1], key)
    yield pair
    for replica in pair:  # the ones running now: a test may have replaced one
        replica.server.stop()


def test_a_person_enrolled_on_one_replica_is_found_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    tony, _ = a.enroll("Tony_Blair", 1)
    _within(BOUND_S, lambda: b.top(_photo("Tony_Blair", 2))[0] == tony)
    assert a.top(_photo("Tony_Blair", 2))[0] == tony  # the replica that took the write, at once


def test_a_face_deleted_on_one_replica_stops_counting_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    colin, (first, _second) = a.enroll("Colin_Powell", 1, 3)
    photo = _photo("Colin_Powell", 1)
    _within(BOUND_S, lambda: b.top(photo)[0] == colin)
    both_faces = a.top(photo)[1]  # the photo of the first face against the mean of both faces
    assert b.top(photo)[1] == pytest.approx(both_faces, abs=1e-4)
    deleted = b.http.delete(f"/v1/identities/{colin}/faces/{first}")
    assert deleted.status_code == 204
    second_only = b.top(photo)  # B at once: the second face alone, another photo, matches less
    assert second_only[0] == colin and second_only[1] < both_faces - 0.01
    # A scores the person from SQL too, and its own index follows: the deleted face leaves it.
    assert a.top(photo)[1] == pytest.approx(second_only[1], abs=1e-4)
    _within(BOUND_S, a.index_in_step)
    assert a.top(photo)[1] == pytest.approx(second_only[1], abs=1e-4)


def test_a_person_erased_on_one_replica_is_never_named_by_the_other_afterwards(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    serena, _ = a.enroll("Serena_Williams", 1)
    _within(BOUND_S, lambda: b.top(_photo("Serena_Williams", 2))[0] == serena)
    assert a.http.delete(f"/v1/identities/{serena}").status_code == 204
    # Not even before B applies the deletion: names come from SQL, which no longer has her.
    for _ in range(5):
        assert b.top(_photo("Serena_Williams", 2))[0] != serena


def test_embedded_ingest_while_both_replicas_run_reaches_both(
    replicas: tuple[Replica, Replica], database_url: str, model_dir: Path, tmp_path: Path
) -> None:
    gallery = tmp_path / "gallery"
    for name in ("Gerhard_Schroeder", "Donald_Rumsfeld"):
        (gallery / name).mkdir(parents=True)
        (gallery / name / "1.jpg").write_bytes(_photo(name, 1))
    env = {
        **os.environ,
        "FACEBANK_DATABASE_URL": database_url,
        "FACEBANK_MODEL_DIR": str(model_dir),
        "FACEBANK_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }
    ingest = subprocess.run(
        [sys.executable, "-m", "service.cli", "ingest", str(gallery)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ingest.returncode == 0, ingest.stderr
    for replica in replicas:
        for name in ("Gerhard_Schroeder", "Donald_Rumsfeld"):
            found = replica.identities()
            wanted = next(i["id"] for i in found if i["name"] == name)
            _within(BOUND_S, lambda: replica.top(_photo(name, 2))[0] == wanted)  # noqa: B023


def test_a_replica_killed_while_the_other_takes_writes_converges_on_restart(
    replicas: tuple[Replica, Replica], database_url: str, model_dir: Path, tmp_path: Path, key: str
) -> None:
    a, b = replicas
    b.server.kill()
    jennifer, (first, _) = a.enroll("Jennifer_Capriati", 1, 2)
    assert a.http.delete(f"/v1/identities/{jennifer}/faces/{first}").status_code == 204
    laura, _ = a.enroll("Laura_Bush", 1)
    restarted = Replica(
        start_server(data_dir=tmp_path, model_dir=model_dir, database_url=database_url, log=tmp_path / "log"),
        key,
    )
    try:
        assert restarted.index_in_step() and a.index_in_step()
        assert restarted.top(_photo("Laura_Bush", 2))[0] == laura
        assert restarted.top(_photo("Jennifer_Capriati", 1))[1] < 0.99
    finally:
        b.server, b.http = restarted.server, restarted.http  # the next tests use it; the fixture stops it


MIXED_LOAD_S = 60.0
PEOPLE = [
    "Ariel_Sharon",
    "Hugo_Chavez",
    "Junichiro_Koizumi",
    "Jean_Chretien",
    "John_Ashcroft",
    "Vladimir_Putin",
]


def test_a_mixed_load_over_both_replicas_ends_in_step_and_never_names_the_erased(
    replicas: tuple[Replica, Replica],
) -> None:
    rng = random.Random(7)
    alive: dict[str, str] = {}  # identity id -> person
    erased: dict[str, float] = {}  # identity id -> when its deletion was acknowledged
    named_after_erasure: list[str] = []
    operations: Counter[str] = Counter()
    deadline = time.monotonic() + MIXED_LOAD_S
    while time.monotonic() < deadline:
        replica = rng.choice(replicas)
        action = rng.choice(["enroll", "enroll", "identify", "identify", "delete"])
        if action == "enroll" or not alive:
            person = rng.choice(PEOPLE)
            identity, _ = replica.enroll(person, rng.randint(1, 4))
            alive[identity] = person
        elif action == "identify":
            asked = time.monotonic()
            person = rng.choice(PEOPLE)
            named, _ = replica.top(_photo(person, rng.randint(5, 8)))
            if named in erased and erased[named] < asked:
                named_after_erasure.append(named)
        else:
            identity = rng.choice(sorted(alive))
            assert replica.http.delete(f"/v1/identities/{identity}").status_code == 204
            erased[identity] = time.monotonic()
            del alive[identity]
        operations[action] += 1
    assert named_after_erasure == []
    # Quiet now: both indexes end equal to SQL, with every surviving person and no erased one.
    for replica in replicas:
        _within(BOUND_S, replica.index_in_step)
        listed = {i["id"] for i in replica.identities()}
        assert set(alive) <= listed and not set(erased) & listed
    print(f"\nmixed load over two replicas for {MIXED_LOAD_S:.0f} s: {dict(operations)}")
