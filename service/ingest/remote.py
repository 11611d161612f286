"""--url mode: ingest through a running server's REST API, which then sees every face at once.

The API enrolls one photo per request and has no batch endpoint, so "batched" here means pipelined: up to
`concurrency` photos in flight over one pool of kept-alive connections. Each photo costs two requests,
POST /v1/detect (the quality gates and the already-ingested check run on its answer, as in embedded mode)
and POST /v1/identities/{id}/faces. Connection errors, timeouts, 429 and 5xx answers are retried with
exponential back-off and jitter.

Exactly once without a server-side idempotency key: a photo counts as already enrolled for an identity when
one of that identity's faces of the server's model carries the photo's `image_sha256`. (A face body without
it, from an older server, is matched by the box and score that /v1/detect gives for the photo: the server's
detector is deterministic; the detect answer is rounded to 0.01 px and 1e-5, hence the tolerances.) Before
an enroll request is retried, the identity's faces are read again, so a request whose answer was lost is not
enrolled twice.

Identities are matched as in embedded mode (external_id, else the oldest identity with exactly that name)
and created once per run. Two ingest processes creating the same new *name* at the same moment through the
API can race (the API has no unique rule on names); an external_id is unique on the server, so that race
ends in a 409 and the existing identity is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.config import Settings
from service.ingest.gates import Gates, Verdict, check_blur, pick_face
from service.ingest.progress import StopFlag
from service.ingest.report import (
    ALREADY_INGESTED,
    HTTP_ERROR,
    INTERNAL_ERROR,
    READ_ERROR,
    Outcome,
    Status,
    Tally,
)
from service.ingest.scan import IngestItem
from service.pipeline import ImageDecodeError, decode_image
from service.pipeline.align import align_face
from service.schemas import DetectedFace

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # the API's largest page of identities
BBOX_TOLERANCE = 0.011  # /v1/detect rounds boxes to 0.01 px
SCORE_TOLERANCE = 2e-5  # and scores to 1e-5
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteError(RuntimeError):
    """The server cannot be used: unreachable, or it kept failing past the retry budget."""


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    gates: Gates
    concurrency: int = 4
    attempts: int = 6  # back-off 0.25, 0.5, 1, 2, 4 s (± jitter) between them
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    timeout_s: float = 120.0
    api_key: str | None = None  # sent as `Authorization: Bearer KEY`; needs the enroll and identify scopes


@dataclass(slots=True)
class RemoteInfo:
    model: str | None = None
    requests: int = 0
    retries: int = 0


@dataclass(slots=True)
class _Identities:
    """The server's identities by external_id / exact name (oldest first wins), and their faces once read."""

    ids: dict[tuple[str, str], str] = field(default_factory=dict)
    face_counts: dict[str, int] = field(default_factory=dict)
    faces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add_page(self, items: list[dict[str, Any]]) -> None:
        for identity in items:
            self.ids.setdefault(("name", identity["name"]), identity["id"])
            if identity.get("external_id") is not None:
                self.ids[("external_id", identity["external_id"])] = identity["id"]
            self.face_counts[identity["id"]] = int(identity.get("face_count", 0))


def run_remote(
    items: Sequence[IngestItem],
    *,
    base_url: str,
    settings: Settings,
    options: RemoteOptions,
    tally: Tally,
    stop: StopFlag,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RemoteInfo:
    """Ingest `items` through the server at `base_url`; outcomes go to `tally`."""
    client = _Client(base_url, options, transport)
    ingester = _RemoteIngester(client, options, _alignment_template(settings), settings, tally, stop)
    return asyncio.run(ingester.run(items))


def _alignment_template(settings: Settings) -> tuple[np.ndarray, tuple[int, int]]:
    """The embedder's five-point template, for the blur gate on the aligned crop (no model is loaded)."""
    from service.runtime.manifest import PROJECT_MANIFEST, load_manifest
    from service.runtime.models import embedder_config

    prepared = settings.model_dir / "manifest.toml"
    manifest = load_manifest(prepared if prepared.is_file() else PROJECT_MANIFEST)
    config = embedder_config(manifest.get(settings.embedder))
    return config.template, config.input_size


class _GaveUp(Exception):
    """A request still failed after every retry."""


class _Refused(Exception):
    """The server refused our credentials (401/403): no photo can go through, so the run stops."""


class _Client:
    """One httpx client (kept-alive connections, bounded pool) with retries for idempotent requests."""

    def __init__(self, base_url: str, options: RemoteOptions, transport: httpx.AsyncBaseTransport | None):
        self.options = options
        self.info = RemoteInfo()
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else None
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=options.concurrency, max_keepalive_connections=options.concurrency
            ),
            transport=transport,
        )

    async def pause(self, attempt: int) -> None:
        """Sleep before retry number `attempt` (1, 2, ...): exponential with jitter."""
        self.info.retries += 1
        delay = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def attempt(self, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        """One request; None when it should be retried (connection error, timeout, 429, 5xx)."""
        self.info.requests += 1
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            log.debug("%s %s: %s", method, url, exc)
            return None
        if response.status_code in RETRY_STATUS:
            log.debug("%s %s: %s", method, url, response.status_code)
            return None
        if response.status_code in (401, 403):
            hint = "" if self.options.api_key else " (no API key given: set FACEBANK_API_KEY or --api-key)"
            raise _Refused(f"{method} {url}: {response.status_code} {_error_text(response)}{hint}")
        return response

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request that is safe to repeat (GET, detect), retried until it gets a final answer."""
        for attempt in range(self.options.attempts):
            if attempt:
                await self.pause(attempt)
            response = await self.attempt(method, url, **kwargs)
            if response is not None:
                return response
        raise _GaveUp(f"{method} {url} failed {self.options.attempts} times")


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _detected(body: dict[str, Any]) -> DetectedFace:
    return DetectedFace(
        bbox=tuple(float(v) for v in body["bbox"]),  # type: ignore[arg-type]
        score=float(body["det_score"]),
        landmarks=np.asarray(body["landmarks"], dtype=np.float32).reshape(5, 2),
    )


class _RemoteIngester:
    def __init__(
        self,
        client: _Client,
        options: RemoteOptions,
        alignment: tuple[np.ndarray, tuple[int, int]],
        settings: Settings,
        tally: Tally,
        stop: StopFlag,
    ) -> None:
        self.client, self.options, self.tally, self.stop = client, options, tally, stop
        self.template, self.crop_size = alignment
        self.max_pixels, self.max_faces = settings.max_image_pixels, settings.max_faces
        self.identities = _Identities()
        self.model: str | None = None
        self._key_locks: dict[Any, asyncio.Lock] = {}
        self._fatal: str | None = None

    def _lock(self, key: Any) -> asyncio.Lock:
        return self._key_locks.setdefault(key, asyncio.Lock())

    async def run(self, items: Sequence[IngestItem]) -> RemoteInfo:
        async with self.client.http:
            try:
                response = await self.client.send("GET", "/healthz")
                if response.status_code != 200:
                    raise RemoteError(f"{self.client.http.base_url}/healthz answered {response.status_code}")
                await self._load_identities()
            except _GaveUp as exc:
                raise RemoteError(f"server {self.client.http.base_url} is not reachable: {exc}") from exc
            except _Refused as exc:
                raise RemoteError(f"the server refused the request: {exc}") from exc
            slots = asyncio.Semaphore(self.options.concurrency)
            tasks: set[asyncio.Task[None]] = set()

            def finished(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                slots.release()

            for item in items:
                await slots.acquire()
                if self.stop:
                    slots.release()
                    break
                task = asyncio.create_task(self._one(item))
                tasks.add(task)
                task.add_done_callback(finished)
            # In flight when stopped: let them finish, so each lands (or not) whole.
            if tasks:
                await asyncio.gather(*tasks)
        if self._fatal is not None:
            raise RemoteError(self._fatal)
        self.client.info.model = self.model
        return self.client.info

    async def _load_identities(self) -> None:
        identities = _Identities()
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            response = await self.client.send("GET", "/v1/identities", params=params)
            if response.status_code != 200:
                raise RemoteError(
                    f"GET /v1/identities answered {response.status_code}: {_error_text(response)}"
                )
            page = response.json()
            identities.add_page(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        # Faces already read stay valid; ids and counts are replaced by the fresh listing.
        identities.faces = self.identities.faces
        self.identities = identities

    async def _one(self, item: IngestItem) -> None:
        try:
            outcome = await self._process(item)
        except (_GaveUp, _Refused) as exc:
            outcome = Outcome.of(item, Status.ERROR, HTTP_ERROR, str(exc))
            # Why stop: the server is down past the retry budget, or refuses us; more would only pile up.
            if self._fatal is None:
                what = "server unavailable" if isinstance(exc, _GaveUp) else "the server refused the request"
                self._fatal = f"{what}: {exc}"
                self.stop.set()
        except Exception as exc:  # one photo must not end the run
            log.exception("processing %s failed", item.path)
            outcome = Outcome.of(item, Status.ERROR, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        self.tally.add(outcome)

    async def _process(self, item: IngestItem) -> Outcome:
        try:
            data = await asyncio.to_thread(item.path.read_bytes)
        except OSError as exc:
            return Outcome.of(item, Status.ERROR, READ_ERROR, exc.strerror or str(exc))
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            image = await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)
        except ImageDecodeError as exc:
            return Outcome.of(item, Status.REJECTED, exc.code, exc.message)
        files = {"image": (item.path.name, data, "application/octet-stream")}
        response = await self.client.send("POST", "/v1/detect", files=files)
        if response.status_code in (413, 422):
            return Outcome.of(item, Status.REJECTED, _error_code(response), _error_text(response))
        if response.status_code != 200:
            return self._http_error(item, "POST /v1/detect", response)
        faces = [_detected(f) for f in response.json()["faces"]]
        choice = pick_face(faces, self.options.gates, max_faces=self.max_faces)
        if isinstance(choice, Verdict):
            return Outcome.of(item, Status.REJECTED, choice.reason, choice.detail)
        crop = await asyncio.to_thread(self._align, image, choice)
        if (verdict := check_blur(crop, self.options.gates)) is not None:
            return Outcome.of(item, Status.REJECTED, verdict.reason, verdict.detail)
        # Why this lock: the same photo listed twice for one identity must be checked and enrolled in turn.
        async with self._lock(("photo", item.identity_key, sha256)):
            identity_id = await self._identity(item)
            if identity_id is None:
                return Outcome.of(item, Status.ERROR, HTTP_ERROR, "the identity could not be created")
            if await self._enrolled(identity_id, sha256, choice, data) is not None:
                return Outcome.of(item, Status.SKIPPED, ALREADY_INGESTED)
            return await self._enroll(item, identity_id, sha256, choice, data)

    def _align(self, image: Image.Image, face: DetectedFace) -> np.ndarray:
        return align_face(image, face.landmarks, self.template, self.crop_size)

    def _http_error(self, item: IngestItem, what: str, response: httpx.Response) -> Outcome:
        detail = f"{what}: {response.status_code} {_error_code(response)}: {_error_text(response)}"
        return Outcome.of(item, Status.ERROR, HTTP_ERROR, detail)

    async def _identity(self, item: IngestItem) -> str | None:
        """The identity's id on the server, created once (per run) when missing."""
        key = item.identity_key
        if (known := self.identities.ids.get(key)) is not None:
            return known
        async with self._lock(("identity", key)):
            if (known := self.identities.ids.get(key)) is not None:
                return known
            body: dict[str, Any] = {"name": item.name}
            if item.external_id is not None:
                body["external_id"] = item.external_id
            for attempt in range(self.options.attempts):
                if attempt:
                    await self.client.pause(attempt)
                    # The last attempt may have created it before its answer was lost.
                    await self._load_identities()
                    if (known := self.identities.ids.get(key)) is not None:
                        return known
                response = await self.client.attempt("POST", "/v1/identities", json=body)
                if response is None:
                    continue
                if response.status_code == 201:
                    created = response.json()
                    self.identities.ids[key] = created["id"]
                    self.identities.faces[created["id"]] = []
                    return str(created["id"])
                if response.status_code == 409:  # made meanwhile by someone else: use theirs
                    await self._load_identities()
                    return self.identities.ids.get(key)
                raise _GaveUp(f"POST /v1/identities: {response.status_code} {_error_text(response)}")
            raise _GaveUp(f"POST /v1/identities failed {self.options.attempts} times")

    async def _faces(self, identity_id: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The identity's faces on the server (read once, then kept up to date by this run's enrolls)."""
        async with self._lock(("faces", identity_id)):
            if not refresh and identity_id in self.identities.faces:
                return self.identities.faces[identity_id]
            if not refresh and self.identities.face_counts.get(identity_id, 0) == 0:
                faces: list[dict[str, Any]] = []
            else:
                response = await self.client.send("GET", f"/v1/identities/{identity_id}")
                if response.status_code != 200:
                    raise _GaveUp(f"GET /v1/identities/{identity_id}: {response.status_code}")
                faces = list(response.json()["faces"])
            self.identities.faces[identity_id] = faces
            return faces

    async def _server_model(self, data: bytes) -> str:
        """The server's embedding model: from an enroll answer, else asked once through /v1/identify."""
        async with self._lock("model"):
            if self.model is None:
                files = {"image": ("probe", data, "application/octet-stream")}
                response = await self.client.send("POST", "/v1/identify", params={"k": 1}, files=files)
                if response.status_code != 200:
                    raise _GaveUp(f"POST /v1/identify: {response.status_code} {_error_text(response)}")
                self.model = str(response.json()["model"])
            return self.model

    async def _enrolled(
        self, identity_id: str, sha256: str, face: DetectedFace, data: bytes, *, refresh: bool = False
    ) -> dict[str, Any] | None:
        """The identity's face that came from this photo with the server's model, if there is one."""
        faces = await self._faces(identity_id, refresh=refresh)
        if not faces:
            return None
        model = self.model or await self._server_model(data)
        for known in faces:
            if known.get("model") != model:
                continue
            if "image_sha256" in known:
                if known["image_sha256"] == sha256:
                    return known
                continue
            same_box = all(
                abs(float(a) - b) <= BBOX_TOLERANCE for a, b in zip(known["bbox"], face.bbox, strict=True)
            )
            if same_box and abs(float(known["det_score"]) - face.score) <= SCORE_TOLERANCE:
                return known
        return None

    async def _enroll(
        self, item: IngestItem, identity_id: str, sha256: str, face: DetectedFace, data: bytes
    ) -> Outcome:
        url = f"/v1/identities/{identity_id}/faces"
        policy = "single" if self.options.gates.multi_face == "skip" else "largest"
        files = {"image": (item.path.name, data, "application/octet-stream")}
        for attempt in range(self.options.attempts):
            if attempt:
                await self.client.pause(attempt)
                # Why: the last attempt may have been committed before its answer was lost.
                if await self._enrolled(identity_id, sha256, face, data, refresh=True) is not None:
                    return Outcome.of(item, Status.INGESTED)
            response = await self.client.attempt("POST", url, params={"face_policy": policy}, files=files)
            if response is None:
                continue
            if response.status_code == 201:
                created = response.json()
                self.model = self.model or str(created["model"])
                self.identities.faces.setdefault(identity_id, []).append(created)
                return Outcome.of(item, Status.INGESTED)
            if response.status_code in (413, 422):
                return Outcome.of(item, Status.REJECTED, _error_code(response), _error_text(response))
            return self._http_error(item, f"POST {url}", response)
        raise _GaveUp(f"POST {url} failed {self.options.attempts} times")
