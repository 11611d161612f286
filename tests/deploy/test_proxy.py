"""The compose file's proxy, run by a real nginx on loopback in front of a stand-in API: requests and
uploads pass through with the client's Host, and the API can scale because only the proxy publishes a
port."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.types import Receive, Scope, Send

from tests._asgi import serving_in_thread
from tests._ci import skip_or_fail_in_ci
from tests._ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_only_the_proxy_publishes_a_port_so_the_api_can_scale() -> None:
    services = COMPOSE["services"]
    assert "ports" not in services["api"] and "ports" not in services["api-gpu"]
    assert services["api"]["expose"] == ["8000"]
    (published,) = services["proxy"]["ports"]
    assert published.endswith(":8080") and "127.0.0.1" in published
    # GPU replicas answer to the name the proxy uses.
    assert services["api-gpu"]["networks"]["default"]["aliases"] == ["api"]
    # Pinned to a release, not `latest`.
    assert re.fullmatch(r"nginxinc/nginx-unprivileged:\d+\.\d+[\w.-]*", services["proxy"]["image"])


def _config(upstream: str, port: int) -> str:
    """The compose file's nginx.conf, with compose's `$$` unescaped and `api` replaced by `upstream`."""
    text = COMPOSE["configs"]["nginx"]["content"].replace("$$", "$")
    assert "resolver 127.0.0.11" in text and "set $api http://api:8000;" in text
    text = text.replace("http://api:8000", f"http://{upstream}").replace(
        "listen 8080;", f"listen 127.0.0.1:{port};"
    )
    # Docker's DNS is not here; the stand-in API is addressed by IP, which needs no resolver.
    return text.replace("resolver 127.0.0.11 valid=5s ipv6=off;", "")


class _Seen:
    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []


@pytest.fixture
def api() -> Iterator[tuple[str, _Seen]]:
    seen = _Seen()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, chunks = b"", 0
        while True:
            message = await receive()
            body += message.get("body", b"")
            chunks += 1
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.requests.append({"path": scope["path"], "bytes": len(body), "headers": headers})
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    with serving_in_thread(app) as port:
        yield f"127.0.0.1:{port}", seen


def test_requests_and_uploads_pass_through_the_proxy_with_the_clients_host(
    api: tuple[str, _Seen], tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        skip_or_fail_in_ci("needs nginx (Debian's nginx-light, which .ci/run installs)")
    upstream, seen = api
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(_config(upstream, port))
    checked = subprocess.run(
        [nginx, "-t", "-c", str(config), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    proxy = subprocess.Popen(
        [nginx, "-c", str(config), "-p", str(tmp_path), "-g", "daemon off; error_log stderr;"],
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = httpx.get(f"{url}/readyz", headers={"Host": "faces.example:8000"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proxy.poll() is None, "nginx did not start"
                time.sleep(0.05)
        assert answer.status_code == 200
        upload = b"\xff\xd8" + b"x" * (5 * 1024 * 1024)
        answer = httpx.post(
            f"{url}/v1/identify", files={"image": ("p.jpg", upload, "image/jpeg")}, timeout=30
        )
        assert answer.status_code == 200 and int(answer.text) > len(upload)
        first, second = seen.requests
        assert first["headers"]["host"] == "faces.example:8000"  # type: ignore[index]
        assert second["path"] == "/v1/identify" and "x-forwarded-for" in second["headers"]  # type: ignore[operator]
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
