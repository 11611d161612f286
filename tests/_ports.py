"""Loopback ports for test servers: one way to choose a free port, and to start again when it was taken.

Choosing a port (bind to port 0, read it, close) and starting a server on it are two steps; another process
(another engineer's tests, an outgoing connection) can take the port in between. A start-up that notices
this raises `PortTaken`, and `on_a_free_port` tries again on a new port, a bounded number of times:

    server = on_a_free_port(lambda port: start_my_server(port))  # start_my_server raises PortTaken
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

PORT_ATTEMPTS = 3

T = TypeVar("T")


class PortTaken(RuntimeError):
    """A server could not bind the port chosen for it: something took it after it was chosen."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (it may be taken before a server binds it: see `on_a_free_port`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_was_taken(output: str) -> bool:
    """Whether a server's output says it could not bind because the port is in use (uvicorn: "[Errno 98]
    error while attempting to bind on address ...: address already in use")."""
    return "address already in use" in output.lower()


def on_a_free_port(start: Callable[[int], T], *, attempts: int = PORT_ATTEMPTS) -> T:
    """`start(port)` on a newly chosen free port; when it raises `PortTaken`, again on another, at most
    `attempts` times in all. Any other error is the caller's and is not retried."""
    taken: list[str] = []
    for _ in range(attempts):
        port = free_port()
        try:
            return start(port)
        except PortTaken as exc:
            taken.append(f"{port}: {exc}")
    raise RuntimeError(f"no free port could be bound in {attempts} attempts: " + "; ".join(taken))
