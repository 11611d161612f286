"""A real Milvus for tests: milvus-lite (the `milvus` extra) embedded in the test process or run as its gRPC
server in a process of its own (to share between replicas, and to kill), or the server that
FACEBANK_TEST_MILVUS_URI names. Each test gets collections of its own (a fresh prefix), so a shared server
needs no cleaning between tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._ci import skip_or_fail_in_ci
from tests._ports import free_port

SERVER_URI_ENV = "FACEBANK_TEST_MILVUS_URI"
START_TIMEOUT_S = 60.0


def require_pymilvus() -> None:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        skip_or_fail_in_ci("needs pymilvus and milvus-lite (pip install '.[milvus]'; the dev extra has them)")


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def embedded_uri(directory: Path) -> Iterator[str]:
    """A milvus-lite data path in `directory` (or the configured server), released after the test."""
    require_pymilvus()
    if configured := os.environ.get(SERVER_URI_ENV):
        yield configured
        return
    path = str(directory / "milvus.db")
    yield path
    from milvus_lite import server_manager_instance

    server_manager_instance.release_server(path)


@dataclass
class MilvusServer:
    """`milvus-lite server` in a process of its own, on a fixed port so that a restart keeps the URI."""

    data_dir: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        where = ["--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", *where],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        from pymilvus import MilvusClient

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.log.read_text()[-2000:]}")
            try:
                MilvusClient(self.uri, timeout=2).list_collections()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"milvus-lite server did not answer within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def milvus_server(directory: Path) -> Iterator[MilvusServer]:
    """A started milvus-lite server process, stopped after use."""
    require_pymilvus()
    server = MilvusServer(directory / "milvus-data", free_port(), directory / "milvus.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def skip_unless_embedded() -> None:
    """For tests that kill or corrupt the engine: not against a server someone else runs."""
    if os.environ.get(SERVER_URI_ENV):
        pytest.skip(f"kills or rewrites the engine: only with milvus-lite, not {SERVER_URI_ENV}")
