"""tests/_ports.py: a server start-up whose port was taken meanwhile starts again on another, a bounded
number of times; checked with stand-ins, with real uvicorn's message, and with a real `facebank serve`."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests import _ports
from tests._ports import PortTaken, on_a_free_port, port_was_taken
from tests.reliability._server import start_server


@contextmanager
def _taken_port() -> Iterator[int]:
    """A loopback port someone else is listening on, as when another process took it after we chose it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_taken_port_is_retried_on_a_new_one_until_a_start_succeeds() -> None:
    tried: list[int] = []

    def start(port: int) -> str:
        tried.append(port)
        if len(tried) < 3:
            raise PortTaken(f"{port} taken")
        return f"up on {port}"

    assert on_a_free_port(start, attempts=3) == f"up on {tried[-1]}"
    assert len(tried) == 3 and all(1024 <= p <= 65535 for p in tried)


def test_the_retries_are_bounded_and_name_every_port_tried() -> None:
    tried: list[int] = []

    def start(port: int) -> None:
        tried.append(port)
        raise PortTaken("taken")

    with pytest.raises(RuntimeError, match="no free port could be bound in 2 attempts") as failure:
        on_a_free_port(start, attempts=2)
    assert len(tried) == 2
    assert all(str(port) in str(failure.value) for port in tried)


def test_any_other_start_up_error_is_not_retried() -> None:
    calls: list[int] = []

    def start(port: int) -> None:
        calls.append(port)
        raise ValueError("bad settings")

    with pytest.raises(ValueError, match="bad settings"):
        on_a_free_port(start)
    assert len(calls) == 1


_UVICORN_ON = """
import sys
import uvicorn

async def app(scope, receive, send):
    pass

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), lifespan="off")
"""


def test_uvicorns_own_message_for_a_port_in_use_is_recognised() -> None:
    with _taken_port() as port:
        run = subprocess.run(
            [sys.executable, "-c", _UVICORN_ON, str(port)], capture_output=True, text=True, timeout=60
        )
    assert run.returncode != 0
    assert port_was_taken(run.stdout + run.stderr), run.stderr
    assert not port_was_taken("ERROR: Application startup failed. Exiting.")


@pytest.mark.shared
@pytest.mark.slow
def test_a_real_server_whose_port_was_taken_starts_on_another(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _taken_port() as taken:
        choices = iter([taken])
        real_free_port = _ports.free_port
        # The first port handed out is the taken one (the race, made certain); later ones are really free.
        monkeypatch.setattr(_ports, "free_port", lambda: next(choices, None) or real_free_port())
        log = tmp_path / "server.log"
        server = start_server(
            data_dir=tmp_path, model_dir=model_dir, database_url=f"sqlite:///{tmp_path / 'f.db'}", log=log
        )
        try:
            assert not server.url.endswith(f":{taken}")
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            assert port_was_taken(log.read_text())  # the first attempt did hit the taken port
        finally:
            server.stop()
