import io

import numpy as np
import pytest
from PIL import Image

from service.pipeline.decode import ImageDecodeError, decode_image

LIMIT = 10_000_000


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _gradient(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (height, 1))] * 3, axis=-1))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb_of_the_same_size(fmt: str) -> None:
    out = decode_image(_encode(_gradient(), fmt), max_pixels=LIMIT)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_exif_orientation_is_applied() -> None:
    image = _gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(_encode(image, "JPEG", exif=exif), max_pixels=LIMIT)
    assert out.size == (30, 40)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16", "LA", "RGBA"])
def test_unusual_modes_become_rgb(mode: str) -> None:
    image = _gradient().convert("L") if mode == "I;16" else _gradient().convert(mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, np.uint16) * 257).convert("I;16")
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(_encode(image, fmt), max_pixels=LIMIT)
    assert out.mode == "RGB"
    if mode == "I;16":  # 16-bit samples are rescaled, not clipped to white
        assert 100 < np.asarray(out).mean() < 160


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = decode_image(_encode(image, "PNG"), max_pixels=LIMIT)
    assert np.asarray(out).min() == 255


def test_animated_images_give_their_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert np.asarray(out)[0, 0, 0] > 200


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "invalid_image"),
        (b"this is not an image", "invalid_image"),
        (b"%PDF-1.4\n", "invalid_image"),
    ],
)
def test_non_images_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=LIMIT)
    assert info.value.code == code


def test_truncated_files_are_refused() -> None:
    data = _encode(_gradient(200, 200), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert info.value.code == "invalid_image"


def test_images_over_the_pixel_limit_are_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.code == "image_too_large"
