"""Attacks on a real `facebank serve` process over loopback sockets, as an outsider would make them.

Each attack gets the status and JSON error code docs/security.md promises; afterwards the server still answers
/healthz and /readyz, and nothing in its database changed (every row of every table compared).
"""

from __future__ import annotations

import io
import json
import os
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from service.security import Scope, cli_principal, issue_key
from service.storage import make_engine, make_session_factory, upgrade_to_head
from tests.conftest import LFW
from tests.reliability._server import Server, start_server

pytestmark = [pytest.mark.shared, pytest.mark.slow]

TABLES = ("identities", "faces", "api_keys", "audit_events", "service_settings")
ENROLLED = ("Colin_Powell", "George_W_Bush", "Gerhard_Schroeder")
STRANGER = LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"  # never enrolled
# What the server is started with, so the test knows the budget it attacks (the default is documented).
FAILED_AUTH_LIMIT = 30


# --- servers ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    server: Server
    database_url: str
    keys: dict[str, str] = field(default_factory=dict)  # scope -> token
    people: dict[str, str] = field(default_factory=dict)  # LFW name -> identity id

    @property
    def port(self) -> int:
        return int(self.server.url.rsplit(":", 1)[1])

    def auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


def _serve(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    *,
    keys: bool,
    env: dict[str, str] | None = None,
) -> Target:
    data_dir = tmp_path_factory.mktemp("attacked")
    database_url = f"sqlite:///{data_dir / 'facebank.db'}"
    upgrade_to_head(database_url)
    tokens: dict[str, str] = {}
    if keys:
        engine = make_engine(database_url)
        with make_session_factory(engine)() as session:
            for scope in Scope:
                issued = issue_key(session, name=scope.value, scopes=[scope], actor=cli_principal())
                tokens[scope.value] = issued.token
            session.commit()
        engine.dispose()
    server = start_server(
        data_dir=data_dir,
        model_dir=model_dir,
        database_url=database_url,
        log=data_dir / "server.log",
        env={"FACEBANK_FAILED_AUTH_LIMIT": str(FAILED_AUTH_LIMIT), **(env or {})},
    )
    return Target(server=server, database_url=database_url, keys=tokens)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Target]:
    """A server with one key per scope and three people enrolled through the API."""
    target = _serve(tmp_path_factory, model_dir, keys=True)
    try:
        with httpx.Client(base_url=target.server.url, headers=target.auth("enroll"), timeout=60) as client:
            for name in ENROLLED:
                identity = client.post("/v1/identities", json={"name": name.replace("_", " ")})
                assert identity.status_code == 201, identity.text
                target.people[name] = identity.json()["id"]
                photo = (LFW / name / f"{name}_0001.jpg").read_bytes()
                face = client.post(
                    f"/v1/identities/{target.people[name]}/faces", files={"image": ("a.jpg", photo)}
                )
                assert face.status_code == 201, face.text
        yield target
    finally:
        target.server.stop()


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Target]:
    """A server on 127.0.0.1 with no API key: open to local callers only."""
    target = _serve(tmp_path_factory, model_dir, keys=False)
    try:
        yield target
    finally:
        target.server.stop()


def _rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                t: [tuple(r) for r in connection.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
                for t in TABLES
            }
    finally:
        engine.dispose()


@contextmanager
def unharmed(target: Target) -> Iterator[None]:
    """The attack inside leaves the server healthy and ready, and every stored row as it was."""
    before = _rows(target.database_url)
    yield
    assert httpx.get(f"{target.server.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{target.server.url}/readyz", timeout=10).status_code == 200
    assert target.server.process.poll() is None, target.server.log_tail()
    assert _rows(target.database_url) == before


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


# --- raw HTTP, for what httpx will not send -----------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


def read_answer(conn: socket.socket) -> Raw:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return Raw(int(status_line.split()[1]), headers, body)


def request_head(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- a same-host forwarder -------------------------------------------------------------------------------


class Forwarder(socketserver.ThreadingTCPServer):
    """Listens on 127.0.0.1 and relays each connection to the server, as socat or ssh -R would; with
    `add_header`, it inserts that header line into the request the way an HTTP proxy names its client."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int, add_header: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream_port = upstream_port
        self.add_header = add_header

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(socketserver.BaseRequestHandler):
    server: Forwarder

    def handle(self) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port), timeout=30)
        back = threading.Thread(target=_copy, args=(upstream, self.request), daemon=True)
        back.start()
        first = True
        while chunk := self.request.recv(65536):
            if first and self.server.add_header:
                line_end = chunk.index(b"\r\n") + 2
                chunk = chunk[:line_end] + f"{self.server.add_header}\r\n".encode() + chunk[line_end:]
            first = False
            upstream.sendall(chunk)
        upstream.shutdown(socket.SHUT_WR)
        back.join(30)
        upstream.close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@contextmanager
def forwarder(target: Target, add_header: str | None = None) -> Iterator[Forwarder]:
    relay = Forwarder(target.port, add_header)
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.shutdown()
        relay.server_close()


# --- pictures -------------------------------------------------------------------------------------------


def photo(name: str, number: int = 1) -> bytes:
    return (LFW / name / f"{name}_{number:04d}.jpg").read_bytes()


def upload(data: bytes, field_name: str = "image") -> dict[str, tuple[str, bytes, str]]:
    return {field_name: ("photo.jpg", data, "image/jpeg")}


# --- a keyless server and where its callers really are --------------------------------------------------


def test_a_keyless_server_serves_a_local_caller(keyless: Target) -> None:
    """The control for the attacks below: the same request without their trick is served."""
    with unharmed(keyless):
        assert httpx.get(f"{keyless.server.url}/v1/identities", timeout=10).status_code == 200
        local = httpx.get(f"{keyless.server.url}/v1/identities", headers={"Host": "localhost"}, timeout=10)
        assert local.status_code == 200


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Forwarded-For": "x"},
        {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"},
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
    ],
    ids=["xff-loopback", "xff-not-an-address", "xff-chain", "forwarded", "x-real-ip"],
)
def test_a_keyless_server_refuses_anonymous_requests_that_carry_forwarding_headers(
    keyless: Target, forged: dict[str, str]
) -> None:
    with unharmed(keyless):
        refused(
            httpx.get(f"{keyless.server.url}/v1/identities", headers=forged, timeout=10),
            401,
            "missing_api_key",
        )
        minted = httpx.post(
            f"{keyless.server.url}/v1/keys",
            json={"name": "mine", "scopes": ["admin"]},
            headers=forged,
            timeout=10,
        )
        refused(minted, 401, "missing_api_key")


@pytest.mark.parametrize("server", ["keyless", "keyed"])
def test_a_foreign_host_header_is_refused_dns_rebinding(request: pytest.FixtureRequest, server: str) -> None:
    target: Target = request.getfixturevalue(server)
    headers = {"Host": "evil.example"} | (target.auth("admin") if target.keys else {})
    with unharmed(target):
        for path in ("/v1/identities", "/v1/keys", "/", "/openapi.json"):
            refused(httpx.get(f"{target.server.url}{path}", headers=headers, timeout=10), 400, "invalid_host")
        minted = httpx.post(
            f"{target.server.url}/v1/keys",
            json={"name": "x", "scopes": ["admin"]},
            headers=headers,
            timeout=10,
        )
        refused(minted, 400, "invalid_host")
        refused(
            httpx.get(f"{target.server.url}/v1/identities", headers={"Host": "127.0.0.1.evil.example"}),
            400,
            "invalid_host",
        )
        # Probes dial an address and send it as Host: the health routes answer any Host.
        assert httpx.get(f"{target.server.url}/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200


def test_a_keyless_server_behind_a_same_host_forwarder(keyless: Target) -> None:
    with unharmed(keyless):
        # An HTTP proxy names its client: refused, whatever Host the caller chose.
        with forwarder(keyless, add_header="X-Forwarded-For: 198.51.100.23") as proxy:
            for host in ("127.0.0.1", "localhost"):
                answer = httpx.get(f"{proxy.url}/v1/identities", headers={"Host": host}, timeout=10)
                refused(answer, 401, "missing_api_key")
            minted = httpx.post(
                f"{proxy.url}/v1/keys",
                json={"name": "x", "scopes": ["admin"]},
                headers={"Host": "localhost"},
                timeout=10,
            )
            refused(minted, 401, "missing_api_key")
        # A byte relay (socat, ssh -R): a remote caller sends the name it dialled as Host, which is refused.
        with forwarder(keyless) as relay:
            answer = httpx.get(
                f"{relay.url}/v1/identities", headers={"Host": "facebank.example.org:8443"}, timeout=10
            )
            refused(answer, 400, "invalid_host")
            # The documented limit (docs/security.md): a relay that changes no byte, used by a caller who
            # claims a loopback Host, cannot be told from a local program. Only a key closes that.
            assert (
                httpx.get(f"{relay.url}/v1/identities", headers={"Host": "localhost"}, timeout=10).status_code
                == 200
            )


def test_serve_does_not_believe_forwarded_addresses_unless_told_to(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> None:
    """By default uvicorn takes X-Forwarded-For from 127.0.0.1 as the client; `facebank serve` does not, so a
    forged header can neither pass for loopback nor escape the failed-key limit (tested below). Listed as a
    trusted proxy, 127.0.0.1 may name the client, and an anonymous request it forwards is still refused."""
    proxied = _serve(tmp_path_factory, model_dir, keys=False, env={"FACEBANK_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        with unharmed(proxied):
            for forged in ("127.0.0.1", "::1"):
                answer = httpx.get(f"{proxied.server.url}/v1/identities", headers={"X-Forwarded-For": forged})
                refused(answer, 401, "missing_api_key")
            assert httpx.get(f"{proxied.server.url}/v1/identities", timeout=10).status_code == 200
            wrong = {"Authorization": "Bearer fbk_" + "A" * 43}
            # With the proxy trusted, each forwarded client has its own failed-key budget.
            for n in range(FAILED_AUTH_LIMIT + 5):
                answer = httpx.get(
                    f"{proxied.server.url}/v1/identities",
                    headers=wrong | {"X-Forwarded-For": f"198.51.100.{n}"},
                )
                refused(answer, 401, "invalid_api_key")
    finally:
        proxied.server.stop()


# --- a server with keys ----------------------------------------------------------------------------------


def test_uploads_before_authentication_are_refused_without_reading_them(keyed: Target) -> None:
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    with unharmed(keyed):
        cases = [
            # (headers, status, code): no key, a wrong key, too large before any key check
            ({**multipart, "Content-Length": str(5 * 1024 * 1024)}, 401, "missing_api_key"),
            ({**multipart, "Content-Length": "4096", "X-API-Key": "fbk_" + "B" * 43}, 401, "invalid_api_key"),
            ({**multipart, "Transfer-Encoding": "chunked"}, 401, "missing_api_key"),
            (
                {**multipart, "Content-Length": str(10**10), **keyed.auth("identify")},
                413,
                "payload_too_large",
            ),
            ({**multipart, "Content-Length": str(10**10)}, 413, "payload_too_large"),
        ]
        for headers, status, code in cases:
            with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as conn:
                conn.sendall(request_head(keyed.port, "/v1/identify", headers))
                # A trickle of body, then nothing: the answer must not wait for the rest.
                conn.sendall(b"7\r\n--xyz\r\n\r\n" if "Transfer-Encoding" in headers else b"--xyz\r\n")
                started = time.monotonic()
                answer = read_answer(conn)
                assert (answer.status, answer.code()) == (status, code), headers
                assert time.monotonic() - started < 5
                assert answer.headers.get("connection") == "close"


def test_slow_clients_do_not_stall_the_server(keyed: Target) -> None:
    """Two hundred connections that never finish their headers or body (slowloris): health and real
    requests are still answered promptly."""
    stalled: list[socket.socket] = []
    with unharmed(keyed):
        try:
            for n in range(200):
                conn = socket.create_connection(("127.0.0.1", keyed.port), timeout=10)
                if n % 2:
                    conn.sendall(b"POST /v1/identify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: fbk_")
                else:
                    conn.sendall(
                        request_head(
                            keyed.port,
                            "/v1/identify",
                            {
                                "Content-Length": "100000",
                                **keyed.auth("identify"),
                                "Content-Type": "multipart/form-data; boundary=q",
                            },
                        )
                    )
                stalled.append(conn)
            started = time.monotonic()
            assert httpx.get(f"{keyed.server.url}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{keyed.server.url}/readyz", timeout=10).status_code == 200
            answer = httpx.post(
                f"{keyed.server.url}/v1/detect",
                files=upload(photo("Colin_Powell", 2)),
                headers=keyed.auth("identify"),
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 10
        finally:
            for conn in stalled:
                conn.close()


def _open_temp_files(pid: int) -> list[str]:
    """Files this process holds open that were deleted: how temporary (spooled) files look."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)"):
            found.append(target)
    return found


def test_an_upload_stays_in_memory_while_it_streams_in(keyed: Target) -> None:
    """Starlette spools upload parts over 1 MiB to a temporary file; the service keeps them in memory so
    that no photo reaches the disk. Checked mid-upload, from the server process's open files."""
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    picture = buffer.getvalue()
    assert len(picture) > 3 * 1024 * 1024
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="n.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + picture + b"\r\n--b--\r\n"
    )
    headers = {
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": str(len(body)),
        **keyed.auth("identify"),
    }
    with unharmed(keyed), socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as conn:
        conn.sendall(request_head(keyed.port, "/v1/detect", headers) + body[: 3 * 1024 * 1024])
        time.sleep(1.0)  # the parser has the first 3 MiB of the part by now
        assert _open_temp_files(keyed.server.process.pid) == []
        conn.sendall(body[3 * 1024 * 1024 :])
        answer = read_answer(conn)
        assert answer.status == 200, answer.body


# --- what an identify key learns about the gallery ------------------------------------------------------


def test_an_identify_key_cannot_list_the_gallery(keyed: Target) -> None:
    url = keyed.server.url
    identify, admin = keyed.auth("identify"), keyed.auth("admin")
    with unharmed(keyed), httpx.Client(base_url=url, timeout=60) as client:
        for path in (
            "/v1/identities",
            "/v1/keys",
            "/v1/audit",
            f"/v1/identities/{keyed.people['Colin_Powell']}",
        ):
            refused(client.get(path, headers=identify), 403, "insufficient_scope")
        threshold = client.post(
            "/v1/verify",
            files=upload(photo("Colin_Powell", 2)) | upload(photo("Colin_Powell"), "image2"),
            headers=identify,
        ).json()["threshold"]

        # Everyone, at the lowest threshold and the largest k: an admin sees the whole gallery ranked...
        everything = {"k": 100, "threshold": -1.0}
        ranked = client.post(
            "/v1/identify", params=everything, files=upload(STRANGER.read_bytes()), headers=admin
        )
        assert ranked.status_code == 200
        assert len(ranked.json()["faces"][0]["matches"]) == len(ENROLLED)
        # ...an identify key sees only who the stranger is at the server's threshold: nobody.
        seen = client.post(
            "/v1/identify", params=everything, files=upload(STRANGER.read_bytes()), headers=identify
        )
        assert seen.status_code == 200
        (face,) = seen.json()["faces"]
        assert face["matches"] == [] and face["identity"] is None

        # A person who is enrolled is still recognised, with only matches over the threshold, at most 5.
        known = client.post(
            "/v1/identify", params=everything, files=upload(photo("Colin_Powell", 2)), headers=identify
        )
        (face,) = known.json()["faces"]
        assert face["identity"]["id"] == keyed.people["Colin_Powell"]
        assert 1 <= len(face["matches"]) <= 5 and all(m["score"] >= threshold for m in face["matches"])

        # verify against someone else: no score to climb on; against the right person: the score.
        other = {"identity_id": keyed.people["Gerhard_Schroeder"]}
        probe = upload(photo("Colin_Powell", 2))
        denied = client.post("/v1/verify", data=other, files=probe, headers=identify).json()
        assert denied == {"score": None, "match": False, "threshold": threshold}
        assert isinstance(
            client.post("/v1/verify", data=other, files=probe, headers=admin).json()["score"], float
        )
        same = {"identity_id": keyed.people["Colin_Powell"]}
        confirmed = client.post("/v1/verify", data=same, files=probe, headers=identify).json()
        assert confirmed["match"] is True and confirmed["score"] >= threshold

        # detect never reads the gallery.
        detected = client.post("/v1/detect", files=probe, headers=identify).json()
        assert detected["faces"] and all(
            "matches" not in f and "identity" not in f for f in detected["faces"]
        )


def test_a_thousand_wrong_keys_from_one_address_hit_the_failed_key_limit(keyed: Target) -> None:
    url = f"{keyed.server.url}/v1/identities"
    statuses: list[int] = []
    # From 127.0.0.2 (all of 127/8 is loopback): a budget of its own, apart from other tests' wrong keys.
    attacker = httpx.HTTPTransport(local_address="127.0.0.2")
    with unharmed(keyed), httpx.Client(timeout=10, transport=attacker) as client:
        started = time.monotonic()
        for n in range(1000):
            # A new forged address each time: were it believed, each would get a fresh budget.
            headers = {
                "Authorization": f"Bearer fbk_{uuid.uuid4().hex}{n:011d}",
                "X-Forwarded-For": f"203.0.113.{n % 250}",
            }
            answer = client.get(url, headers=headers)
            if answer.status_code == 401:
                refused(answer, 401, "invalid_api_key")
            else:
                refused(answer, 429, "too_many_failed_attempts")
                assert int(answer.headers["retry-after"]) >= 1
            statuses.append(answer.status_code)
        elapsed = time.monotonic() - started
        # The budget: the limit at once, then the limit per minute (rounded up, plus the one in progress).
        allowed = FAILED_AUTH_LIMIT + int(elapsed * FAILED_AUTH_LIMIT / 60) + 1
        assert FAILED_AUTH_LIMIT <= statuses.count(401) <= allowed, (statuses.count(401), elapsed)
        assert statuses[:FAILED_AUTH_LIMIT] == [401] * FAILED_AUTH_LIMIT
        # The address is locked out of key checks, a valid key included, until its budget refills.
        locked = client.get(url, headers=keyed.auth("admin"))
        refused(locked, 429, "too_many_failed_attempts")
        # Other addresses are not locked out.
        assert httpx.get(url, headers=keyed.auth("admin"), timeout=10).status_code == 200
        time.sleep(int(locked.headers["retry-after"]))
        assert client.get(url, headers=keyed.auth("admin")).status_code == 200


# --- starvation -----------------------------------------------------------------------------------------


def _big_photo() -> bytes:
    """A 6000x6000 JPEG of a face: slow enough to decode that concurrent requests overlap."""
    buffer = io.BytesIO()
    Image.open(LFW / "Colin_Powell" / "Colin_Powell_0002.jpg").resize((6000, 6000)).save(
        buffer, "JPEG", quality=80
    )
    return buffer.getvalue()


def test_a_full_queue_answers_busy_at_once_and_health_never_waits(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> None:
    busy = _serve(tmp_path_factory, model_dir, keys=True, env={"FACEBANK_IMAGE_QUEUE": "0"})
    picture = _big_photo()
    slots = max(2, os.cpu_count() or 2)
    try:
        with unharmed(busy):

            def detect(_: int) -> tuple[int, float, httpx.Response]:
                started = time.monotonic()
                answer = httpx.post(
                    f"{busy.server.url}/v1/detect",
                    files=upload(picture),
                    headers=busy.auth("identify"),
                    timeout=120,
                )
                return answer.status_code, time.monotonic() - started, answer

            health: list[float] = []
            with ThreadPoolExecutor(slots + 8) as pool:
                answers = pool.map(detect, range(slots + 8))
                for _ in range(5):
                    started = time.monotonic()
                    assert httpx.get(f"{busy.server.url}/readyz", timeout=10).status_code == 200
                    assert httpx.get(f"{busy.server.url}/healthz", timeout=10).status_code == 200
                    health.append(time.monotonic() - started)
                results = list(answers)
            statuses = [status for status, _, _ in results]
            assert set(statuses) <= {200, 503} and statuses.count(200) >= slots, statuses
            turned_away = [(seconds, answer) for status, seconds, answer in results if status == 503]
            assert turned_away, "every request found a slot: the attack did not fill the queue"
            slowest_ok = max(seconds for status, seconds, _ in results if status == 200)
            for seconds, answer in turned_away:
                refused(answer, 503, "busy")
                assert int(answer.headers["retry-after"]) >= 1
                assert seconds < slowest_ok  # refused at once, not after waiting for a slot
            assert max(health) < 2.0, health
    finally:
        busy.server.stop()
