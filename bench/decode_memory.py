"""Peak memory of the worst uploads the API accepts: `python -m bench.decode_memory [--server]`.

Builds one picture per costly kind at the pixel limit (FACEBANK_MAX_IMAGE_PIXELS) and under the upload limit,
each with a face in it, then measures
- per picture, the extra peak resident memory of `decode_image` in a fresh process (VmHWM after minus before);
- with `--server`, a real `facebank serve` (default settings, SQLite) sent as many of each picture at once as
  it has image slots plus waiting places, reading the server process's VmHWM.
Figures go to stdout as a Markdown table; docs/security.md quotes them.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.data import REPO_ROOT
from service.config import Settings

FACE = REPO_ROOT.parent / "shared" / "data" / "lfw" / "Colin_Powell" / "Colin_Powell_0001.jpg"


def _size(max_pixels: int) -> tuple[int, int]:
    """The largest 3:2 picture within the pixel limit."""
    height = int((max_pixels / 1.5) ** 0.5)
    return int(height * 1.5), height


def _with_face(mode: str, size: tuple[int, int]) -> Image.Image:
    width, height = size
    # Steps, not a smooth ramp: long runs compress, so a picture at the pixel limit fits the upload limit.
    ramp = np.floor(np.linspace(0, 16, width, endpoint=False, dtype=np.float32)) / 16
    ramp = ramp[None, :].repeat(height, axis=0)
    face = Image.open(FACE).convert("RGB").resize((height // 3, height // 3))
    if mode == "I;16":
        picture = Image.fromarray((ramp * 65535).astype(np.uint16))
        grey = np.asarray(face.convert("L"), dtype=np.uint16) * 257
        picture.paste(Image.fromarray(grey), (width // 3, height // 3))
        return picture
    if mode == "F":
        picture = Image.fromarray(ramp * 1000.0)
        shade = np.asarray(face.convert("L"), dtype=np.float32) * (1000.0 / 255)
        picture.paste(Image.fromarray(shade), (width // 3, height // 3))
        return picture
    base = Image.fromarray((ramp * 255).astype(np.uint8)).convert("RGB")
    base.paste(face, (width // 3, height // 3))
    if mode == "RGBA":
        base.putalpha(Image.fromarray((ramp * 255).astype(np.uint8)))
    return base


def worst_inputs(settings: Settings) -> dict[str, bytes]:
    size = _size(settings.max_image_pixels)
    made: dict[str, bytes] = {}
    kinds: list[tuple[str, str, str, dict[str, Any]]] = [
        ("16-bit grey PNG", "I;16", "PNG", {}),
        ("32-bit float TIFF", "F", "TIFF", {"compression": "tiff_adobe_deflate"}),
        ("RGBA PNG", "RGBA", "PNG", {}),
        ("RGB JPEG", "RGB", "JPEG", {"quality": 90}),
    ]
    for name, mode, format_, options in kinds:
        buffer = io.BytesIO()
        _with_face(mode, size).save(buffer, format_, **options)
        data = buffer.getvalue()
        if len(data) > settings.max_upload_bytes:
            raise SystemExit(f"{name}: {len(data)} bytes is over the upload limit; make it compress better")
        made[f"{name} {size[0]}x{size[1]}"] = data
    return made


_MEASURE = """
import sys
from pathlib import Path
from service.config import Settings
from service.pipeline.decode import decode_image

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
data = Path(sys.argv[1]).read_bytes()
before = hwm()
picture = decode_image(data, max_pixels=Settings().max_image_pixels)
print(hwm() - before, picture.mode, picture.size)
"""


def decode_peak(data: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".img") as file:
        file.write(data)
        file.flush()
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, file.name],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        ).stdout
    return int(out.split()[0])


def hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def server_peaks(settings: Settings, inputs: dict[str, bytes]) -> list[str]:
    from bench.server import serve

    slots = max(2, os.cpu_count() or 2)
    at_once = slots + settings.image_queue
    rows = [
        f"server: {slots} image slots + {settings.image_queue} waiting places = {at_once} requests at once"
    ]
    with (
        tempfile.TemporaryDirectory() as data_dir,
        serve(settings, f"sqlite:///{data_dir}/facebank.db", Path(data_dir)) as server,
    ):
        pid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=300) as client:
            client.post("/v1/identify", files={"image": FACE.read_bytes()}).raise_for_status()
        rows.append(
            f"after start and one identify: RSS {rss(pid) / 2**20:.0f} MiB, peak {hwm(pid) / 2**20:.0f} MiB"
        )
        for name, data in inputs.items():

            def identify(_: int, data: bytes = data) -> int:
                with httpx.Client(base_url=server.url, timeout=300) as client:
                    return client.post("/v1/identify", files={"image": data}).status_code

            with ThreadPoolExecutor(at_once) as pool:
                statuses = list(pool.map(identify, range(at_once)))
            rows.append(
                f"{name}: {at_once} at once -> statuses {sorted(set(statuses))}, "
                f"server peak so far {hwm(pid) / 2**20:.0f} MiB, RSS after {rss(pid) / 2**20:.0f} MiB"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", action="store_true", help="also measure a real server under load")
    args = parser.parse_args(argv)
    settings = Settings()
    inputs = worst_inputs(settings)
    print("| input | upload | decode_image extra peak |")
    print("| --- | --- | --- |")
    for name, data in inputs.items():
        print(f"| {name} | {len(data) / 2**20:.1f} MiB | {decode_peak(data) / 2**20:.0f} MiB |")
    if args.server:
        for row in server_peaks(settings, inputs):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
