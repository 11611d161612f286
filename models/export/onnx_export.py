"""Export the detector and the embedder to ONNX, then check the graph against PyTorch in onnxruntime.

Both exports load the upstream state dict strictly, switch to eval mode, write the graph to a temporary
file, run the parity check on sample inputs (CPU execution provider, default graph optimisations, as the
service runs it) and only then move the file into place, so a graph that fails the check never lands at
``out_path``.

Usage::

    from models.export.onnx_export import export_detector, export_embedder

    export_detector("retinaface-mobilenet0.25.pth", "retinaface-mnet025.onnx")
    report = export_embedder("mobilefacenet.pt", "mobilefacenet.onnx")
    print(report.summary())
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.nets.mobilefacenet import EMBEDDING_DIM, INPUT_SIZE, MobileFaceNet
from models.nets.retinaface import RetinaFace

DEFAULT_OPSET = 17
INPUT_NAME = "input"
DETECTOR_OUTPUTS = ("loc", "conf", "landms")
EMBEDDER_OUTPUT = "embedding"

# Batch sizes the exported embedder is also run at, on the sample rows repeated: onnxruntime only, compared
# with the PyTorch outputs of the distinct rows (rows are independent in eval mode), so batch 64 costs no
# 64-image PyTorch pass.
EMBEDDER_TILED_BATCHES = (64,)

# Parity limits. Observed on real photos: ~1e-5 on every detector output, cosine > 0.999999 for embeddings.
DETECTOR_ATOL = 1e-3
EMBEDDER_MIN_COSINE = 0.9999


class ExportParityError(RuntimeError):
    """The exported graph's outputs differ from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """What the parity check measured: per-output max |torch - onnxruntime| and, for embedders, min cosine."""

    model: str
    input_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: Mapping[str, float] = field(default_factory=dict)
    min_cosine: float | None = None

    def summary(self) -> str:
        diffs = ", ".join(f"{name} {value:.2e}" for name, value in self.max_abs_diff.items())
        cosine = "" if self.min_cosine is None else f", min cosine {self.min_cosine:.7f}"
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        return f"{self.model}: max |torch - ort| {diffs}{cosine} on inputs {shapes}"


class WeightFileError(ValueError):
    """A weight file does not hold the network it should; the message names the file and what was expected."""


def read_weights(path: str | os.PathLike[str], expected: str) -> Mapping[str, object]:
    """The mapping a ``.pt``/``.pth`` file holds (tensors, and the tuples and dtypes of quantized layers),
    read without running code from it; :class:`WeightFileError` when it is no readable state dict."""
    try:
        with warnings.catch_warnings():
            # Why: torch warns about its own deprecated storage and quantized-tensor constructors while
            # deserialising older files (RetinaFace's, EdgeFace's int8 layers); nothing a user can act on.
            warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightFileError(
            f"{path}: not a readable PyTorch state dict ({reason}); expected {expected}"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise WeightFileError(f"{path}: holds a {type(loaded).__name__}, expected {expected}")
    return loaded


def load_strictly(
    net: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], expected: str
) -> None:
    """``net.load_state_dict(state, strict=True)``, with a :class:`WeightFileError` that lists a few missing
    and unexpected keys and wrong shapes instead of torch's wall of text."""
    wanted = net.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        details = "; ".join(
            f"{label} {len(keys)} keys, e.g. {', '.join(keys[:3])}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise WeightFileError(f"{path}: not {expected}: {details}")
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(wanted[key].shape)})"
        for key in wanted
        if state[key].shape != wanted[key].shape
    ]
    if wrong:
        raise WeightFileError(f"{path}: not {expected}: shapes differ: {'; '.join(wrong[:3])}")
    net.load_state_dict(state, strict=True)


def load_state_dict(path: str | os.PathLike[str], expected: str = "a state dict") -> dict[str, torch.Tensor]:
    """Read an upstream state dict onto the CPU (tensors only), unwrapping ``state_dict`` and ``module.``."""
    loaded = read_weights(path, expected)
    if "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    tensors = {str(key).removeprefix("module."): value for key, value in loaded.items()}
    odd = [key for key, value in tensors.items() if not isinstance(value, torch.Tensor) or value.is_quantized]
    if odd:
        raise WeightFileError(f"{path}: {odd[0]} is not a plain tensor; expected {expected}")
    return tensors  # type: ignore[return-value]


def build_detector(state_dict_path: str | os.PathLike[str]) -> RetinaFace:
    """RetinaFace with the weights loaded strictly, in eval mode."""
    net, expected = RetinaFace(), "a RetinaFace-MobileNet-0.25 state dict"
    load_strictly(net, load_state_dict(state_dict_path, expected), state_dict_path, expected)
    return net.eval()


def build_embedder(state_dict_path: str | os.PathLike[str]) -> MobileFaceNet:
    """MobileFaceNet with the weights loaded strictly, in eval mode."""
    net, expected = MobileFaceNet(), "a MobileFaceNet state dict"
    load_strictly(net, load_state_dict(state_dict_path, expected), state_dict_path, expected)
    return net.eval()


def sample_detector_inputs() -> list[np.ndarray]:
    """Deterministic detector inputs in the preprocessed range: two batch sizes, two odd image sizes."""
    rng = np.random.default_rng(0)
    return [
        _smooth_noise(rng, (1, 3, 240, 320), scale=128.0),
        _smooth_noise(rng, (2, 3, 199, 157), scale=128.0),
    ]


def sample_embedder_inputs(size: int = INPUT_SIZE) -> list[np.ndarray]:
    """Deterministic embedder inputs in the normalised range at batch 1 and 7 (64 is added by tiling)."""
    rng = np.random.default_rng(0)
    return [_smooth_noise(rng, (n, 3, size, size), scale=2.0) for n in (1, 7)]


def export_detector(
    state_dict_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    *,
    sample_inputs: Sequence[np.ndarray] | None = None,
    atol: float = DETECTOR_ATOL,
) -> ParityReport:
    """Export RetinaFace with dynamic batch, height and width; input ``input``, outputs loc, conf, landms.

    ``sample_inputs`` are preprocessed ``(N, 3, H, W)`` float32 arrays (BGR, mean subtracted); by default
    :func:`sample_detector_inputs`. Raises :class:`ExportParityError` if any output differs by more than
    ``atol``.
    """
    net = build_detector(state_dict_path)
    inputs = list(sample_inputs) if sample_inputs is not None else sample_detector_inputs()
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 1: "priors"} for name in DETECTOR_OUTPUTS})
    return _export_checked(
        net,
        Path(out_path),
        opset=opset,
        output_names=DETECTOR_OUTPUTS,
        dynamic_axes=axes,
        inputs=inputs,
        model="detector",
        atol=atol,
        min_cosine=None,
        fixed_dims={"loc": {2: 4}, "conf": {2: 2}, "landms": {2: 10}},
    )


def export_embedder(
    state_dict_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    *,
    sample_inputs: Sequence[np.ndarray] | None = None,
    min_cosine: float = EMBEDDER_MIN_COSINE,
) -> ParityReport:
    """Export MobileFaceNet with a dynamic batch axis; input ``input`` (N, 3, 112, 112), output ``embedding``.

    ``sample_inputs`` are normalised ``(N, 3, 112, 112)`` float32 arrays; by default
    :func:`sample_embedder_inputs` (batch 1 and 7). Their rows are also run through onnxruntime as one batch
    of 64 (:data:`EMBEDDER_TILED_BATCHES`). Raises :class:`ExportParityError` if any row's cosine between the
    PyTorch and onnxruntime embeddings is at most ``min_cosine``.
    """
    return export_embedder_net(
        build_embedder(state_dict_path), out_path, opset, sample_inputs=sample_inputs, min_cosine=min_cosine
    )


def export_embedder_net(
    net: nn.Module,
    out_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    *,
    dim: int = EMBEDDING_DIM,
    input_size: int = INPUT_SIZE,
    sample_inputs: Sequence[np.ndarray] | None = None,
    min_cosine: float = EMBEDDER_MIN_COSINE,
) -> ParityReport:
    """:func:`export_embedder` for any embedding network in eval mode with output ``(N, dim)``."""
    inputs = list(sample_inputs) if sample_inputs is not None else sample_embedder_inputs(input_size)
    axes = {INPUT_NAME: {0: "batch"}, EMBEDDER_OUTPUT: {0: "batch"}}
    return _export_checked(
        net,
        Path(out_path),
        opset=opset,
        output_names=(EMBEDDER_OUTPUT,),
        dynamic_axes=axes,
        inputs=inputs,
        model="embedder",
        atol=None,
        min_cosine=min_cosine,
        fixed_dims={EMBEDDER_OUTPUT: {1: dim}},
        tiled_batches=EMBEDDER_TILED_BATCHES,
    )


def _export_checked(
    net: nn.Module,
    out_path: Path,
    *,
    opset: int,
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    inputs: list[np.ndarray],
    model: str,
    atol: float | None,
    min_cosine: float | None,
    fixed_dims: dict[str, dict[int, int]],
    tiled_batches: Sequence[int] = (),
) -> ParityReport:
    if not inputs:
        raise ValueError("the parity check needs at least one sample input")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        example = torch.from_numpy(np.ascontiguousarray(inputs[0], dtype=np.float32))
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter is deprecated in favour of dynamo, which needs onnxscript
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                net,
                (example,),
                str(tmp_path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        _pin_output_dims(tmp_path, fixed_dims)
        onnx.checker.check_model(str(tmp_path), full_check=True)
        _check_symbolic_axes(tmp_path, dynamic_axes)
        report = _parity(net, tmp_path, output_names, inputs, model=model, tiled_batches=tiled_batches)
        _enforce(report, atol=atol, min_cosine=min_cosine)
        os.replace(tmp_path, out_path)
        return report
    finally:
        tmp_path.unlink(missing_ok=True)


def _pin_output_dims(path: Path, fixed_dims: dict[str, dict[int, int]]) -> None:
    """Write the static sizes the exporter's shape inference loses (e.g. loc's 4) into the graph signature."""
    model = onnx.load(str(path))
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        for axis, size in fixed_dims.get(value.name, {}).items():
            dims[axis].Clear()
            dims[axis].dim_value = size
    onnx.save(model, str(path))


def _check_symbolic_axes(path: Path, dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Every axis declared dynamic must be symbolic (``dim_param``) in the saved graph's signature."""
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis in dynamic_axes.get(value.name, {}):
            if not dims[axis].dim_param:
                raise ExportParityError(f"{path.name}: axis {axis} of {value.name!r} is fixed in the graph")


def _parity(
    net: nn.Module,
    path: Path,
    output_names: Sequence[str],
    inputs: list[np.ndarray],
    *,
    model: str,
    tiled_batches: Sequence[int] = (),
) -> ParityReport:
    """Run every input through both; with ``tiled_batches``, also batches of those sizes made by repeating
    the rows of all inputs (which must then share one shape), against the repeated PyTorch outputs."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_diff = dict.fromkeys(output_names, 0.0)
    min_cos: float | None = None
    cases: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for array in inputs:
        array = np.ascontiguousarray(array, dtype=np.float32)
        with torch.no_grad():
            cases.append((array, _as_numpy(net(torch.from_numpy(array)))))
    if tiled_batches:
        rows = np.concatenate([array for array, _ in cases])
        rows_out = [np.concatenate(outs) for outs in zip(*(expected for _, expected in cases), strict=True)]
        for size in tiled_batches:
            index = np.arange(size) % len(rows)
            cases.append((rows[index], [out[index] for out in rows_out]))
    for array, expected_np in cases:
        actual = session.run(list(output_names), {INPUT_NAME: array})
        for name, want, got in zip(output_names, expected_np, actual, strict=True):
            if want.shape != got.shape:
                raise ExportParityError(
                    f"{model}: {name} has shape {got.shape} in onnxruntime, {want.shape} in torch "
                    f"(input {array.shape})"
                )
            max_diff[name] = max(max_diff[name], float(np.abs(want - got).max()))
        if model == "embedder":
            cos = _row_cosines(expected_np[0], actual[0])
            min_cos = float(cos.min()) if min_cos is None else min(min_cos, float(cos.min()))
    shapes = tuple(tuple(int(d) for d in a.shape) for a, _ in cases)
    return ParityReport(model=model, input_shapes=shapes, max_abs_diff=max_diff, min_cosine=min_cos)


def _as_numpy(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


def _enforce(report: ParityReport, *, atol: float | None, min_cosine: float | None) -> None:
    if atol is not None:
        worst = {name: diff for name, diff in report.max_abs_diff.items() if not diff <= atol}
        if worst:
            raise ExportParityError(f"parity check failed (atol {atol:g}): {report.summary()}")
    if min_cosine is not None and not (report.min_cosine is not None and report.min_cosine > min_cosine):
        raise ExportParityError(f"parity check failed (min cosine {min_cosine}): {report.summary()}")


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], *, scale: float) -> np.ndarray:
    """Noise upsampled from a coarse grid: image-like low frequencies instead of per-pixel static."""
    n, c, h, w = shape
    coarse = rng.uniform(-1.0, 1.0, size=(n, c, h // 8 + 2, w // 8 + 2))
    rows = np.linspace(0, coarse.shape[2] - 1, h).round().astype(int)
    cols = np.linspace(0, coarse.shape[3] - 1, w).round().astype(int)
    fine = coarse[:, :, rows][:, :, :, cols] + 0.1 * rng.standard_normal(shape)
    return (scale * fine).astype(np.float32)


__all__ = [
    "DETECTOR_OUTPUTS",
    "EMBEDDER_OUTPUT",
    "EMBEDDER_TILED_BATCHES",
    "INPUT_NAME",
    "ExportParityError",
    "ParityReport",
    "WeightFileError",
    "build_detector",
    "build_embedder",
    "export_detector",
    "export_embedder",
    "export_embedder_net",
    "load_state_dict",
    "load_strictly",
    "read_weights",
]
