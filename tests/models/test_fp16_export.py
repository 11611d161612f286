"""The fp16 export of the real prepared embedder, checked against fp32 on real aligned LFW faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.shared

onnx = pytest.importorskip("onnx", reason="the fp16 export needs the train extra (onnx)")

import onnxruntime as ort  # noqa: E402
from onnx import ModelProto, TensorProto, numpy_helper  # noqa: E402

from models.export.fp16 import (  # noqa: E402
    EMULATED,
    FP16_MIN_COSINE,
    Fp16ParityError,
    aligned_lfw_faces,
    convert_to_fp16,
    emulation_model,
    export_fp16,
    max_abs_activation,
    row_cosines,
)
from tests.conftest import LFW  # noqa: E402


@pytest.fixture(scope="module")
def faces(model_dir: Path) -> np.ndarray:
    return aligned_lfw_faces(model_dir, LFW, 24, embedder="mobilefacenet")


@pytest.fixture(scope="module")
def fp32_onnx(model_dir: Path) -> Path:
    return model_dir / "mobilefacenet.onnx"


def _embed(model: ModelProto, faces: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"input": faces})[0]


def test_export_writes_a_half_size_fp16_graph_with_fp32_io_that_agrees_on_real_faces(
    fp32_onnx: Path, faces: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "mobilefacenet.fp16.onnx"
    report = export_fp16(fp32_onnx, out, faces=faces)

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    io_types = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert io_types == [TensorProto.FLOAT, TensorProto.FLOAT]
    weights = [
        init for init in model.graph.initializer if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    ]
    assert weights and all(init.data_type == TensorProto.FLOAT16 for init in weights)
    assert out.stat().st_size < 0.55 * fp32_onnx.stat().st_size
    assert report.faces == len(faces) == 24
    assert set(report.min_cosine) >= {EMULATED, "CPUExecutionProvider"}
    assert report.worst_cosine > FP16_MIN_COSINE
    # well inside fp16's range: the largest intermediate value of MobileFaceNet on faces is tens, not 65504
    assert 1.0 < report.max_abs_activation < 1000.0
    # the written file gives the measured cosines when run again
    fp32 = _embed(onnx.load(str(fp32_onnx)), faces)
    again = row_cosines(fp32, _embed(model, faces))
    assert again.min() == pytest.approx(report.min_cosine["CPUExecutionProvider"], abs=1e-6)


def test_emulation_rounds_every_half_precision_tensor_even_after_onnxruntime_optimises_the_graph(
    fp32_onnx: Path, faces: np.ndarray
) -> None:
    fp32_model = onnx.load(str(fp32_onnx))
    emulated = _embed(emulation_model(convert_to_fp16(fp32_model)), faces)
    fp32 = _embed(fp32_model, faces)
    # the last tensor before the output cast is fp16 in the fp16 graph, so every emulated value is an fp16
    np.testing.assert_array_equal(emulated, emulated.astype(np.float16).astype(np.float32))
    assert not np.array_equal(fp32, fp32.astype(np.float16).astype(np.float32))
    cosines = row_cosines(fp32, emulated)
    assert FP16_MIN_COSINE < cosines.min() < 1.0 - 1e-7  # close, but really rounded


def test_a_graph_that_overflows_in_fp16_is_refused_and_nothing_is_written(
    fp32_onnx: Path, faces: np.ndarray, tmp_path: Path
) -> None:
    model = onnx.load(str(fp32_onnx))
    # Scale the last convolution (the linear embedding layer) so its outputs exceed fp16's 65504.
    last_conv = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    weights = {init.name: init for init in model.graph.initializer}
    for name in last_conv.input[1:]:
        init = weights[name]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e5, name))
    loud = tmp_path / "loud.onnx"
    onnx.save(model, str(loud))
    assert max_abs_activation(model, faces) > float(np.finfo(np.float16).max)
    out = tmp_path / "loud.fp16.onnx"
    with pytest.raises(Fp16ParityError, match="parity check failed"):
        export_fp16(loud, out, faces=faces)
    assert not out.exists()


def test_a_cosine_floor_above_what_fp16_reaches_fails_the_export(
    fp32_onnx: Path, faces: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "strict.fp16.onnx"
    with pytest.raises(Fp16ParityError, match=EMULATED):
        export_fp16(fp32_onnx, out, faces=faces, min_cosine=1.0 - 1e-9)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_without_faces_the_check_runs_on_noise_and_still_passes(fp32_onnx: Path, tmp_path: Path) -> None:
    report = export_fp16(fp32_onnx, tmp_path / "noise.fp16.onnx")
    assert report.faces == 8 and report.worst_cosine > FP16_MIN_COSINE
