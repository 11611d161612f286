"""A real server (`facebank serve` in a child process on a free loopback port) and httpx clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.data import REPO_ROOT
from service.config import Settings


class ServerFailed(RuntimeError):
    """The server exited or never became ready; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(settings: Settings, database_url: str, data_dir: Path) -> dict[str, str]:
    """The environment that makes `facebank serve` use these settings and this database."""
    env = dict(os.environ)
    env.update(
        {
            "FACEBANK_DATA_DIR": str(data_dir),
            "FACEBANK_DATABASE_URL": database_url,
            "FACEBANK_MODEL_DIR": str(settings.model_dir),
            "FACEBANK_DETECTOR": settings.detector,
            "FACEBANK_EMBEDDER": settings.embedder,
            "FACEBANK_DEVICE": settings.device,
            "FACEBANK_INTRA_OP_THREADS": str(settings.intra_op_threads),
            "FACEBANK_SEARCH_THREADS": str(settings.search_threads),
            "FACEBANK_LOG_LEVEL": "warning",
        }
    )
    return env


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    ready_s: float  # from process start until /healthz answered
    log: Path


def _log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextmanager
def serve(
    settings: Settings,
    database_url: str,
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 1800,
) -> Iterator[RunningServer]:
    """Run `python -m service.cli serve` (what `facebank serve` runs) until the block ends."""
    port = free_port()
    log = data_dir / f"server-{port}.log"
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**server_env(settings, database_url, data_dir), **(extra_env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            while True:
                if process.poll() is not None:
                    raise ServerFailed(f"server exited with {process.returncode}:\n{_log_tail(log)}")
                if time.perf_counter() - started > ready_timeout_s:
                    raise ServerFailed(f"server not ready after {ready_timeout_s:.0f} s:\n{_log_tail(log)}")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        yield RunningServer(url=url, process=process, ready_s=time.perf_counter() - started, log=log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Probe:
    name: str  # the LFW person in the photo
    filename: str
    data: bytes


@dataclass
class LoadResult:
    clients: int
    latencies_s: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    correct: int = 0  # top-1 identity is the person in the probe photo
    wall_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process `pid` (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration)
    return stages


def centre_face(faces: list[dict]) -> dict | None:
    """The person of interest is the face nearest the centre of an LFW photo (250×250)."""
    if not faces:
        return None
    return min(
        faces,
        key=lambda f: (
            abs((f["bbox"][0] + f["bbox"][2]) / 2 - 125) + abs((f["bbox"][1] + f["bbox"][3]) / 2 - 125)
        ),
    )


async def _load(url: str, probes: list[Probe], clients: int, requests: int, k: int) -> LoadResult:
    result = LoadResult(clients=clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def one_client() -> None:
            for i in counter:
                probe = probes[i % len(probes)]
                files = {"image": (probe.filename, probe.data, "image/jpeg")}
                start = time.perf_counter()
                response = await client.post("/v1/identify", params={"k": k}, files=files)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    result.errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                result.latencies_s.append(elapsed)
                for stage, duration in server_timing(response.headers.get("server-timing", "")).items():
                    result.stages_ms.setdefault(stage, []).append(duration)
                face = centre_face(response.json()["faces"])
                if face and face["matches"] and face["matches"][0]["name"] == probe.name:
                    result.correct += 1

        # Every client first opens its connection, so connection setup is not timed.
        await asyncio.gather(*(client.get("/healthz") for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        result.wall_s = time.perf_counter() - started
    return result


def load(url: str, probes: list[Probe], *, clients: int, requests: int, k: int = 5) -> LoadResult:
    """`requests` identify calls from `clients` concurrent httpx clients over keep-alive connections."""
    return asyncio.run(_load(url, probes, clients, requests, k))
