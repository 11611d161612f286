"""--url mode: ingest through a running server's REST API, which then sees every face at once.

Every request goes through `service.client.AsyncClient`, the project's one HTTP client. The API enrolls one
photo per request and has no batch endpoint, so "batched" here means pipelined: up to `concurrency` photos
in flight over one pool of kept-alive connections. Each photo costs two requests, POST /v1/detect (the
quality gates and the already-ingested check run on its answer, as in embedded mode) and
POST /v1/identities/{id}/faces. The client retries what is safe to repeat (reads, detect; 429 and 503 busy
for everything); creating an identity and enrolling are retried here, after checking whether the last try
landed.

Exactly once without a server-side idempotency key: a photo counts as already enrolled for an identity when
one of that identity's faces of the server's model carries the photo's `image_sha256`. Before an enroll
request is retried, the identity's faces are read again, so a request whose answer was lost is not enrolled
twice.

Identities are matched as in embedded mode (external_id, else the oldest identity with exactly that name)
and created once per run. Two ingest processes creating the same new *name* at the same moment through the
API can race (the API has no unique rule on names); an external_id is unique on the server, so that race
ends in a 409 and the existing identity is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.api.schemas import DetectedFaceOut, Face
from service.client import AsyncClient, FacebankConnectionError, FacebankError, FacePolicy, RetryPolicy
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
    page_size: int = 500  # identities per listing request (the API's largest page)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.attempts, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)


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
    faces: dict[str, list[Face]] = field(default_factory=dict)


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
    ingester = _RemoteIngester(
        base_url, options, transport, _alignment_template(settings), settings, tally, stop
    )
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


def _may_have_landed(exc: FacebankError) -> bool:
    """No answer, or a server-side failure: a write may have been committed or not; check, then retry."""
    return isinstance(exc, FacebankConnectionError) or (exc.status is not None and exc.status >= 500)


def _server_down(exc: FacebankError) -> bool:
    """Still unreachable or unavailable after the client's retries: no other photo would fare better."""
    return isinstance(exc, FacebankConnectionError) or exc.status in (502, 503, 504)


def _detected(face: DetectedFaceOut) -> DetectedFace:
    return DetectedFace(
        bbox=tuple(float(v) for v in face.bbox),  # type: ignore[arg-type]
        score=float(face.det_score),
        landmarks=np.asarray(face.landmarks, dtype=np.float32).reshape(5, 2),
    )


class _RemoteIngester:
    def __init__(
        self,
        base_url: str,
        options: RemoteOptions,
        transport: httpx.AsyncBaseTransport | None,
        alignment: tuple[np.ndarray, tuple[int, int]],
        settings: Settings,
        tally: Tally,
        stop: StopFlag,
    ) -> None:
        self.base_url = base_url
        self.client = AsyncClient(
            base_url,
            api_key=options.api_key,
            timeout_s=options.timeout_s,
            retry=options.retry_policy(),
            max_connections=options.concurrency,
            transport=transport,
        )
        self.options, self.tally, self.stop = options, tally, stop
        self.template, self.crop_size = alignment
        self.max_pixels, self.max_faces = settings.max_image_pixels, settings.max_faces
        self.identities = _Identities()
        self.model: str | None = None
        self._key_locks: dict[Any, asyncio.Lock] = {}
        self._fatal: str | None = None

    def _lock(self, key: Any) -> asyncio.Lock:
        return self._key_locks.setdefault(key, asyncio.Lock())

    async def _pause(self, attempt: int) -> None:
        """Sleep before our own retry number `attempt` (1, 2, ...) of a write."""
        self.client.stats.retries += 1
        await asyncio.sleep(self.options.retry_policy().backoff(attempt - 1))

    def _refused_or_raise(self, what: str, exc: FacebankError) -> None:
        """401/403 end the run (with a hint when no key was given); everything else is for the caller."""
        if exc.status in (401, 403):
            hint = "" if self.options.api_key else " (no API key given: set FACEBANK_API_KEY or --api-key)"
            raise _Refused(f"{what}: {exc}{hint}") from exc

    async def run(self, items: Sequence[IngestItem]) -> RemoteInfo:
        async with self.client:
            try:
                await self._load_identities()
            except _Refused as exc:
                raise RemoteError(f"the server refused the request: {exc}") from exc
            except (_GaveUp, FacebankError) as exc:
                raise RemoteError(f"server {self.base_url} is not usable: {exc}") from exc
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
        return RemoteInfo(
            model=self.model, requests=self.client.stats.requests, retries=self.client.stats.retries
        )

    async def _load_identities(self) -> None:
        identities = _Identities()
        try:
            async for identity in self.client.iter_identities(page_size=self.options.page_size):
                key = str(identity.id)
                identities.ids.setdefault(("name", identity.name), key)
                if identity.external_id is not None:
                    identities.ids[("external_id", identity.external_id)] = key
                identities.face_counts[key] = identity.face_count
        except FacebankError as exc:
            self._refused_or_raise("GET /v1/identities", exc)
            raise _GaveUp(f"GET /v1/identities: {exc}") from exc
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
        try:
            detected = await self.client.detect(data)
        except FacebankError as exc:
            self._refused_or_raise("POST /v1/detect", exc)
            if exc.status in (413, 422):
                return Outcome.of(item, Status.REJECTED, exc.code, exc.message)
            if _server_down(exc):
                raise _GaveUp(f"POST /v1/detect: {exc}") from exc
            return self._http_error(item, "POST /v1/detect", exc)
        faces = [_detected(f) for f in detected.faces]
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
            if await self._enrolled(identity_id, data) is not None:
                return Outcome.of(item, Status.SKIPPED, ALREADY_INGESTED)
            return await self._enroll(item, identity_id, choice, data)

    def _align(self, image: Image.Image, face: DetectedFace) -> np.ndarray:
        return align_face(image, face.landmarks, self.template, self.crop_size)

    @staticmethod
    def _http_error(item: IngestItem, what: str, exc: FacebankError) -> Outcome:
        return Outcome.of(item, Status.ERROR, HTTP_ERROR, f"{what}: {exc}")

    async def _identity(self, item: IngestItem) -> str | None:
        """The identity's id on the server, created once (per run) when missing."""
        key = item.identity_key
        if (known := self.identities.ids.get(key)) is not None:
            return known
        async with self._lock(("identity", key)):
            if (known := self.identities.ids.get(key)) is not None:
                return known
            for attempt in range(self.options.attempts):
                if attempt:
                    await self._pause(attempt)
                    # The last attempt may have created it before its answer was lost.
                    await self._load_identities()
                    if (known := self.identities.ids.get(key)) is not None:
                        return known
                try:
                    created = await self.client.create_identity(item.name, external_id=item.external_id)
                except FacebankError as exc:
                    self._refused_or_raise("POST /v1/identities", exc)
                    if exc.status == 409:  # made meanwhile by someone else: use theirs
                        await self._load_identities()
                        return self.identities.ids.get(key)
                    if _may_have_landed(exc):
                        continue
                    raise _GaveUp(f"POST /v1/identities: {exc}") from exc
                self.identities.ids[key] = str(created.id)
                self.identities.faces[str(created.id)] = []
                return str(created.id)
            raise _GaveUp(f"POST /v1/identities failed {self.options.attempts} times")

    async def _faces(self, identity_id: str, *, refresh: bool = False) -> list[Face]:
        """The identity's faces on the server (read once, then kept up to date by this run's enrolls)."""
        async with self._lock(("faces", identity_id)):
            if not refresh and identity_id in self.identities.faces:
                return self.identities.faces[identity_id]
            if not refresh and self.identities.face_counts.get(identity_id, 0) == 0:
                faces: list[Face] = []
            else:
                try:
                    faces = list((await self.client.get_identity(identity_id)).faces)
                except FacebankError as exc:
                    self._refused_or_raise(f"GET /v1/identities/{identity_id}", exc)
                    raise _GaveUp(f"GET /v1/identities/{identity_id}: {exc}") from exc
            self.identities.faces[identity_id] = faces
            return faces

    async def _server_model(self, data: bytes) -> str:
        """The server's embedding model: from an enroll answer, else asked once through /v1/identify."""
        async with self._lock("model"):
            if self.model is None:
                try:
                    self.model = (await self.client.identify(data, k=1)).model
                except FacebankError as exc:
                    self._refused_or_raise("POST /v1/identify", exc)
                    raise _GaveUp(f"POST /v1/identify: {exc}") from exc
            return self.model

    async def _enrolled(self, identity_id: str, data: bytes, *, refresh: bool = False) -> Face | None:
        """The identity's face that came from this photo with the server's model, if there is one."""
        faces = await self._faces(identity_id, refresh=refresh)
        if not faces:
            return None
        model = self.model or await self._server_model(data)
        sha256 = hashlib.sha256(data).hexdigest()
        return next((f for f in faces if f.model == model and f.image_sha256 == sha256), None)

    async def _enroll(self, item: IngestItem, identity_id: str, face: DetectedFace, data: bytes) -> Outcome:
        url = f"POST /v1/identities/{identity_id}/faces"
        policy: FacePolicy = "single" if self.options.gates.multi_face == "skip" else "largest"
        for attempt in range(self.options.attempts):
            if attempt:
                await self._pause(attempt)
                # Why: the last attempt may have been committed before its answer was lost.
                if await self._enrolled(identity_id, data, refresh=True) is not None:
                    return Outcome.of(item, Status.INGESTED)
            try:
                created = await self.client.enroll_face(identity_id, data, face_policy=policy)
            except FacebankError as exc:
                self._refused_or_raise(url, exc)
                if exc.status in (413, 422):
                    return Outcome.of(item, Status.REJECTED, exc.code, exc.message)
                if _may_have_landed(exc):
                    continue
                return self._http_error(item, url, exc)
            self.model = self.model or created.model
            self.identities.faces.setdefault(identity_id, []).append(created)
            return Outcome.of(item, Status.INGESTED)
        raise _GaveUp(f"{url} failed {self.options.attempts} times")
