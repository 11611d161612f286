"""An in-process client that calls the app the way a local program does over loopback."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL_PEER = ("127.0.0.1", 50000)


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    """A TestClient from 127.0.0.1 that names Host 127.0.0.1. Starlette's defaults ("testclient" from
    "testserver") are neither a loopback address nor a loopback name, so a keyless app refuses them."""
    return TestClient(app, base_url="http://127.0.0.1", client=LOCAL_PEER, **kwargs)
