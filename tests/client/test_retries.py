"""The client's retries: answers a real server gives only under load (503 busy) or from a proxy in front of
it (429 with Retry-After), scripted with an httpx transport."""

from __future__ import annotations

import time

import httpx
import pytest

from service.client import Client, FacebankError, RetryPolicy


def _scripted(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering `answers` in turn, then 200 {"items": [], "next_cursor": null}; records when."""
    seen: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if answers:
            return answers.pop(0)
        return httpx.Response(200, json={"items": [], "next_cursor": None})

    return httpx.MockTransport(handle), seen


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "try later"}}, headers=headers)


def test_429_waits_as_long_as_retry_after_says() -> None:
    transport, seen = _scripted([_error(429, "rate_limited", {"Retry-After": "0.3"})])
    with Client("http://facebank.test", transport=transport, retry=RetryPolicy(backoff_s=0.001)) as facebank:
        assert facebank.list_identities().items == []
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.3
    assert facebank.stats.retries == 1


def test_a_retry_after_beyond_the_bound_is_raised_not_waited_for() -> None:
    transport, seen = _scripted([_error(429, "rate_limited", {"Retry-After": "3600"})])
    policy = RetryPolicy(max_retry_after_s=5)
    with (
        Client("http://facebank.test", transport=transport, retry=policy) as facebank,
        pytest.raises(FacebankError) as limited,
    ):
        facebank.list_identities()
    assert (limited.value.status, limited.value.retry_after_s, len(seen)) == (429, 3600, 1)


def test_busy_is_retried_even_for_an_enrolment_but_other_503s_are_not() -> None:
    identity = "00000000-0000-0000-0000-000000000001"
    transport, seen = _scripted([_error(503, "busy"), _error(503, "busy"), _error(404, "not_found")])
    with (
        Client("http://facebank.test", transport=transport, retry=RetryPolicy(backoff_s=0.001)) as facebank,
        pytest.raises(FacebankError, match="not_found"),
    ):
        facebank.enroll_face(identity, b"jpeg")
    assert len(seen) == 3, "two busy answers retried, then the final answer raised"

    transport, seen = _scripted([_error(503, "embedder_switched")])
    with (
        Client("http://facebank.test", transport=transport, retry=RetryPolicy(backoff_s=0.001)) as facebank,
        pytest.raises(FacebankError, match="embedder_switched"),
    ):
        facebank.enroll_face(identity, b"jpeg")
    assert len(seen) == 1, "an enrolment is not repeated after a 503 other than busy"


def test_retries_stop_after_the_attempts() -> None:
    transport, seen = _scripted([_error(503, "busy")] * 10)
    with (
        Client(
            "http://facebank.test", transport=transport, retry=RetryPolicy(attempts=4, backoff_s=0.001)
        ) as fb,
        pytest.raises(FacebankError, match="busy"),
    ):
        fb.list_identities()
    assert len(seen) == 4
