"""A real `facebank serve` process on 127.0.0.1 and a random free port, for tests that need one to kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from tests._ports import PortTaken, free_port, on_a_free_port, port_was_taken

__all__ = ["Server", "free_port", "start_server"]  # free_port: tests import it from here too

ROOT = Path(__file__).resolve().parents[2]
# Generous: other jobs may be loading this machine.
START_TIMEOUT_S = 180.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing, as in a power cut of the process."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(
    *, data_dir: Path, model_dir: Path, database_url: str, log: Path, env: dict[str, str] | None = None
) -> Server:
    """Start `facebank serve` and wait until /readyz says ready (models loaded, index rebuilt from SQL);
    `env` adds or overrides environment variables (FACEBANK_* settings)."""
    env = {
        **os.environ,
        "FACEBANK_DATA_DIR": str(data_dir),
        "FACEBANK_MODEL_DIR": str(model_dir),
        "FACEBANK_DATABASE_URL": database_url,
        "FACEBANK_LOG_LEVEL": "warning",
        "FACEBANK_INTRA_OP_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    return on_a_free_port(partial(_start_on, env=env, log=log))


def _start_on(port: int, *, env: dict[str, str], log: Path) -> Server:
    written_before = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process=process, url=f"http://127.0.0.1:{port}", log=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    if process.poll() is None:
        server.kill()
        raise RuntimeError(f"server not ready in {START_TIMEOUT_S} s:\n{server.log_tail()}")
    # Only this attempt's output: an earlier attempt's "address already in use" is no evidence now.
    if port_was_taken(log.read_bytes()[written_before:].decode(errors="replace")):
        raise PortTaken(f"port {port} was taken before the server bound it")
    raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
