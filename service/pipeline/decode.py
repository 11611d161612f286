"""Decode uploaded bytes once, at the edge: sniff the format, apply EXIF orientation, return RGB.

Uploads are hostile until decoded. The format comes from the bytes, never from a file name or content type;
the pixel count is checked from the header before any pixel is decoded (decompression bombs); only the first
frame of an animation is read; and any failure inside Pillow becomes an `ImageDecodeError`.
"""

from __future__ import annotations

import io
import logging

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
    """Apply the EXIF orientation; a malformed EXIF block leaves the pixels as stored rather than failing."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # the orientation is a nicety, the pixels are what matter
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow clips 16-bit samples when converting; rescale to 8 bits instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        span = max(float(array.max() - array.min()), 1e-12)
        image = Image.fromarray(((array - array.min()) * (255.0 / span)).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        # Transparent pixels become white rather than whatever colour they happen to hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
