import io
import os
import subprocess
import sys
from pathlib import Path

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


def test_half_transparent_pixels_are_blended_onto_white_as_alpha_compositing_does() -> None:
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), mode="RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, image).convert("RGB"), dtype=np.int16)
    out = np.asarray(decode_image(_encode(image, "PNG"), max_pixels=LIMIT), dtype=np.int16)
    assert np.abs(out - expected).max() <= 1  # rounding differs by at most one level


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


def _whole_picture_rescale(image: Image.Image) -> np.ndarray:
    """The earlier conversion, through one float64 copy of the whole picture: the reference for values."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        span = max(float(array.max() - array.min()), 1e-12)
        return ((array - array.min()) * (255.0 / span)).astype(np.uint8)
    peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
    return np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_pictures_are_rescaled_strip_by_strip_to_the_same_values(mode: str) -> None:
    rng = np.random.default_rng(3)
    shape = (700, 90)  # more rows than one strip
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(-5000, 2**20, shape, dtype=np.int32))
    else:
        values = rng.normal(0, 300, shape).astype(np.float32)
        values[5, 5], values[600, 7], values[9, 80] = np.nan, np.inf, -np.inf
        image = Image.fromarray(values)
    assert image.mode == mode
    out = decode_image(_encode(image, "TIFF"), max_pixels=LIMIT)
    assert np.array_equal(np.asarray(out)[..., 0], _whole_picture_rescale(image))


def test_a_16_bit_picture_is_converted_without_a_whole_picture_float_copy() -> None:
    """Pillow's pixels are not traced, numpy's are: what is traced is the conversion's own working memory,
    which must stay well under the 8 bytes a pixel a float64 copy of the picture takes."""
    import tracemalloc

    width, height = 3000, 2000
    ramp = np.linspace(0, 65535, width, dtype=np.float64)[None, :].repeat(height, axis=0)
    data = _encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")
    del ramp
    tracemalloc.start()
    try:
        decode_image(data, max_pixels=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * width * height, f"{peak / (width * height):.1f} bytes a pixel"


_THREADS_DECODE = """
import io, sys, threading
from pathlib import Path
import numpy as np
from PIL import Image
from service.api.memory import unmap_large_blocks
from service.pipeline.decode import decode_image

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
if sys.argv[1] == "unmapped":
    assert unmap_large_blocks()
buffer = io.BytesIO()
Image.fromarray((np.arange(4000 * 3000) % 65536).astype(np.uint16).reshape(3000, 4000)).save(buffer, "PNG")
data = buffer.getvalue()
before = rss()
decode = lambda: decode_image(data, max_pixels=10**8)
threads = [threading.Thread(target=decode) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(rss() - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_the_memory_of_decoded_photos_goes_back_to_the_system_after_the_request() -> None:
    """Four threads each decode a 12 MP picture: what the process still holds afterwards, with and without
    `unmap_large_blocks` (which the app calls at start)."""
    root = Path(__file__).resolve().parents[2]

    def growth(mode: str) -> int:
        env = {**os.environ, "PYTHONPATH": str(root)}
        out = subprocess.run(
            [sys.executable, "-c", _THREADS_DECODE, mode], capture_output=True, text=True, check=True, env=env
        )
        return int(out.stdout.split()[-1])

    held = growth("unmapped")
    assert held < 32 * 2**20, f"{held / 2**20:.0f} MiB still held"
    # The control: without it, the threads' heaps keep what they decoded (more than one picture's worth).
    assert growth("default") > 4 * held + 48 * 2**20
