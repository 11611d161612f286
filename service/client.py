"""The Python client of the facebank REST API: `Client` (blocking) and `AsyncClient`, both on httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="fbk_...") as facebank:
        ada = facebank.create_identity("Ada Lovelace")
        facebank.enroll_face(ada.id, "ada.jpg")
        for face in facebank.identify("group.jpg").faces:
            print(face.bbox, face.identity.name if face.identity else "unknown")

Images are a path, bytes (any format the server decodes) or a PIL image (sent as PNG, EXIF not applied).
Every refusal of the server is raised as `FacebankError` with its `code` and `message` (the API's
`{"error": {...}}`); an unreachable server as `FacebankConnectionError`, a subclass. Requests the server
turned away before doing any work (429, and 503 `busy`) are retried with exponential back-off, honouring
`Retry-After` up to `RetryPolicy.max_retry_after_s`; requests that are safe to repeat (reads, deletes,
identify, verify, detect) are also retried after connection errors and 502/503/504. Creating an identity or
enrolling a face is not repeated after a lost answer: it may have been committed (service/ingest/remote.py
shows how to check first).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypeVar, cast

import httpx
from PIL import Image
from pydantic import BaseModel

from service.api.schemas import (
    AuditPage,
    DetectResponse,
    Face,
    IdentifyResponse,
    Identity,
    IdentityDetail,
    IdentityPage,
    IndexReport,
    VerifyResponse,
)

__all__ = [
    "AsyncClient",
    "AuditPage",
    "Client",
    "DetectResponse",
    "Face",
    "FacePolicy",
    "FacebankConnectionError",
    "FacebankError",
    "IdentifyResponse",
    "Identity",
    "IdentityDetail",
    "IdentityPage",
    "ImageInput",
    "IndexReport",
    "RetryPolicy",
    "VerifyResponse",
]

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image
FacePolicy = Literal["largest", "single", "box"]
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_PAGE = 500  # the API's largest page of identities


class FacebankError(Exception):
    """The server refused a request: `status` (HTTP), `code` and `message` from its error body."""

    def __init__(
        self, status: int | None, code: str, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class FacebankConnectionError(FacebankError):
    """No answer: the server could not be reached, or the connection broke (status None)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, "unreachable", message)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # tries in all; back-off 0.25, 0.5, 1, 2 s (x 0.5..1 jitter) between them
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    # A Retry-After longer than this is not waited for: the error is raised with `retry_after_s` set.
    max_retry_after_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try `attempt + 1` (attempt 0 is the first): exponential, with jitter."""
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    retries: int = 0


_UNSET: Any = object()


_Body = TypeVar("_Body", bound=BaseModel | None)


@dataclass(frozen=True, slots=True)
class _Call(Generic[_Body]):
    """One API request, described once for both clients; `model` parses its answer (None: no body)."""

    method: str
    path: str
    model: type[_Body] | None = None
    params: Mapping[str, Any] | None = None
    json: Any = None
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    data: Mapping[str, str] | None = None
    # Safe to send again after a lost answer or a gateway error (it changes nothing, or the same thing).
    idempotent: bool = True


def _image_file(image: ImageInput, name: str = "image") -> tuple[str, bytes, str]:
    """(file name, bytes, content type) for a multipart upload of a path, bytes or PIL image."""
    if isinstance(image, bytes | bytearray | memoryview):
        return (name, bytes(image), "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return (path.name, path.read_bytes(), "application/octet-stream")
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        picture = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
        picture.save(buffer, format="PNG")
        return (f"{name}.png", buffer.getvalue(), "image/png")
    raise TypeError(f"an image is a path, bytes or a PIL image, not {type(image).__name__}")


def _box_text(box: Sequence[float]) -> str:
    if len(box) != 4:
        raise ValueError("a box is four numbers: x1, y1, x2, y2")
    return ",".join(f"{float(v):g}" for v in box)


class _Calls:
    """The requests of the v1 API, without sending them."""

    @staticmethod
    def create_identity(
        name: str, external_id: str | None, metadata: dict[str, Any] | None
    ) -> _Call[Identity]:
        body: dict[str, Any] = {"name": name}
        if external_id is not None:
            body["external_id"] = external_id
        if metadata is not None:
            body["metadata"] = metadata
        return _Call("POST", "/v1/identities", Identity, json=body, idempotent=False)

    @staticmethod
    def list_identities(limit: int, cursor: str | None, name: str | None) -> _Call[IdentityPage]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if name:
            params["name"] = name
        return _Call("GET", "/v1/identities", IdentityPage, params=params)

    @staticmethod
    def get_identity(identity_id: uuid.UUID | str) -> _Call[IdentityDetail]:
        return _Call("GET", f"/v1/identities/{identity_id}", IdentityDetail)

    @staticmethod
    def update_identity(
        identity_id: uuid.UUID | str, name: Any, external_id: Any, metadata: Any
    ) -> _Call[Identity]:
        changes = {
            key: value
            for key, value in (("name", name), ("external_id", external_id), ("metadata", metadata))
            if value is not _UNSET
        }
        return _Call("PATCH", f"/v1/identities/{identity_id}", Identity, json=changes)

    @staticmethod
    def delete_identity(identity_id: uuid.UUID | str) -> _Call[None]:
        return _Call("DELETE", f"/v1/identities/{identity_id}")

    @staticmethod
    def enroll_face(
        identity_id: uuid.UUID | str,
        image: ImageInput,
        face_policy: FacePolicy | None,
        box: Sequence[float] | None,
    ) -> _Call[Face]:
        policy = face_policy or ("box" if box is not None else "largest")
        params: dict[str, str] = {"face_policy": policy}
        if box is not None:
            params["box"] = _box_text(box)
        return _Call(
            "POST",
            f"/v1/identities/{identity_id}/faces",
            Face,
            params=params,
            files={"image": _image_file(image)},
            idempotent=False,
        )

    @staticmethod
    def delete_face(identity_id: uuid.UUID | str, face_id: uuid.UUID | str) -> _Call[None]:
        return _Call("DELETE", f"/v1/identities/{identity_id}/faces/{face_id}")

    @staticmethod
    def identify(image: ImageInput, k: int, threshold: float | None) -> _Call[IdentifyResponse]:
        params: dict[str, Any] = {"k": k}
        if threshold is not None:
            params["threshold"] = threshold
        return _Call(
            "POST", "/v1/identify", IdentifyResponse, params=params, files={"image": _image_file(image)}
        )

    @staticmethod
    def verify(
        image: ImageInput, identity_id: uuid.UUID | str | None, image2: ImageInput | None
    ) -> _Call[VerifyResponse]:
        if (identity_id is None) == (image2 is None):
            raise ValueError("give either identity_id or image2")
        files = {"image": _image_file(image)}
        data = None
        if image2 is not None:
            files["image2"] = _image_file(image2, "image2")
        else:
            data = {"identity_id": str(identity_id)}
        return _Call("POST", "/v1/verify", VerifyResponse, files=files, data=data)

    @staticmethod
    def detect(image: ImageInput) -> _Call[DetectResponse]:
        return _Call("POST", "/v1/detect", DetectResponse, files={"image": _image_file(image)})

    @staticmethod
    def audit(limit: int, before: int | None, target_id: str | None, action: str | None) -> _Call[AuditPage]:
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("before", before), ("target_id", target_id), ("action", action)):
            if value is not None:
                params[key] = value
        return _Call("GET", "/v1/audit", AuditPage, params=params)

    @staticmethod
    def index_report() -> _Call[IndexReport]:
        return _Call("GET", "/v1/admin/index", IndexReport)

    @staticmethod
    def rebuild_index() -> _Call[IndexReport]:
        # Rebuilding from SQL again gives the same index: safe to repeat.
        return _Call("POST", "/v1/admin/index/rebuild", IndexReport)


def _error_of(response: httpx.Response) -> FacebankError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    return FacebankError(response.status_code, code, message, retry_after_s=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class _Retrier:
    """Whether, and after how long, a failed attempt is tried again."""

    policy: RetryPolicy
    stats: ClientStats = field(default_factory=ClientStats)

    def delay(self, call: _Call[Any], attempt: int, error: FacebankError) -> float | None:
        """Seconds to wait before try `attempt + 1`, or None to raise `error` now."""
        if attempt + 1 >= self.policy.attempts or not self._retryable(call, error):
            return None
        backoff = self.policy.backoff(attempt)
        if error.retry_after_s is not None:
            if error.retry_after_s > self.policy.max_retry_after_s:
                return None
            backoff = max(backoff, error.retry_after_s)
        self.stats.retries += 1
        return backoff

    @staticmethod
    def _retryable(call: _Call[Any], error: FacebankError) -> bool:
        # Turned away before any work: safe for every request.
        if error.status == 429 or (error.status == 503 and error.code == "busy"):
            return True
        # No answer, or a gateway/overload answer: only requests that may safely run twice.
        return call.idempotent and error.status in (None, 502, 503, 504)


def _parsed(call: _Call[_Body], response: httpx.Response) -> _Body:
    if response.status_code >= 400:
        raise _error_of(response)
    if call.model is None:
        return cast(_Body, None)  # a call without a model is a _Call[None]
    model = cast("type[BaseModel]", call.model)
    return cast(_Body, model.model_validate(response.json()))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """A blocking client; use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=_headers(api_key),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
        )
        self._retrier = _Retrier(retry or RetryPolicy())
        self.stats = self._retrier.stats

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call[_Body]) -> _Body:
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                response = self.http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    files=call.files,
                    data=call.data,
                )
                return _parsed(call, response)
            except httpx.TransportError as exc:
                error: FacebankError = FacebankConnectionError(f"{call.method} {call.path}: {exc!r}")
                cause: Exception = exc
            except FacebankError as exc:
                error, cause = exc, exc
            delay = self._retrier.delay(call, attempt, error)
            if delay is None:
                raise error from (cause if cause is not error else None)
            time.sleep(delay)
            attempt += 1

    # --- identities
    def create_identity(
        self, name: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Identity:
        return self._send(_Calls.create_identity(name, external_id, metadata))

    def get_identity(self, identity_id: uuid.UUID | str) -> IdentityDetail:
        return self._send(_Calls.get_identity(identity_id))

    def list_identities(
        self, *, limit: int = 50, cursor: str | None = None, name: str | None = None
    ) -> IdentityPage:
        """One page, oldest first; `name` keeps those whose name contains it (case-insensitive)."""
        return self._send(_Calls.list_identities(limit, cursor, name))

    def iter_identities(self, *, page_size: int = MAX_PAGE, name: str | None = None) -> Iterator[Identity]:
        """Every identity (whose name contains `name`), oldest first, one page request at a time."""
        cursor: str | None = None
        while True:
            page = self.list_identities(limit=page_size, cursor=cursor, name=name)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def update_identity(
        self,
        identity_id: uuid.UUID | str,
        *,
        name: str = _UNSET,
        external_id: str | None = _UNSET,
        metadata: dict[str, Any] | None = _UNSET,
    ) -> Identity:
        """Change the fields given; the others stay as they are."""
        return self._send(_Calls.update_identity(identity_id, name, external_id, metadata))

    def delete_identity(self, identity_id: uuid.UUID | str) -> None:
        self._send(_Calls.delete_identity(identity_id))

    # --- faces
    def enroll_face(
        self,
        identity_id: uuid.UUID | str,
        image: ImageInput,
        *,
        face_policy: FacePolicy | None = None,
        box: Sequence[float] | None = None,
    ) -> Face:
        """Enroll one face of `image`: the largest (default), the only one (`single`), or the one `box`
        (x1, y1, x2, y2 as /v1/identify or /v1/detect return it) overlaps most (`box`, implied by `box=`)."""
        return self._send(_Calls.enroll_face(identity_id, image, face_policy, box))

    def delete_face(self, identity_id: uuid.UUID | str, face_id: uuid.UUID | str) -> None:
        self._send(_Calls.delete_face(identity_id, face_id))

    # --- recognition
    def identify(self, image: ImageInput, *, k: int = 5, threshold: float | None = None) -> IdentifyResponse:
        return self._send(_Calls.identify(image, k, threshold))

    def verify(
        self,
        image: ImageInput,
        *,
        identity_id: uuid.UUID | str | None = None,
        image2: ImageInput | None = None,
    ) -> VerifyResponse:
        return self._send(_Calls.verify(image, identity_id, image2))

    def detect(self, image: ImageInput) -> DetectResponse:
        return self._send(_Calls.detect(image))

    # --- admin
    def audit(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        target_id: str | None = None,
        action: str | None = None,
    ) -> AuditPage:
        """Audit events, newest first; pass `next_before` of a page as `before` for the next (admin scope)."""
        return self._send(_Calls.audit(limit, before, target_id, action))

    def index_report(self) -> IndexReport:
        """Whether the server's search index holds exactly the faces in SQL (admin scope)."""
        return self._send(_Calls.index_report())

    def rebuild_index(self) -> IndexReport:
        """Rebuild the server's index from SQL, without a restart (admin scope)."""
        return self._send(_Calls.rebuild_index())


class AsyncClient:
    """The same API as `Client`, awaitable; use with `async with`, or call `await aclose()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=_headers(api_key),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )
        self._retrier = _Retrier(retry or RetryPolicy())
        self.stats = self._retrier.stats

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call[_Body]) -> _Body:
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                response = await self.http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    files=call.files,
                    data=call.data,
                )
                return _parsed(call, response)
            except httpx.TransportError as exc:
                error: FacebankError = FacebankConnectionError(f"{call.method} {call.path}: {exc!r}")
                cause: Exception = exc
            except FacebankError as exc:
                error, cause = exc, exc
            delay = self._retrier.delay(call, attempt, error)
            if delay is None:
                raise error from (cause if cause is not error else None)
            await asyncio.sleep(delay)
            attempt += 1

    async def create_identity(
        self, name: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Identity:
        return await self._send(_Calls.create_identity(name, external_id, metadata))

    async def get_identity(self, identity_id: uuid.UUID | str) -> IdentityDetail:
        return await self._send(_Calls.get_identity(identity_id))

    async def list_identities(
        self, *, limit: int = 50, cursor: str | None = None, name: str | None = None
    ) -> IdentityPage:
        return await self._send(_Calls.list_identities(limit, cursor, name))

    async def iter_identities(
        self, *, page_size: int = MAX_PAGE, name: str | None = None
    ) -> AsyncIterator[Identity]:
        cursor: str | None = None
        while True:
            page = await self.list_identities(limit=page_size, cursor=cursor, name=name)
            for identity in page.items:
                yield identity
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def update_identity(
        self,
        identity_id: uuid.UUID | str,
        *,
        name: str = _UNSET,
        external_id: str | None = _UNSET,
        metadata: dict[str, Any] | None = _UNSET,
    ) -> Identity:
        return await self._send(_Calls.update_identity(identity_id, name, external_id, metadata))

    async def delete_identity(self, identity_id: uuid.UUID | str) -> None:
        await self._send(_Calls.delete_identity(identity_id))

    async def enroll_face(
        self,
        identity_id: uuid.UUID | str,
        image: ImageInput,
        *,
        face_policy: FacePolicy | None = None,
        box: Sequence[float] | None = None,
    ) -> Face:
        return await self._send(_Calls.enroll_face(identity_id, image, face_policy, box))

    async def delete_face(self, identity_id: uuid.UUID | str, face_id: uuid.UUID | str) -> None:
        await self._send(_Calls.delete_face(identity_id, face_id))

    async def identify(
        self, image: ImageInput, *, k: int = 5, threshold: float | None = None
    ) -> IdentifyResponse:
        return await self._send(_Calls.identify(image, k, threshold))

    async def verify(
        self,
        image: ImageInput,
        *,
        identity_id: uuid.UUID | str | None = None,
        image2: ImageInput | None = None,
    ) -> VerifyResponse:
        return await self._send(_Calls.verify(image, identity_id, image2))

    async def detect(self, image: ImageInput) -> DetectResponse:
        return await self._send(_Calls.detect(image))

    async def audit(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        target_id: str | None = None,
        action: str | None = None,
    ) -> AuditPage:
        return await self._send(_Calls.audit(limit, before, target_id, action))

    async def index_report(self) -> IndexReport:
        return await self._send(_Calls.index_report())

    async def rebuild_index(self) -> IndexReport:
        return await self._send(_Calls.rebuild_index())
