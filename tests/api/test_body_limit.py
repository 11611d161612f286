"""A declared Content-Length over the limit is refused before any of the body is read, over a real socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send

from service.api.limits import JSON_BODY_LIMIT, BodyLimitMiddleware
from tests._asgi import serving_in_thread


async def _reads_the_whole_body(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands in for a route: it waits for every byte before it answers."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"read"})


@pytest.fixture
def port() -> Iterator[int]:
    with serving_in_thread(BodyLimitMiddleware(_reads_the_whole_body, max_upload_bytes=1024)) as port:
        yield port


def _status_line(port: int, headers: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(headers)  # and not one byte of the body it declares
        return connection.recv(4096).split(b"\r\n", 1)[0]


def test_an_over_limit_content_length_is_answered_413_without_waiting_for_the_body(port: int) -> None:
    request = (
        b"POST /v1/identities HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + f"content-length: {JSON_BODY_LIMIT + 1}\r\n\r\n".encode()
    )
    # Without the check the app would wait for the body and recv() would time out.
    assert _status_line(port, request) == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_content_length_within_the_limit_reaches_the_app(port: int) -> None:
    request = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}"
    assert _status_line(port, request) == b"HTTP/1.1 200 OK"
