"""RetinaFace detection: resize, run the network, decode prior boxes, non-maximum suppression."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

from service.runtime.stages import DetectorConfig, OnnxSession
from service.schemas import DetectedFace

# Images per detector call within one shape group: at 640 px a call's input is 8 x 3 x 640 x 640 floats
# (~40 MB) and its activations many times that, where an uncapped group of 256 would need gigabytes.
DETECT_BATCH = 8


@lru_cache(maxsize=64)
def prior_boxes(
    height: int, width: int, *, min_sizes: tuple[tuple[int, ...], ...], steps: tuple[int, ...]
) -> np.ndarray:
    """Anchors (P, 4) as normalised cx, cy, w, h; level by level, row-major, anchors innermost."""
    levels = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid(
            (np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width, indexing="ij"
        )
        per_size = [
            np.stack([cx, cy, np.full_like(cx, size / width), np.full_like(cy, size / height)], axis=-1)
            for size in sizes
        ]
        levels.append(np.stack(per_size, axis=2).reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: tuple[float, float]) -> np.ndarray:
    """Regression offsets (P, 4) → normalised x1, y1, x2, y2."""
    centres = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


def decode_landmarks(landms: np.ndarray, priors: np.ndarray, variances: tuple[float, float]) -> np.ndarray:
    """Offsets (P, 10) → normalised x, y of 5 points, interleaved (P, 10)."""
    points = landms.reshape(-1, 5, 2)
    decoded = priors[:, None, :2] + points * variances[0] * priors[:, None, 2:]
    return decoded.reshape(-1, 10)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def prior_mask(
    height: int,
    width: int,
    real_height: int,
    real_width: int,
    *,
    steps: tuple[int, ...],
    anchors: tuple[int, ...],
) -> np.ndarray:
    """Which priors of a padded (height, width) input an unpadded (real_height, real_width) input also has.

    Same order as `prior_boxes`: level by level, row-major, `anchors[level]` anchors innermost.
    """
    levels = []
    for step, count in zip(steps, anchors, strict=True):
        rows = np.arange(math.ceil(height / step)) < math.ceil(real_height / step)
        cols = np.arange(math.ceil(width / step)) < math.ceil(real_width / step)
        levels.append(np.repeat((rows[:, None] & cols[None, :]).reshape(-1), count))
    return np.concatenate(levels)


# Longest side of the second pass: bounds what one request can make the detector do (a 40 MP photo at full
# size would be ~10x the work and memory of this).
FINE_PASS_MAX_SIDE = 4096


def fine_pass_scale(size: tuple[int, int], max_side: int, find_down_to: float, smallest_face: float) -> float:
    """Scale of the second pass that finds faces of `find_down_to` photo pixels in a photo of `size`, or 0
    when the first pass (the photo shrunk to fit `max_side`) already shows them at `smallest_face` or more.

    The second pass never enlarges the photo (below `smallest_face` photo pixels a face is out of reach) and
    never exceeds FINE_PASS_MAX_SIDE (in larger photos the smallest face found grows accordingly).
    """
    if find_down_to <= 0:
        return 0.0
    first = min(1.0, max_side / max(size))
    second = min(1.0, smallest_face / find_down_to, FINE_PASS_MAX_SIDE / max(size))
    return second if second > first else 0.0


def _per_image(value: float | Sequence[float], count: int) -> list[float]:
    values = [float(value)] * count if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{len(values)} per-image values for {count} images")
    return values


class Detector:
    """Runs a RetinaFace ONNX graph (inputs `input`; outputs loc, conf, landms)."""

    def __init__(self, session: OnnxSession, config: DetectorConfig) -> None:
        self._session = session
        self.config = config

    def _prepare(self, image: Image.Image, max_side: int) -> tuple[np.ndarray, float]:
        """(3, H, W) normalised tensor of the image shrunk to fit max_side, and the scale applied."""
        scale = min(1.0, max_side / max(image.width, image.height))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        pixels: np.ndarray = np.asarray(image, dtype=np.float32)
        if self.config.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.config.mean, np.float32)) / np.asarray(self.config.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), scale

    def detect(
        self,
        image: Image.Image,
        *,
        max_side: int | None = None,
        score_threshold: float | None = None,
        min_face_size: float = 0.0,
        find_down_to: float = 0.0,
    ) -> list[DetectedFace]:
        """Faces in `image`, best score first, in the image's pixel coordinates (see `detect_many`)."""
        (faces,) = self.detect_many(
            [image],
            max_side=max_side,
            score_threshold=score_threshold,
            min_face_size=min_face_size,
            find_down_to=find_down_to,
        )
        return faces

    def detect_many(
        self,
        images: Sequence[Image.Image],
        *,
        max_side: int | None = None,
        score_threshold: float | None = None,
        min_face_size: float | Sequence[float] = 0.0,
        pad_to_common_shape: bool = False,
        find_down_to: float | Sequence[float] = 0.0,
    ) -> list[list[DetectedFace]]:
        """Faces of each image, with one network call per distinct input shape (per DETECT_BATCH images).

        Every image is searched shrunk to fit `max_side`. `find_down_to` (per image, or one value for all;
        photo pixels, 0 off) asks for faces that small too: where the shrunk photo would make them smaller
        than the network's `smallest_face`, a second pass runs on the photo at the scale that does not (at
        most its own size) and its faces are merged with the first pass's by NMS (`fine_pass_scale`).
        `min_face_size` drops faces with a shorter box side.

        Images of one shape share calls and get exactly what `detect` gives each alone. With
        `pad_to_common_shape`, every image is padded bottom/right to the batch's largest height and width
        with zeros (the mean pixel once normalised) for a single call, and priors in the padding are
        ignored; the network then sees content beyond each image's edge where it saw zero padding, which
        moved LFW faces by up to ~9 px (tests/pipeline/test_detect_batch.py), so it is off by default.
        """
        if not images:
            return []
        limit = max_side or self.config.max_side
        threshold = self.config.score_threshold if score_threshold is None else score_threshold
        results = self._run([(image, limit) for image in images], threshold, pad_to_common_shape)
        targets = _per_image(find_down_to, len(images))
        fine = [
            (row, scale)
            for row, image in enumerate(images)
            if (scale := fine_pass_scale(image.size, limit, targets[row], self.config.smallest_face))
        ]
        if fine:
            jobs = [(images[row], math.ceil(max(images[row].size) * scale)) for row, scale in fine]
            for (row, _), faces in zip(fine, self._run(jobs, threshold, False), strict=True):
                results[row] = self._merge(results[row] + faces)
        smallest = _per_image(min_face_size, len(images))
        return [
            [f for f in faces if min(f.width, f.height) >= smallest[row]] for row, faces in enumerate(results)
        ]

    def _run(
        self, jobs: Sequence[tuple[Image.Image, int]], threshold: float, pad_to_common_shape: bool
    ) -> list[list[DetectedFace]]:
        """All faces of each (image, max side) job, best score first: one network call per shape group."""
        prepared = [self._prepare(image, side) for image, side in jobs]
        groups: dict[tuple[int, int], list[int]] = {}
        for row, (tensor, _) in enumerate(prepared):
            shape = (tensor.shape[1], tensor.shape[2])
            groups.setdefault(shape, []).append(row)
        if pad_to_common_shape and len(groups) > 1:
            groups = {tuple(max(dims) for dims in zip(*groups, strict=True)): list(range(len(jobs)))}
        results: list[list[DetectedFace]] = [[] for _ in jobs]
        # Larger inputs (the second pass's, up to FINE_PASS_MAX_SIDE) go fewer to a call: at most the pixels
        # of DETECT_BATCH 640 x 640 images, or a single image.
        per_call = {shape: max(1, DETECT_BATCH * 640 * 640 // (shape[0] * shape[1])) for shape in groups}
        chunks = [
            (shape, group[start : start + min(DETECT_BATCH, per_call[shape])])
            for shape, group in groups.items()
            for start in range(0, len(group), min(DETECT_BATCH, per_call[shape]))
        ]
        for (height, width), rows in chunks:
            batch = np.zeros((len(rows), 3, height, width), np.float32)
            for slot, row in enumerate(rows):
                tensor = prepared[row][0]
                batch[slot, :, : tensor.shape[1], : tensor.shape[2]] = tensor
            loc, conf, landms = self._session.run(["loc", "conf", "landms"], {"input": batch})
            for slot, row in enumerate(rows):
                tensor, scale = prepared[row]
                results[row] = self._faces(
                    loc[slot],
                    conf[slot, :, 1],
                    landms[slot],
                    padded=(height, width),
                    real=(tensor.shape[1], tensor.shape[2]),
                    scale=scale,
                    image=jobs[row][0],
                    threshold=threshold,
                )
        return results

    def _merge(self, faces: list[DetectedFace]) -> list[DetectedFace]:
        """One face per place from two passes over the same photo: NMS in photo pixels, best score first."""
        if not faces:
            return faces
        boxes = np.asarray([f.bbox for f in faces], np.float32)
        scores = np.asarray([f.score for f in faces], np.float32)
        return [faces[i] for i in nms(boxes, scores, self.config.nms_threshold)]

    def _faces(
        self,
        loc: np.ndarray,
        scores: np.ndarray,
        landms: np.ndarray,
        *,
        padded: tuple[int, int],
        real: tuple[int, int],
        scale: float,
        image: Image.Image,
        threshold: float,
    ) -> list[DetectedFace]:
        """Decode one image's network outputs (over a possibly padded input) into faces."""
        cfg = self.config
        height, width = padded
        keep = scores >= threshold
        if padded != real:
            anchors = tuple(len(sizes) for sizes in cfg.min_sizes)
            keep &= prior_mask(height, width, *real, steps=cfg.steps, anchors=anchors)
        candidates = np.flatnonzero(keep)
        if candidates.size == 0:
            return []
        priors = prior_boxes(height, width, min_sizes=cfg.min_sizes, steps=cfg.steps)[candidates]
        to_pixels = np.array([width, height], np.float32) / scale
        boxes = decode_boxes(loc[candidates], priors, cfg.variances) * np.tile(to_pixels, 2)
        points = decode_landmarks(landms[candidates], priors, cfg.variances) * np.tile(to_pixels, 5)
        kept = nms(boxes, scores[candidates], cfg.nms_threshold)
        faces = []
        for i in kept:
            box = np.clip(boxes[i], 0, [image.width, image.height, image.width, image.height])
            faces.append(
                DetectedFace(
                    bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(scores[candidates[i]]),
                    landmarks=points[i].reshape(5, 2).astype(np.float32),
                )
            )
        return faces
