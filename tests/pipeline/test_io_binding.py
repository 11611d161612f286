"""IO binding (the CUDA path) checked on the CPU provider: the same helper must give session.run's outputs.

onnxruntime supports IO binding on the CPU provider too, so the code the service runs on CUDA — inputs bound
from host memory, outputs written into the caller's arrays — is exercised here with the real prepared models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.pipeline.detect import Detector
from service.pipeline.embed import Embedder
from service.runtime.manifest import load_manifest
from service.runtime.models import detector_config, embedder_config
from service.runtime.sessions import IoBoundSession, create_session, runner_for
from service.runtime.stages import BindingSession, EmbedderConfig
from tests.conftest import LFW

pytestmark = pytest.mark.shared


EmbedderSession = tuple[ort.InferenceSession, EmbedderConfig]


@pytest.fixture(scope="module")
def embedder_session(model_dir: Path) -> EmbedderSession:
    entry = load_manifest(model_dir / "manifest.toml").get("mobilefacenet")
    return create_session(model_dir / entry.onnx_file, device="cpu", threads=1), embedder_config(entry)


def _normalised_faces(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, 112, 112)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_run_into_writes_exactly_what_session_run_returns(
    embedder_session: EmbedderSession, batch: int
) -> None:
    session, _ = embedder_session
    faces = _normalised_faces(batch, seed=batch)
    (expected,) = session.run(["embedding"], {"input": faces})
    out = np.full((batch, 128), np.nan, np.float32)
    IoBoundSession(session).run_into({"input": faces}, {"embedding": out})
    np.testing.assert_array_equal(out, expected)


def test_one_bound_session_follows_a_batch_size_that_changes_between_calls(
    embedder_session: EmbedderSession,
) -> None:
    session, _ = embedder_session
    bound = IoBoundSession(session)
    for call, batch in enumerate([64, 1, 7, 64, 3, 1]):
        faces = _normalised_faces(batch, seed=100 + call)
        (expected,) = session.run(["embedding"], {"input": faces})
        out = np.empty((batch, 128), np.float32)
        bound.run_into({"input": faces}, {"embedding": out})
        np.testing.assert_array_equal(out, expected, err_msg=f"call {call}, batch {batch}")
        (via_run,) = bound.run(["embedding"], {"input": faces})
        np.testing.assert_array_equal(via_run, expected, err_msg=f"run(), call {call}, batch {batch}")


def test_embedder_through_binding_matches_plain_run_across_chunks(embedder_session: EmbedderSession) -> None:
    session, config = embedder_session
    crops = np.random.default_rng(7).integers(0, 256, (135, 112, 112, 3), dtype=np.uint8)
    bound = IoBoundSession(session)
    assert isinstance(bound, BindingSession)
    # 135 = 64 + 64 + 7: full chunks and a remainder, each written into its rows of one result array
    np.testing.assert_array_equal(
        Embedder(bound, config).embed(crops), Embedder(session, config).embed(crops)
    )


def test_run_into_refuses_an_output_that_is_not_contiguous(embedder_session: EmbedderSession) -> None:
    session, _ = embedder_session
    strided = np.empty((4, 256), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        IoBoundSession(session).run_into({"input": _normalised_faces(4, 0)}, {"embedding": strided})


def test_detector_through_binding_finds_the_same_faces(model_dir: Path) -> None:
    entry = load_manifest(model_dir / "manifest.toml").get("retinaface-mnet025")
    session = create_session(model_dir / entry.onnx_file, device="cpu", threads=1)
    config = detector_config(entry)
    bound = IoBoundSession(session)
    for size in [(250, 250), (320, 199)]:  # the output shapes follow the input size
        x = np.random.default_rng(size[1]).standard_normal((1, 3, size[1], size[0])).astype(np.float32)
        for got, want in zip(bound.run(None, {"input": x}), session.run(None, {"input": x}), strict=True):
            np.testing.assert_array_equal(got, want)
    photo = Image.open(LFW / "Colin_Powell" / "Colin_Powell_0001.jpg").convert("RGB")
    plain, through_binding = Detector(session, config).detect(photo), Detector(bound, config).detect(photo)
    assert len(plain) == len(through_binding) >= 1
    for a, b in zip(plain, through_binding, strict=True):
        np.testing.assert_array_equal(a.bbox, b.bbox)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_the_cpu_provider_keeps_plain_session_run(embedder_session: EmbedderSession) -> None:
    session, _ = embedder_session
    assert runner_for(session) is session
