"""Small faces in group photos: recall and cost per photo of detection settings on composed group photos.

A group photo here is a grey canvas holding one face crop of each of N people, every face scaled to the
same width (the detector's box width on the source photo), in a jittered grid. A pasted face counts as
found when a detection overlaps its box with IoU >= 0.4. Detections that match no pasted face are counted
as "other": looked at on LFW, they are mostly real faces of people behind the pasted one in its crop.

Two uses, on two face sources:

* ``--sizes-at-input``: canvases no larger than the detector's input, faces of 8-32 px, searched at their own
  size: which face width the network finds reliably (the ``smallest_face`` of DetectorConfig). Run it on
  celeba-train (the validation set), never on LFW.
* the default: 3200x2000 canvases with 48 faces of 32, 48, 65 and 100 px, each searched by the old default
  (the photo shrunk to 640 px), the new default (a second pass for faces down to 32 px) and the full
  photo, in the same run: recall, false detections and median seconds per photo.

Usage::

    nice -n 10 python -m bench.group_photos --faces ../shared/data/lfw --models ~/.cache/facebank
    nice -n 10 python -m bench.group_photos --faces ../shared/data/celeba-train --sizes-at-input
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from service.config import Settings
from service.pipeline import Detector
from service.pipeline.factory import build_pipeline

MATCH_IOU = 0.4
CROP_MARGIN = 1.6  # crop side / face width: a head with some hair and background, as in a group photo


@dataclass(frozen=True, slots=True)
class FaceCrop:
    image: Image.Image
    box: tuple[float, float, float, float]  # the face in the crop, from the detector on the source photo


@dataclass(frozen=True, slots=True)
class GroupPhoto:
    image: Image.Image
    faces: np.ndarray  # (N, 4) pasted face boxes, photo pixels


def face_crops(folder: Path, detector: Detector, count: int) -> list[FaceCrop]:
    """One crop per person (their first photo with a face), square around the best detection."""
    crops: list[FaceCrop] = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(person.glob("*.jpg"))[:3]:
            with Image.open(path) as opened:
                photo = opened.convert("RGB")
            faces = detector.detect(photo)
            if not faces:
                continue
            x1, y1, x2, y2 = faces[0].bbox
            side = CROP_MARGIN * max(x2 - x1, y2 - y1)
            left, top = (x1 + x2 - side) / 2, (y1 + y2 - side) / 2
            crop = photo.crop((round(left), round(top), round(left + side), round(top + side)))
            dx, dy = round(left), round(top)
            crops.append(FaceCrop(crop, (x1 - dx, y1 - dy, x2 - dx, y2 - dy)))
            break
        if len(crops) == count:
            break
    return crops


def compose(
    crops: Sequence[FaceCrop], size: tuple[int, int], face_width: int, rng: np.random.Generator
) -> GroupPhoto:
    """A grey photo of `size` with the crops in a grid, each face `face_width` wide, jittered in its cell."""
    width, height = size
    columns = max(1, round(np.sqrt(len(crops) * width / height)))
    rows = -(-len(crops) // columns)
    cell_w, cell_h = width / columns, height / rows
    canvas = Image.new("RGB", size, (127, 127, 127))
    boxes = []
    for slot, crop in enumerate(crops):
        x1, y1, x2, y2 = crop.box
        scale = face_width / (x2 - x1)
        side = max(1, round(crop.image.width * scale))
        if side > min(cell_w, cell_h):
            raise ValueError(f"{len(crops)} faces of {face_width} px do not fit a {width}x{height} photo")
        column, row = slot % columns, slot // columns
        left = round(column * cell_w + rng.uniform(0, cell_w - side))
        top = round(row * cell_h + rng.uniform(0, cell_h - side))
        canvas.paste(crop.image.resize((side, side), Image.Resampling.BILINEAR), (left, top))
        boxes.append((left + x1 * scale, top + y1 * scale, left + x2 * scale, top + y2 * scale))
    return GroupPhoto(canvas, np.asarray(boxes, np.float32))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.maximum(0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def score(truth: np.ndarray, found: np.ndarray) -> tuple[int, int]:
    """(pasted faces found, detections matching no pasted face), greedy one-to-one at MATCH_IOU."""
    free = np.ones(len(truth), bool)
    false = 0
    for box in found:
        overlaps = np.where(free, iou(box, truth), 0.0)
        best = int(np.argmax(overlaps)) if len(truth) else -1
        if best >= 0 and overlaps[best] >= MATCH_IOU:
            free[best] = False
        else:
            false += 1
    return int((~free).sum()), false


@dataclass(frozen=True, slots=True)
class Setting:
    label: str
    run: Callable[[Image.Image], list[np.ndarray]]


def measure(photos: Sequence[GroupPhoto], setting: Setting) -> tuple[int, int, int, float]:
    """(found, total, false detections, median seconds per photo); one warm-up call first."""
    setting.run(photos[0].image)
    found = false = 0
    seconds = []
    for photo in photos:
        start = time.perf_counter()
        boxes = setting.run(photo.image)
        seconds.append(time.perf_counter() - start)
        hits, misses = score(photo.faces, np.asarray(boxes, np.float32).reshape(-1, 4))
        found, false = found + hits, false + misses
    return found, sum(len(p.faces) for p in photos), false, float(np.median(seconds))


def group_photo_table(detector: Detector, crops: list[FaceCrop], args: argparse.Namespace) -> list[str]:
    width, height = args.size
    long_side = max(width, height)
    boxes = lambda faces: [np.asarray(f.bbox) for f in faces]  # noqa: E731
    settings = [
        Setting("old default: shrunk to 640 px", lambda im: boxes(detector.detect(im, max_side=640))),
        Setting(
            f"new default: 640 px + pass for faces down to {args.find_down_to} px",
            lambda im: boxes(detector.detect(im, max_side=640, find_down_to=args.find_down_to)),
        ),
        Setting(f"full photo ({long_side} px)", lambda im: boxes(detector.detect(im, max_side=long_side))),
    ]
    rng = np.random.default_rng(args.seed)
    lines = [
        "| face width | setting | found | recall | other detections | s/photo (median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for face_width in args.face_widths:
        photos = [
            compose(crops[i * args.per_photo : (i + 1) * args.per_photo], (width, height), face_width, rng)
            for i in range(args.photos)
        ]
        for setting in settings:
            found, total, false, seconds = measure(photos, setting)
            lines.append(
                f"| {face_width} px | {setting.label} | {found}/{total} | {100 * found / total:.1f} % "
                f"| {false} | {seconds:.2f} |"
            )
            print(lines[-1], flush=True)
    return lines


def input_size_table(detector: Detector, crops: list[FaceCrop], args: argparse.Namespace) -> list[str]:
    """Recall of faces 8-32 px wide on 640x640 photos searched at their own size (no resizing)."""
    rng = np.random.default_rng(args.seed)
    lines = ["| face width at the network input | found | recall |", "| --- | --- | --- |"]
    per_photo = 32
    for face_width in (8, 10, 12, 14, 16, 20, 24, 32):
        found = total = 0
        for start in range(0, len(crops) - per_photo + 1, per_photo):
            photo = compose(crops[start : start + per_photo], (640, 640), face_width, rng)
            faces = detector.detect(photo.image, max_side=640)
            hits, _ = score(photo.faces, np.asarray([f.bbox for f in faces], np.float32).reshape(-1, 4))
            found, total = found + hits, total + len(photo.faces)
        lines.append(f"| {face_width} px | {found}/{total} | {100 * found / total:.1f} % |")
        print(lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=Path, required=True, help="folders of people (LFW, celeba)")
    parser.add_argument("--models", type=Path, default=None, help="prepared models (FACEBANK_MODEL_DIR)")
    parser.add_argument("--sizes-at-input", action="store_true", help="measure the network's smallest face")
    parser.add_argument("--size", type=int, nargs=2, default=(3200, 2000), metavar=("W", "H"))
    parser.add_argument("--faces-per-photo", dest="per_photo", type=int, default=48)
    parser.add_argument("--photos", type=int, default=3, help="group photos per face width")
    parser.add_argument("--face-widths", type=int, nargs="+", default=[32, 48, 65, 100])
    parser.add_argument("--find-down-to", type=int, default=Settings().detect_find_down_to)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    settings = Settings() if args.models is None else Settings(model_dir=args.models)
    pipeline, _ = build_pipeline(settings)
    detector = pipeline.detector
    wanted = 192 if args.sizes_at_input else args.per_photo * args.photos
    crops = face_crops(args.faces, detector, wanted)
    if len(crops) < wanted:
        raise SystemExit(f"only {len(crops)} faces found in {args.faces}; need {wanted}")
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{len(crops)} faces from {args.faces}"
    )
    table = input_size_table if args.sizes_at_input else group_photo_table
    table(detector, crops, args)


if __name__ == "__main__":
    main()
