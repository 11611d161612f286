"""SIGKILL the server while clients enroll, restart it, and check: every acknowledged (201) enrollment is
there, nothing unacknowledged is half-there, and the index rebuilt at start agrees with SQL. Several rounds
on one database.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.security import Scope
from tests._live import issue_test_key
from tests.conftest import LFW
from tests.reliability._server import Server, start_server

pytestmark = pytest.mark.slow

ROUNDS = 3
CLIENTS = 3
# Kill once this many enrollments were acknowledged in the round (plus a random extra delay).
ACKS_BEFORE_KILL = 4
PEOPLE = ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder"]
PHOTOS = {name: [(LFW / name / f"{name}_{n:04d}.jpg").read_bytes() for n in range(1, 13)] for name in PEOPLE}


@dataclass
class Round:
    acknowledged: dict[str, str] = field(default_factory=dict)  # face id -> identity id
    sent: int = 0
    unanswered: int = 0  # sent, but the connection died before an answer
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _enroller(url: str, key: str, identities: dict[str, str], state: Round, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=httpx.Timeout(120.0)) as http:
        while not state.stop.is_set():
            identity, person = rng.choice(sorted(identities.items()))
            with state.lock:
                state.sent += 1
            try:
                response = http.post(
                    f"/v1/identities/{identity}/faces",
                    files={"image": ("p.jpg", rng.choice(PHOTOS[person]), "image/jpeg")},
                )
            except httpx.HTTPError:  # the server died under this request
                with state.lock:
                    state.unanswered += 1
                return
            with state.lock:
                state.statuses[response.status_code] += 1
                if response.status_code == 201:
                    state.acknowledged[response.json()["id"]] = identity


def _stored_faces(http: httpx.Client, identities: dict[str, str]) -> dict[str, str]:
    stored: dict[str, str] = {}
    for identity in identities:
        response = http.get(f"/v1/identities/{identity}")
        assert response.status_code == 200, response.text
        stored.update({face["id"]: identity for face in response.json()["faces"]})
    return stored


def test_acknowledged_enrollments_survive_sigkill_and_the_index_is_rebuilt(
    database_url: str, model_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = issue_test_key(database_url, Scope.ADMIN, name="crash-test")
    log = data_dir / "crash.log"
    server: Server = start_server(data_dir=data_dir, model_dir=model_dir, database_url=database_url, log=log)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120.0) as http:
        identities = {http.post("/v1/identities", json={"name": p}).json()["id"]: p for p in PEOPLE}
    acknowledged: dict[str, str] = {}
    unanswered_total = 0
    figures = []
    rng = random.Random(11)
    try:
        for number in range(1, ROUNDS + 1):
            state = Round()
            clients = [
                threading.Thread(
                    target=_enroller, args=(server.url, key, identities, state, 100 * number + i)
                )
                for i in range(CLIENTS)
            ]
            for client in clients:
                client.start()
            deadline = time.monotonic() + 300
            while len(state.acknowledged) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # land the kill at a different moment of a request each round
            server.kill()
            state.stop.set()
            for client in clients:
                client.join(timeout=180)
            assert not any(c.is_alive() for c in clients)
            assert set(state.statuses) <= {201}, state.statuses  # nothing but success before the kill
            acknowledged.update(state.acknowledged)
            unanswered_total += state.unanswered

            server = start_server(data_dir=data_dir, model_dir=model_dir, database_url=database_url, log=log)
            with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120.0) as http:
                stored = _stored_faces(http, identities)
                # Every acknowledged enrollment is there, for the right person.
                missing = {f: i for f, i in acknowledged.items() if stored.get(f) != i}
                assert not missing, f"round {number}: acknowledged faces lost: {missing}"
                # At most the requests cut off by the kill may have committed without an answer.
                extra = set(stored) - set(acknowledged)
                assert len(extra) <= unanswered_total, (number, len(extra), unanswered_total)
                acknowledged.update({f: stored[f] for f in extra})  # they are whole: counted from now on
                # Nothing half-there: each face has its index entry and its audit event, and no more.
                report = http.get("/v1/admin/index").json()
                assert report["in_step"] and report["sql_faces"] == report["index_faces"] == len(stored), (
                    report
                )
                events = http.get("/v1/audit", params={"action": "face.enroll", "limit": 1000}).json()[
                    "items"
                ]
                assert {e["target_id"] for e in events} == set(stored)
                assert http.get("/readyz").status_code == 200
                # The rebuilt index finds the people: each one enrolled so far, from a photo never enrolled
                # (which people got faces before the kill depends on the clients' timing).
                for person in sorted({identities[i] for i in stored.values()}):
                    probe = {"image": ("q.jpg", (LFW / person / f"{person}_0020.jpg").read_bytes())}
                    faces = http.post("/v1/identify", files=probe).json()["faces"]
                    best = max(faces, key=lambda f: f["det_score"])
                    assert best["identity"] is not None and best["identity"]["name"] == person
            figures.append(
                f"round {number}: {sum(state.statuses.values())} acknowledged, {state.unanswered} cut off "
                f"by the kill ({len(extra)} of those had committed, whole), {len(stored)} faces stored, "
                "none lost"
            )
    finally:
        server.stop()
    with capsys.disabled():
        print(f"\ncrash-restart ({ROUNDS} rounds, SIGKILL during enrollment):\n  " + "\n  ".join(figures))
