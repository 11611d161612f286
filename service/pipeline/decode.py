"""Decode uploaded bytes once, at the edge: sniff the format, apply EXIF orientation, return RGB.

Uploads are hostile until decoded. The format comes from the bytes, never from a file name or content type;
the pixel count is checked from the header before any pixel is decoded (decompression bombs); only the first
frame of an animation is read; and any failure inside Pillow becomes an `ImageDecodeError`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Formats a camera, phone or browser produces; anything else is refused before decoding. (A JPEG carrying
# extra pictures, as phones write them, opens through the JPEG plugin as MPO; its first picture is the photo.)
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


class ImageDecodeError(ValueError):
    """The upload is not an image we can use; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Bytes → RGB PIL image with EXIF orientation applied (first frame of animations)."""
    if not data:
        raise ImageDecodeError("invalid_image", "the uploaded file is empty")
    _refuse_truncated_images()
    try:
        # Why no warnings.catch_warnings() to turn DecompressionBombWarning into an error: it swaps a
        # process-wide filter and is not thread-safe. The explicit check below runs before decoding instead.
        image = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
        if image.width < 1 or image.height < 1:
            raise ImageDecodeError("invalid_image", f"the image is {image.width}x{image.height} pixels")
        if image.width * image.height > max_pixels:
            raise ImageDecodeError(
                "image_too_large",
                f"image is {image.width}x{image.height} pixels; the limit is {max_pixels} pixels",
            )
        image.seek(0)
        image.load()
        return _to_rgb(_upright(image))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("image_too_large", f"image exceeds the pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            "invalid_image", "the file is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    except MemoryError as exc:
        raise ImageDecodeError("image_too_large", "the image needs too much memory to decode") from exc
    except Exception as exc:
        # Why this broad: malformed files make Pillow's parsers raise almost anything (OSError, ValueError,
        # SyntaxError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError...). Each is the
        # uploader's problem, not the server's.
        log.debug("image decoding failed", exc_info=True)
        raise ImageDecodeError("invalid_image", f"the image could not be decoded: {exc}") from exc


def _refuse_truncated_images() -> None:
    """Put back Pillow's default of refusing truncated files if something in this process turned it off.

    Why: `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is one process-wide flag, and some libraries set it at import
    (face_recognition does), after which a cut-off upload would decode into a half-grey picture. Writing the
    default back is the only per-process control Pillow offers; it is the same value every time, so threads
    cannot race on it.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was turned on in this process; turning it off again")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the pixels as stored rather than failing.

    In place: without it Pillow returns a full copy even when there is nothing to turn (160 MB at 40 MP).
    """
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # the orientation is a nicety, the pixels are what matter
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
    return image


# Deep single-channel modes: 16- and 32-bit integers, 32-bit floats.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Rows converted at a time from a deep mode to 8 bits: the float copy is one strip, never the whole picture.
_STRIP_ROWS = 256


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits a channel. Peak memory stays near the decoded picture plus its RGB copy (4 bytes a pixel
    in Pillow): deep modes go to 8 bits a strip at a time, alpha is flattened with one mask, and a picture
    already in RGB is returned as it is."""
    if image.mode in _DEEP_MODES:
        image = _instead(image, _deep_to_l(image))
    if image.mode in ("LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        image = _instead(image, image.convert("RGBA"))
    if image.mode == "RGBA":
        # Transparent pixels become white rather than whatever colour they happen to hide.
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        return _instead(image, flat)
    return image if image.mode == "RGB" else _instead(image, image.convert("RGB"))


def _instead(old: Image.Image, new: Image.Image) -> Image.Image:
    """`new`, with `old`'s pixels freed now rather than when the caller's reference goes."""
    old.close()
    return new


def _strips(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    width, height = image.size
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        yield top, np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64)


def _deep_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit samples rescaled to 8 bits (Pillow's own conversion clips them): 16-bit by its full range,
    32-bit integers by their peak, floats by their finite range (NaN and infinities count as 0)."""
    low, scale = 0.0, 255.0 / 65535.0
    if not image.mode.startswith("I;16"):
        lowest, highest = np.inf, -np.inf
        for _, strip in _strips(image):
            if image.mode == "F":
                strip = np.nan_to_num(strip, nan=0.0, posinf=0.0, neginf=0.0)
            lowest, highest = min(lowest, float(strip.min())), max(highest, float(strip.max()))
        if image.mode == "F":
            low, scale = lowest, 255.0 / max(highest - lowest, 1e-12)
        else:
            scale = 255.0 / max(highest, 1.0)
    out = np.empty((image.height, image.width), dtype=np.uint8)
    for top, strip in _strips(image):
        if image.mode == "F":
            strip = np.nan_to_num(strip, nan=0.0, posinf=0.0, neginf=0.0)
        strip -= low
        strip *= scale
        np.clip(strip, 0, 255, out=strip)
        out[top : top + strip.shape[0]] = strip.astype(np.uint8)
    return Image.fromarray(out, mode="L")


def image_to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)
