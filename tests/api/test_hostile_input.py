"""Hostile and broken input: each gets a clear 4xx with a machine-readable code, the server stays up, nothing
already stored is lost.

The corpus is generated here (from a few LFW photos and synthetic bytes), never downloaded. Odd but valid
images (CMYK, 16-bit, palette, alpha, animations, EXIF rotation) must work; everything else must be refused.
The app runs with tight limits so the limits are reached with small files: 512 KiB per upload, 4 MP per
image, 3 faces per photo.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from service.api import create_app
from service.config import Settings
from tests._client import local_client
from tests.conftest import LFW

MAX_UPLOAD = 512 * 1024
MAX_PIXELS = 4_000_000
MAX_FACES = 3

# --- generated images ------------------------------------------------------------------------------------


def _lfw(name: str, number: int = 1) -> Image.Image:
    return Image.open(LFW / name / f"{name}_{number:04d}.jpg").convert("RGB")


def face() -> Image.Image:
    return _lfw("Tony_Blair")


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def blank(size: tuple[int, int] = (250, 250)) -> Image.Image:
    return Image.new("RGB", size, (90, 120, 160))


def collage(count: int) -> Image.Image:
    people = ["Tony_Blair", "Colin_Powell", "Hugo_Chavez", "Serena_Williams", "Jean_Chretien"]
    # The central crop of each photo: LFW photos sometimes show a second person behind.
    canvas = Image.new("RGB", (150 * count, 170), (255, 255, 255))
    for i in range(count):
        canvas.paste(_lfw(people[i]).crop((50, 40, 200, 210)), (150 * i, 0))
    return canvas


def animated(fmt: str, frames: list[Image.Image], **params: Any) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params
    )
    return buffer.getvalue()


def sixteen_bit_gray(fmt: str) -> bytes:
    gray = np.asarray(face().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray).convert("I;16"), fmt)


def with_alpha(mode: str) -> bytes:
    image = face().convert(mode)
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, 250, 30))  # a transparent band at the top
    image.putalpha(alpha)
    return encode(image, "PNG")


def exif_rotated(orientation: int) -> bytes:
    """The face stored turned so that applying `orientation` shows it upright."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = face().transpose(undo[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif)


def broken_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 42  # no such orientation
    good = encode(face(), "JPEG", exif=exif)
    return good


def garbage_exif() -> bytes:
    data = encode(face(), "JPEG")
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 64
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width`x`height`, with a tiny compressed body."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def jpeg_bomb(width: int, height: int) -> bytes:
    data = bytearray(encode(blank((16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_bomb(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib) + 16, 0, 0, 14 + len(dib)) + dib + b"\x00" * 16


def corrupted_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 256]) + data[middle + 256 :]


# --- the corpus ------------------------------------------------------------------------------------------

FACE_JPEG = encode(face(), "JPEG", quality=90)
FACE_PNG = encode(face(), "PNG")


@dataclass
class Ctx:
    """Identities the corpus refers to: `sink` receives enrollments; `kept` must survive untouched."""

    client: TestClient
    sink: str
    kept: str
    kept_face: str
    accepted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    id: str
    send: Callable[[Ctx], Response]
    status: int
    code: str | None = None
    check: Callable[[Response], None] | None = None


def _file(data: bytes, name: str = "upload.jpg", content_type: str = "image/jpeg") -> dict:
    return {"image": (name, data, content_type)}


def enroll(
    data: bytes, name: str = "upload.jpg", content_type: str = "image/jpeg", **params: Any
) -> Callable:
    return lambda c: c.client.post(
        f"/v1/identities/{c.sink}/faces", files=_file(data, name, content_type), params=params
    )


def identify(data: bytes, **params: Any) -> Callable:
    return lambda c: c.client.post("/v1/identify", files=_file(data), params=params)


def detect(data: bytes) -> Callable:
    return lambda c: c.client.post("/v1/detect", files=_file(data))


def create(body: Any) -> Callable:
    return lambda c: c.client.post("/v1/identities", json=body)


def create_raw(raw: bytes) -> Callable:
    return lambda c: c.client.post(
        "/v1/identities", content=raw, headers={"content-type": "application/json"}
    )


def get(path: str, **params: Any) -> Callable:
    return lambda c: c.client.get(path.format(sink=c.sink, kept=c.kept), params=params)


def upright_landmarks(response: Response) -> None:
    found = max(response.json()["faces"], key=lambda f: f["det_score"])
    (lx, ly), (rx, ry), (nx, ny), (_, mly), (_, mry) = found["landmarks"]
    assert lx < nx < rx and max(ly, ry) < ny < min(mly, mry), "the face was not turned upright"


def no_faces(response: Response) -> None:
    assert response.json()["faces"] == []


def faces(count: int) -> Callable[[Response], None]:
    def check(response: Response) -> None:
        assert len(response.json()["faces"]) == count

    return check


def _chunked(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536):
        yield b"\x00" * 65536


NOT_IMAGES: list[tuple[str, bytes]] = [
    ("zero-bytes", b""),
    ("plain-text", b"hello, I am not a photo"),
    ("pdf", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'),
    ("html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"),
    ("zip", b"PK\x03\x04" + b"\x00" * 200),
    ("random-bytes", np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    ("jpeg-truncated-half", FACE_JPEG[: len(FACE_JPEG) // 2]),
    ("jpeg-header-only", FACE_JPEG[:200]),
    ("jpeg-corrupted-middle", corrupted_middle(FACE_JPEG)),
    ("png-truncated-half", FACE_PNG[: len(FACE_PNG) // 2]),
    ("png-signature-only", FACE_PNG[:8]),
    ("png-corrupted-idat", corrupted_middle(FACE_PNG)),
    ("gif-magic-then-garbage", b"GIF89a" + b"\xff" * 300),
    ("webp-magic-then-garbage", b"RIFF\x00\x01\x00\x00WEBPVP8 " + b"\x13" * 300),
    ("bmp-truncated", encode(face(), "BMP")[:1000]),
    ("tiff-truncated", encode(face(), "TIFF")[:1000]),
    ("ico-format-not-accepted", encode(face().resize((64, 64)), "ICO")),
    ("ppm-format-not-accepted", encode(face(), "PPM")),
    ("tga-format-not-accepted", encode(face(), "TGA")),
]

GOOD_ODDITIES: list[tuple[str, bytes]] = [
    ("png-named-jpg", FACE_PNG),
    ("cmyk-jpeg", encode(face().convert("CMYK"), "JPEG")),
    ("cmyk-tiff", encode(face().convert("CMYK"), "TIFF")),
    ("16-bit-gray-png", sixteen_bit_gray("PNG")),
    ("16-bit-gray-tiff", sixteen_bit_gray("TIFF")),
    ("grayscale-jpeg", encode(face().convert("L"), "JPEG")),
    ("palette-png", encode(face().quantize(256), "PNG")),
    ("palette-gif", encode(face().quantize(256), "GIF")),
    ("rgba-png", with_alpha("RGBA")),
    ("la-png", with_alpha("LA")),
    ("bmp", encode(face(), "BMP")),
    ("tiff", encode(face(), "TIFF")),
    ("webp", encode(face(), "WEBP")),
    ("lossless-webp", encode(face(), "WEBP", lossless=True)),
    ("progressive-jpeg", encode(face(), "JPEG", progressive=True)),
    ("animated-gif-face-first", animated("GIF", [face(), blank()])),
    ("animated-webp-face-first", animated("WEBP", [face(), blank()])),
    ("animated-png-face-first", animated("PNG", [face(), blank()])),
    ("exif-orientation-unknown", broken_exif()),
    ("exif-block-garbage", garbage_exif()),
]

BOMBS: list[tuple[str, bytes]] = [
    ("png-header-30000x30000", png_bomb(30000, 30000)),
    ("png-header-2100x2000", png_bomb(2100, 2000)),
    ("png-real-2100x2000", encode(Image.new("RGB", (2100, 2000)), "PNG")),
    ("gif-screen-60000x60000", gif_bomb(60000, 60000)),
    ("jpeg-sof-60000x60000", jpeg_bomb(60000, 60000)),
    ("bmp-header-50000x50000", bmp_bomb(50000, 50000)),
    ("png-header-65535x1", png_bomb(65535, 65535)),
]

LONG = "x" * 257
DEEP = {"a": [[[[[[[[{"b": 1}]]]]]]]]}
UUID0 = "00000000-0000-0000-0000-000000000000"

CORPUS: list[Case] = (
    [Case(f"not-an-image-{n}", enroll(data), 422, "invalid_image") for n, data in NOT_IMAGES]
    + [
        Case(f"odd-but-valid-{n}", enroll(data, name="x.bin", content_type="application/octet-stream"), 201)
        for n, data in GOOD_ODDITIES
    ]
    + [Case(f"pixel-bomb-{n}", enroll(data), 413, "image_too_large") for n, data in BOMBS]
    + [
        Case("pixel-bomb-on-identify", identify(png_bomb(30000, 30000)), 413, "image_too_large"),
        Case("pixel-bomb-on-detect", detect(gif_bomb(60000, 60000)), 413, "image_too_large"),
        # Uploads over the limit: in a body the limit allows, in a body it does not, and streamed.
        Case(
            "upload-over-limit", enroll(b"\xff\xd8" + b"\x00" * (MAX_UPLOAD + 10)), 413, "payload_too_large"
        ),
        Case("body-over-limit", enroll(b"\x00" * (3 * MAX_UPLOAD)), 413, "payload_too_large"),
        Case(
            "chunked-body-over-limit",
            lambda c: c.client.post(
                "/v1/identify",
                content=_chunked(4 * MAX_UPLOAD),
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
            413,
            "payload_too_large",
        ),
        Case(
            "json-body-over-limit",
            create({"name": "x", "metadata": {"a": "b" * 70_000}}),
            413,
            "payload_too_large",
        ),
        # Animations: only the first frame counts.
        Case("animated-gif-face-second", enroll(animated("GIF", [blank(), face()])), 422, "no_face"),
        Case("animated-webp-face-second", enroll(animated("WEBP", [blank(), face()])), 422, "no_face"),
        # EXIF orientation is applied before detection: the landmarks come back upright.
        Case("exif-rotated-90-cw", detect(exif_rotated(6)), 200, check=upright_landmarks),
        Case("exif-rotated-180", detect(exif_rotated(3)), 200, check=upright_landmarks),
        Case("exif-rotated-90-ccw", detect(exif_rotated(8)), 200, check=upright_landmarks),
        Case("exif-rotated-enrolls", enroll(exif_rotated(6)), 201),
        # Extreme shapes.
        Case("aspect-20000x10-enroll", enroll(encode(blank((20000, 10)), "PNG")), 422, "no_face"),
        Case("aspect-10x20000-identify", identify(encode(blank((10, 20000)), "PNG")), 200, check=no_faces),
        Case("aspect-20000x10-detect", detect(encode(blank((20000, 10)), "PNG")), 200, check=no_faces),
        Case("one-pixel", enroll(encode(blank((1, 1)), "PNG")), 422, "no_face"),
        # More faces than allowed.
        Case("four-faces-enroll", enroll(encode(collage(4), "PNG")), 422, "too_many_faces"),
        Case("four-faces-identify", identify(encode(collage(4), "PNG")), 422, "too_many_faces"),
        Case("four-faces-detect", detect(encode(collage(4), "PNG")), 422, "too_many_faces"),
        Case(
            "four-faces-verify",
            lambda c: c.client.post(
                "/v1/verify", files=_file(FACE_JPEG) | {"image2": ("b.png", encode(collage(4), "PNG"))}
            ),
            422,
            "too_many_faces",
        ),
        Case("three-faces-identify", identify(encode(collage(3), "PNG")), 200, check=faces(3)),
        Case(
            "two-faces-single-policy",
            enroll(encode(collage(2), "PNG"), face_policy="single"),
            422,
            "multiple_faces",
        ),
        # Bad ids.
        Case("uuid-not-a-uuid", get("/v1/identities/not-a-uuid"), 422, "validation_error"),
        Case("uuid-a-number", get("/v1/identities/1234"), 422, "validation_error"),
        Case("uuid-trailing-garbage", get("/v1/identities/{kept}x"), 422, "validation_error"),
        Case("uuid-sql-injection", get("/v1/identities/' OR '1'='1"), 422, "validation_error"),
        Case("uuid-very-long", get("/v1/identities/" + "a" * 5000), 422, "validation_error"),
        Case("uuid-nul", get("/v1/identities/%00"), 422, "validation_error"),
        Case("uuid-unknown", get(f"/v1/identities/{UUID0}"), 404, "not_found"),
        Case(
            "face-uuid-bad",
            lambda c: c.client.delete(f"/v1/identities/{c.kept}/faces/nope"),
            422,
            "validation_error",
        ),
        Case(
            "face-of-another-identity",
            lambda c: c.client.delete(f"/v1/identities/{c.sink}/faces/{c.kept_face}"),
            404,
            "not_found",
        ),
        Case(
            "enroll-unknown-identity",
            lambda c: c.client.post(f"/v1/identities/{UUID0}/faces", files=_file(FACE_JPEG)),
            404,
            "not_found",
        ),
        Case(
            "verify-identity-id-bad",
            lambda c: c.client.post("/v1/verify", files=_file(FACE_JPEG), data={"identity_id": "nope"}),
            422,
            "validation_error",
        ),
        Case(
            "verify-identity-id-unknown",
            lambda c: c.client.post("/v1/verify", files=_file(FACE_JPEG), data={"identity_id": UUID0}),
            404,
            "not_found",
        ),
        Case("key-id-bad", lambda c: c.client.delete("/v1/keys/not-a-uuid"), 422, "validation_error"),
        # Names and metadata.
        Case("name-too-long", create({"name": LONG}), 422, "validation_error"),
        Case("name-empty", create({"name": ""}), 422, "validation_error"),
        Case("name-nul", create({"name": "a\u0000b"}), 422, "validation_error"),
        Case("name-lone-surrogate", create_raw(b'{"name": "\\ud800"}'), 422, "validation_error"),
        Case("name-a-number", create({"name": 123}), 422, "validation_error"),
        Case("name-an-object", create({"name": {"first": "a"}}), 422, "validation_error"),
        Case("name-missing", create({"metadata": {}}), 422, "validation_error"),
        Case("external-id-too-long", create({"name": "x", "external_id": LONG}), 422, "validation_error"),
        Case("external-id-nul", create({"name": "x", "external_id": "\u0000"}), 422, "validation_error"),
        Case(
            "metadata-17-kib", create({"name": "x", "metadata": {"a": "b" * 17_000}}), 422, "validation_error"
        ),
        Case("metadata-too-deep", create({"name": "x", "metadata": DEEP}), 422, "validation_error"),
        Case("metadata-nan", create_raw(b'{"name": "x", "metadata": {"a": NaN}}'), 422, "validation_error"),
        Case(
            "metadata-infinity",
            create_raw(b'{"name": "x", "metadata": {"a": -Infinity}}'),
            422,
            "validation_error",
        ),
        Case(
            "metadata-huge-number",
            create_raw(b'{"name": "x", "metadata": {"a": 1e999}}'),
            422,
            "validation_error",
        ),
        Case("metadata-a-list", create({"name": "x", "metadata": [1, 2]}), 422, "validation_error"),
        Case("metadata-a-string", create({"name": "x", "metadata": "s"}), 422, "validation_error"),
        Case("metadata-key-nul", create({"name": "x", "metadata": {"\u0000": 1}}), 422, "validation_error"),
        Case(
            "json-nested-30000-deep",
            create_raw(b'{"name": "x", "metadata": ' + b"[" * 30000 + b"]" * 30000 + b"}"),
            400,
            "bad_request",
        ),
        Case("json-invalid-utf8", create_raw(b'{"name": "\xff\xfe"}'), 400, "bad_request"),
        Case("json-truncated", create_raw(b'{"name": "x", "meta'), 422, "validation_error"),
        Case("json-extra-field", create({"name": "x", "admin": True}), 422, "validation_error"),
        Case(
            "patch-metadata-17-kib",
            lambda c: c.client.patch(f"/v1/identities/{c.kept}", json={"metadata": {"a": "b" * 17_000}}),
            422,
            "validation_error",
        ),
        Case(
            "patch-name-null",
            lambda c: c.client.patch(f"/v1/identities/{c.kept}", json={"name": None}),
            422,
            "validation_error",
        ),
        # Bad query values.
        *[
            Case(f"identify-k-{k}", identify(FACE_JPEG, k=k), 422, "validation_error")
            for k in ("0", "-1", "101", "abc", "1.5", "1e3", "99999999999999999999")
        ],
        *[
            Case(f"identify-threshold-{t}", identify(FACE_JPEG, threshold=t), 422, "validation_error")
            for t in ("2", "-1.5", "nan", "inf", "abc")
        ],
        *[
            Case(f"list-limit-{n}", get("/v1/identities", limit=n), 422, "validation_error")
            for n in ("0", "501", "abc", "-5")
        ],
        Case("list-cursor-garbage", get("/v1/identities", cursor="garbage!!"), 422, "invalid_cursor"),
        Case("list-cursor-non-ascii", get("/v1/identities", cursor="é☃"), 422, "invalid_cursor"),
        Case(
            "list-cursor-valid-base64-wrong-json",
            get("/v1/identities", cursor="eyJ4IjoxfQ"),
            422,
            "invalid_cursor",
        ),
        Case("list-cursor-too-long", get("/v1/identities", cursor="a" * 600), 422, "validation_error"),
        Case("face-policy-unknown", enroll(FACE_JPEG, face_policy="all"), 422, "validation_error"),
        Case("audit-before-zero", get("/v1/audit", before="0"), 422, "validation_error"),
        Case("audit-target-nul", get("/v1/audit", target_id="\u0000"), 422, "validation_error"),
        Case("audit-action-sql", get("/v1/audit", action="x' OR 1=1"), 422, "validation_error"),
        # Wrong shapes of request.
        Case(
            "identify-json-instead-of-upload",
            lambda c: c.client.post("/v1/identify", json={"image": "x"}),
            422,
            "missing_image",
        ),
        Case(
            "identify-image-as-text-field",
            lambda c: c.client.post("/v1/identify", data={"image": "abc"}),
            422,
            "validation_error",
        ),
        Case(
            "identify-multipart-without-boundary",
            lambda c: c.client.post(
                "/v1/identify", content=b"x", headers={"content-type": "multipart/form-data"}
            ),
            400,
            "bad_request",
        ),
        Case(
            "create-identity-as-multipart",
            lambda c: c.client.post("/v1/identities", files=_file(b"x")),
            422,
            "validation_error",
        ),
        Case(
            "verify-with-neither",
            lambda c: c.client.post("/v1/verify", files=_file(FACE_JPEG)),
            422,
            "bad_request",
        ),
        Case(
            "verify-with-both",
            lambda c: c.client.post(
                "/v1/verify",
                files=_file(FACE_JPEG) | {"image2": ("b.jpg", FACE_JPEG)},
                data={"identity_id": c.kept},
            ),
            422,
            "bad_request",
        ),
        Case("method-not-allowed", lambda c: c.client.put("/v1/identities"), 405, "method_not_allowed"),
        Case("unknown-path", get("/v1/nothing-here"), 404, "not_found"),
    ]
)


@pytest.fixture(scope="module")
def ctx(database_url: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        model_dir=model_dir,
        database_url=database_url,
        max_upload_bytes=MAX_UPLOAD,
        max_image_pixels=MAX_PIXELS,
        max_faces=MAX_FACES,
    )
    with local_client(create_app(settings)) as client:
        kept = client.post("/v1/identities", json={"name": "Colin_Powell", "metadata": {"keep": True}}).json()
        kept_face = client.post(
            f"/v1/identities/{kept['id']}/faces", files=_file(encode(_lfw("Colin_Powell"), "JPEG"))
        ).json()
        sink = client.post("/v1/identities", json={"name": "sink"}).json()
        yield Ctx(client=client, sink=sink["id"], kept=kept["id"], kept_face=kept_face["id"])


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_hostile_input_gets_a_clear_answer(ctx: Ctx, case: Case) -> None:
    response = case.send(ctx)
    assert response.status_code == case.status, f"{case.id}: {response.status_code} {response.text[:300]}"
    if case.status >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] == case.code, body
        assert body["error"]["message"]
    if case.check is not None:
        case.check(response)
    if case.status == 201 and "/faces" in str(response.request.url):
        ctx.accepted.append(response.json()["id"])
    assert ctx.client.get("/healthz").status_code == 200


def test_after_the_corpus_the_server_is_alive_and_nothing_was_lost(ctx: Ctx) -> None:
    client = ctx.client
    assert client.get("/readyz").json()["checks"]["index_in_step"] is True
    kept = client.get(f"/v1/identities/{ctx.kept}").json()
    assert kept["name"] == "Colin_Powell" and kept["metadata"] == {"keep": True}
    assert [f["id"] for f in kept["faces"]] == [ctx.kept_face]
    sink = client.get(f"/v1/identities/{ctx.sink}").json()
    assert sorted(f["id"] for f in sink["faces"]) == sorted(ctx.accepted)
    probe = _file(encode(_lfw("Colin_Powell", 2), "JPEG"))
    best = max(client.post("/v1/identify", files=probe).json()["faces"], key=lambda f: f["det_score"])
    assert best["identity"] is not None and best["identity"]["id"] == ctx.kept
    report = client.get("/v1/admin/index").json()
    assert report["in_step"] and report["sql_faces"] == 1 + len(ctx.accepted)


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 100
    assert len({case.code for case in CORPUS}) >= 10
    json.dumps([case.id for case in CORPUS])  # ids are plain text
    assert len({case.id for case in CORPUS}) == len(CORPUS)
    uuid.UUID(UUID0)


def test_truncated_uploads_stay_refused_after_a_library_turns_on_lenient_loading(ctx: Ctx) -> None:
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what `import face_recognition` does to the whole process
    try:
        response = enroll(FACE_JPEG[: len(FACE_JPEG) // 2])(ctx)
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_image"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
