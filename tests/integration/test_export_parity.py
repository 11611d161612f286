"""The exported ONNX graphs against PyTorch on real LFW photos, and the detector's boxes on real faces.

Exports both upstream networks from ../shared/models once per module (the export itself already checks
parity on the photos passed in), then measures: raw detector outputs and the top decoded box at two image
sizes, embeddings of aligned faces at batch 1, 8 and 64, and where boxes and landmarks land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.runtime.manifest import PROJECT_MANIFEST, ModelEntry, load_manifest
from tests._ci import skip_or_fail_in_ci
from tests.conftest import LFW, SHARED_MODELS, require_shared

pytestmark = pytest.mark.shared

pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (the cpu extra)")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from models.export.onnx_export import (  # noqa: E402
    build_detector,
    build_embedder,
    export_detector,
    export_embedder,
)
from service.pipeline.detect import decode_boxes, decode_landmarks, prior_boxes  # noqa: E402

# Two detector photos; eight people (two photos each for four of them) for the embedder.
DETECTOR_PHOTOS = ("Colin_Powell", "Serena_Williams")
DETECTOR_SIZES = ((250, 250), (416, 320))  # (width, height): native LFW and a resized, non-square copy
EMBEDDER_PEOPLE = ("George_W_Bush", "Tony_Blair", "Hugo_Chavez", "Naomi_Watts")


@dataclass(frozen=True)
class Exported:
    detector_entry: ModelEntry
    embedder_entry: ModelEntry
    detector_torch: torch.nn.Module
    embedder_torch: torch.nn.Module
    detector_ort: ort.InferenceSession
    embedder_ort: ort.InferenceSession
    faces: np.ndarray  # (8, 3, 112, 112) preprocessed aligned faces: person i's photos at rows 2i, 2i + 1
    detector_path: Path
    detector_photos: list[np.ndarray]


def _photo(name: str, number: int = 1) -> Image.Image:
    return Image.open(LFW / name / f"{name}_{number:04d}.jpg").convert("RGB")


def _preprocess(pixels: np.ndarray, entry: ModelEntry) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (1, 3, H, W) float32 as the manifest entry says."""
    pre = entry.preprocess
    array: np.ndarray = pixels.astype(np.float32)
    if pre.channel_order == "BGR":
        array = array[..., ::-1]
    array = (array - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def _detector_input(name: str, size: tuple[int, int], entry: ModelEntry) -> np.ndarray:
    image = _photo(name)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return _preprocess(np.asarray(image), entry)


def _best_face(
    outputs: list[np.ndarray], entry: ModelEntry, height: int, width: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Score, box (x1, y1, x2, y2) and landmarks (5, 2) of the top-scoring prior, in input pixels."""
    spec = entry.detector
    assert spec is not None
    loc, conf, landms = (o[0] for o in outputs)
    best = int(conf[:, 1].argmax())
    priors = prior_boxes(height, width, min_sizes=spec.min_sizes, steps=spec.steps)[best : best + 1]
    box = decode_boxes(loc[best : best + 1], priors, spec.variances)[0] * [width, height, width, height]
    points = decode_landmarks(landms[best : best + 1], priors, spec.variances)[0].reshape(5, 2)
    return float(conf[best, 1]), box, points * [width, height]


def _aligned_faces(entry_det: ModelEntry, entry_emb: ModelEntry, session: ort.InferenceSession) -> np.ndarray:
    """Faces aligned on the detector's landmarks with the service's aligner (a centre crop without it)."""
    spec = entry_emb.embedder
    assert spec is not None
    align: Callable[..., np.ndarray] | None
    try:
        from service.pipeline.align import align_face as align
    except ImportError:  # pragma: no cover - parity holds on any face crop; alignment only makes it realistic
        align = None
    rows = []
    for name in EMBEDDER_PEOPLE:
        for number in (1, 2):
            image = _photo(name, number)
            if align is not None:
                outputs = session.run(None, {"input": _preprocess(np.asarray(image), entry_det)})
                _, _, points = _best_face(outputs, entry_det, image.height, image.width)
                crop = align(image, points, np.asarray(spec.template), spec.input_size)
            else:
                box = (69, 69, 181, 181)
                crop = np.asarray(image.crop(box))
            rows.append(_preprocess(crop, entry_emb)[0])
    return np.stack(rows)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    require_shared()
    manifest = load_manifest(PROJECT_MANIFEST)
    det, emb = manifest.detectors()[0], manifest.embedders()[0]
    out = tmp_path_factory.mktemp("onnx")
    det_path, emb_path = out / det.onnx_file, out / emb.onnx_file
    photos = [
        _detector_input(name, size, det) for name, size in zip(DETECTOR_PHOTOS, DETECTOR_SIZES, strict=True)
    ]
    export_detector(SHARED_MODELS / det.source_file, det_path, sample_inputs=photos)
    det_session = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    faces = _aligned_faces(det, emb, det_session)
    export_embedder(SHARED_MODELS / emb.source_file, emb_path, sample_inputs=[faces[:1], faces])
    return Exported(
        detector_entry=det,
        embedder_entry=emb,
        detector_torch=build_detector(SHARED_MODELS / det.source_file),
        embedder_torch=build_embedder(SHARED_MODELS / emb.source_file),
        detector_ort=det_session,
        embedder_ort=ort.InferenceSession(str(emb_path), providers=["CPUExecutionProvider"]),
        faces=faces,
        detector_path=det_path,
        detector_photos=photos,
    )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("name", DETECTOR_PHOTOS)
@pytest.mark.parametrize("size", DETECTOR_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_detector_outputs_match_torch_on_real_photos(
    exported: Exported, name: str, size: tuple[int, int]
) -> None:
    x = _detector_input(name, size, exported.detector_entry)
    with torch.no_grad():
        want = [t.numpy() for t in exported.detector_torch(torch.from_numpy(x))]
    got = exported.detector_ort.run(["loc", "conf", "landms"], {"input": x})
    for label, w, g in zip(("loc", "conf", "landms"), want, got, strict=True):
        assert g.shape == w.shape, label
        assert np.abs(w - g).max() < 1e-3, label
    height, width = x.shape[2:]
    score_w, box_w, _ = _best_face(want, exported.detector_entry, height, width)
    score_g, box_g, _ = _best_face(got, exported.detector_entry, height, width)
    assert abs(score_w - score_g) < 1e-4
    assert np.abs(box_w - box_g).max() < 0.5


def test_detector_runs_a_batch_of_two(exported: Exported) -> None:
    det = exported.detector_entry
    x = np.concatenate([_detector_input(name, (250, 250), det) for name in DETECTOR_PHOTOS])
    batched = exported.detector_ort.run(["conf"], {"input": x})[0]
    single = exported.detector_ort.run(["conf"], {"input": x[1:]})[0]
    assert batched.shape[0] == 2
    assert np.abs(batched[1] - single[0]).max() < 1e-4


@pytest.mark.parametrize("name", DETECTOR_PHOTOS)
def test_best_detection_lands_on_the_face_with_landmarks_in_order(exported: Exported, name: str) -> None:
    x = _detector_input(name, (250, 250), exported.detector_entry)
    outputs = exported.detector_ort.run(["loc", "conf", "landms"], {"input": x})
    score, box, points = _best_face(outputs, exported.detector_entry, 250, 250)
    assert score > 0.9
    centre = (box[:2] + box[2:]) / 2
    assert np.abs(centre - 125).max() < 25, box  # LFW deep-funneled faces sit in the middle
    assert 60 < box[2] - box[0] < 160, box
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < nose[0] < right_eye[0]  # "left" is the image's left
    assert left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert np.all((points > box[:2]) & (points < box[2:]))


def test_embedder_matches_torch_on_aligned_faces_at_batch_1_and_8(exported: Exported) -> None:
    faces = exported.faces
    with torch.no_grad():
        want = exported.embedder_torch(torch.from_numpy(faces)).numpy()
    batch8 = exported.embedder_ort.run(["embedding"], {"input": faces})[0]
    batch1 = np.concatenate([exported.embedder_ort.run(["embedding"], {"input": f[None]})[0] for f in faces])
    assert batch8.shape == batch1.shape == (8, 128)
    assert _cosines(want, batch8).min() > 0.9999
    assert _cosines(want, batch1).min() > 0.9999


def test_embedder_batch_axis_is_truly_dynamic(exported: Exported) -> None:
    faces = np.concatenate([exported.faces] * 8)  # 64
    for batch in (1, 7, 64):
        out = exported.embedder_ort.run(["embedding"], {"input": faces[:batch]})[0]
        assert out.shape == (batch, 128)
        reference = exported.embedder_ort.run(["embedding"], {"input": faces[batch - 1 : batch]})[0]
        assert _cosines(out[-1:], reference)[0] > 0.9999


def test_embedder_agrees_with_the_upstream_onnx_at_batch_1(exported: Exported) -> None:
    upstream_path = SHARED_MODELS / "mobilefacenet.onnx"
    if not upstream_path.is_file():
        skip_or_fail_in_ci(f"{upstream_path} is absent (../shared)")
    upstream = ort.InferenceSession(str(upstream_path), providers=["CPUExecutionProvider"])
    name = upstream.get_inputs()[0].name
    theirs = np.concatenate([upstream.run(None, {name: f[None]})[0] for f in exported.faces])
    ours = exported.embedder_ort.run(["embedding"], {"input": exported.faces})[0]
    assert _cosines(theirs, ours).min() > 0.9999


def test_same_person_embeddings_are_closer_than_different_people(exported: Exported) -> None:
    emb = exported.embedder_ort.run(["embedding"], {"input": exported.faces})[0]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    person = np.repeat(np.arange(len(EMBEDDER_PEOPLE)), 2)
    same = sims[(person[:, None] == person[None]) & ~np.eye(len(person), dtype=bool)]
    different = sims[person[:, None] != person[None]]
    assert same.mean() > different.mean() + 0.2


def test_exports_are_deterministic(exported: Exported, tmp_path: Path) -> None:
    """Exporting twice gives byte-identical files, so the prepared manifest's sha256 is reproducible."""
    from service.runtime.manifest import sha256_file

    again = tmp_path / "again.onnx"
    source = SHARED_MODELS / exported.detector_entry.source_file
    export_detector(source, again, sample_inputs=exported.detector_photos)
    assert sha256_file(again) == sha256_file(exported.detector_path)
