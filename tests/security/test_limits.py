"""The pieces behind the attack suite, one by one: Host policy, throttles, the image queue, per-key rate
limits, what `facebank serve` tells uvicorn about proxies, and SQL errors without their parameters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service.api.access import HostPolicy, host_name
from service.api.admission import Admission
from service.api.errors import APIError
from service.api.throttle import MAX_CALLERS, Throttle
from service.cli import main
from service.config import Settings
from service.storage import make_engine
from tests.security.conftest import Keys, header


@pytest.mark.parametrize(
    ("header_value", "name"),
    [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("Example.COM.", "example.com"), ("::1", "::1")],
)
def test_host_names_are_read_without_port_case_or_trailing_dot(header_value: str, name: str) -> None:
    assert host_name(header_value) == name


def test_the_host_policy_allows_loopback_the_bind_address_and_the_listed_names() -> None:
    policy = HostPolicy("10.0.0.5", ["api.example.org", "*.internal.example"])
    for allowed in (
        "localhost:8000",
        "127.0.0.1",
        "[::1]:1",
        "10.0.0.5:8000",
        "API.example.org",
        "a.internal.example",
    ):
        assert policy.allows(allowed), allowed
    for refused in ("evil.example", "internal.example", "localhost.evil.example", "10.0.0.6", "", None):
        assert not policy.allows(refused), refused
    wildcard_bind = HostPolicy("0.0.0.0", [])
    assert wildcard_bind.allows("localhost") and not wildcard_bind.allows("0.0.0.0")
    assert HostPolicy("0.0.0.0", ["*"]).allows("anything.example")


def test_a_throttle_lets_the_limit_through_then_refills_at_its_pace() -> None:
    now = [0.0]
    throttle = Throttle(6, clock=lambda: now[0])  # 6 a minute: one every 10 s
    assert [throttle.take("a") for _ in range(6)] == [None] * 6
    assert throttle.take("a") == 10 and throttle.blocked("a") == 10
    assert throttle.take("b") is None  # callers are counted apart
    now[0] = 10.0
    assert throttle.blocked("a") is None and throttle.take("a") is None and throttle.take("a") is not None
    assert Throttle(0).take("a") is None and not Throttle(0).enabled


def test_a_throttle_forgets_idle_callers_instead_of_growing_without_bound() -> None:
    now = [0.0]
    throttle = Throttle(60, clock=lambda: now[0])
    for n in range(MAX_CALLERS + 500):
        throttle.take(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._buckets) <= MAX_CALLERS


def test_the_image_queue_refuses_at_once_beyond_its_waiting_places() -> None:
    slots = Admission(1, queue=1, wait_s=5.0)
    release = threading.Event()
    waited: list[float] = []

    def hold() -> None:
        with slots.held():
            release.wait(5)

    def wait_for_a_slot() -> None:
        started = time.monotonic()
        with slots.held():
            waited.append(time.monotonic() - started)

    holder = threading.Thread(target=hold)
    holder.start()
    while slots.active < 1:
        time.sleep(0.01)
    waiter = threading.Thread(target=wait_for_a_slot)
    waiter.start()
    while slots.waiting < 1:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(APIError) as refused, slots.held():
        pass
    assert time.monotonic() - started < 0.5
    assert (refused.value.status, refused.value.code) == (503, "busy")
    assert refused.value.headers and int(refused.value.headers["Retry-After"]) >= 1
    release.set()
    holder.join(5)
    waiter.join(5)
    assert len(waited) == 1  # the one waiting place got the slot once it was free


def test_a_queued_request_gives_up_after_its_wait() -> None:
    slots = Admission(1, queue=4, wait_s=0.2)
    with slots.held(), pytest.raises(APIError, match="try again"), slots.held():
        pass
    assert slots.active == 0 and slots.waiting == 0


def test_per_key_rate_limits_are_off_by_default_and_429_when_set(
    make_client: Callable[..., TestClient], keys: Keys, client: TestClient
) -> None:
    assert Settings().rate_limit_per_key == 0
    for _ in range(20):
        assert client.get("/v1/identities", headers=header(keys.enroll)).status_code == 200
    with make_client(rate_limit_per_key=3) as limited:
        for _ in range(3):
            assert limited.get("/v1/identities", headers=header(keys.enroll)).status_code == 200
        over = limited.get("/v1/identities", headers=header(keys.enroll))
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert int(over.headers["retry-after"]) >= 1
        # Another key has its own budget.
        assert limited.get("/v1/identities", headers=header(keys.admin)).status_code == 200


def test_serve_trusts_proxy_headers_only_from_the_listed_proxies(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(k))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    monkeypatch.delenv("FACEBANK_TRUSTED_PROXIES", raising=False)
    assert main(["serve", "--port", "8123"]) == 0
    assert seen["proxy_headers"] is False  # uvicorn's own default would trust 127.0.0.1
    monkeypatch.setenv("FACEBANK_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    assert main(["serve", "--port", "8123"]) == 0
    assert seen["proxy_headers"] is True and seen["forwarded_allow_ips"] == ["10.0.0.0/8", "127.0.0.1"]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        Settings(trusted_proxies="proxy.example")


def test_sql_errors_do_not_carry_their_parameters(tmp_path: Path) -> None:
    """A failed statement's parameters (names, metadata, embedding bytes) stay out of errors and logs."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (name TEXT UNIQUE)"))
        connection.execute(text("INSERT INTO t VALUES (:name)"), {"name": "Jane Secret"})
    with pytest.raises(IntegrityError) as failed, engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (:name)"), {"name": "Jane Secret"})
    assert "Jane Secret" not in str(failed.value) and "hidden" in str(failed.value)
    engine.dispose()


def test_health_and_key_checks_answer_while_every_route_thread_is_taken(
    client: TestClient, keys: Keys
) -> None:
    """Routes run on anyio's default thread pool; uploads can fill it. Take every one of its threads, then
    ask: /healthz and /readyz answer, a wrong key is refused, and a real request waits for a thread."""
    import anyio.to_thread

    holders = [object() for _ in range(1000)]

    async def take_all() -> int:
        limiter = anyio.to_thread.current_default_thread_limiter()
        for holder in holders[: int(limiter.total_tokens)]:
            await limiter.acquire_on_behalf_of(holder)
        return int(limiter.total_tokens)

    async def give_back(count: int) -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        for holder in holders[:count]:
            limiter.release_on_behalf_of(holder)

    def ask(path: str, headers: dict[str, str] | None = None, wait_s: float = 5.0) -> list[int]:
        answers: list[int] = []
        thread = threading.Thread(
            target=lambda: answers.append(client.get(path, headers=headers).status_code)
        )
        thread.start()
        thread.join(wait_s)
        return answers

    assert client.portal is not None
    taken = client.portal.call(take_all)
    try:
        assert ask("/healthz") == [200]
        assert ask("/readyz") == [200]
        assert ask("/metrics") == [200]
        assert ask("/v1/identities", {"Authorization": "Bearer fbk_" + "C" * 43}) == [401]
        waiting = ask("/v1/identities", header(keys.enroll), wait_s=1.0)
        assert waiting == [], "a route ran although no thread was free: the test did not fill the pool"
    finally:
        client.portal.call(give_back, taken)
    assert client.get("/v1/identities", headers=header(keys.enroll)).status_code == 200
