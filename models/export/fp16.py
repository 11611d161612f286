"""Half-precision export of an fp32 embedder ONNX graph, checked against the fp32 graph on aligned faces.

The fp16 graph keeps fp32 inputs and outputs (``keep_io_types``), so the service feeds it the same
normalised crops and L2-normalises its output in fp32 as before (the graph itself has no normalisation: the
last nodes are MobileFaceNet's linear 1x1 ``conv3``, with its BatchNorm folded in, and a Flatten).

What the check compares, per face, is the cosine between the fp32 graph's embedding and:

- ``emulated fp16``: an fp32 graph derived from the fp16 one in which every tensor the fp16 graph holds in
  half precision (weights, the input after its cast, every intermediate output) is rounded to half
  precision, while each node computes in fp32 — fp16 storage with fp32 accumulation, what GPU fp16
  convolutions with fp32 accumulation do. onnxruntime's CPU provider has no fp16 convolution kernel: it
  wraps the fp16 nodes in casts to fp32 and then removes nearly all of them, so it runs the fp16 file in
  fp32 with fp16-rounded weights. That is measured too (``CPUExecutionProvider``), but it says little about
  a GPU; the emulation is the honest CPU stand-in.
- ``CUDAExecutionProvider``: the fp16 file itself on the GPU, when onnxruntime has the CUDA provider.

Usage::

    report = export_fp16(Path("mobilefacenet.onnx"), Path("mobilefacenet.fp16.onnx"), faces=aligned)
    print(report.summary())

Command line (writes ``<model>.fp16.onnx`` next to the prepared fp32 file and prints the check)::

    python -m models.export.fp16 --model-dir /tmp/fb-models --faces-from ../shared/data/lfw
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from service.runtime.sessions import fp16_onnx_file

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
FP16_MAX = float(np.finfo(np.float16).max)

# Every check must keep each face's cosine to the fp32 embedding above this. Measured on all 13,233 LFW faces
# (docs/accuracy.md): min 0.99996 emulated and on the CPU provider. 0.999 leaves room for GPU kernels that
# accumulate in another order; an overflow (NaN) or a broken conversion still fails.
FP16_MIN_COSINE = 0.999
CHECK_BATCH = 64

EMULATED = "emulated fp16"
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


class Fp16ParityError(RuntimeError):
    """The fp16 graph's embeddings differ from the fp32 graph's beyond the tolerance."""


@dataclass(frozen=True)
class Fp16Report:
    """What :func:`export_fp16` wrote and measured; cosines are per face against the fp32 graph."""

    fp32_file: str
    fp16_file: str
    faces: int
    min_cosine: dict[str, float] = field(default_factory=dict)
    mean_cosine: dict[str, float] = field(default_factory=dict)
    max_abs_activation: float = 0.0  # largest |value| of any fp32 intermediate tensor on these faces
    fp32_nodes: tuple[str, ...] = ()  # nodes left in fp32 by the converter (besides the io casts)
    fp32_bytes: int = 0
    fp16_bytes: int = 0

    @property
    def worst_cosine(self) -> float:
        return min(self.min_cosine.values())

    def summary(self) -> str:
        checks = "; ".join(
            f"{name} min {self.min_cosine[name]:.6f} mean {self.mean_cosine[name]:.7f}"
            for name in self.min_cosine
        )
        kept = ", ".join(self.fp32_nodes) or "none"
        sizes = f"{self.fp16_bytes / 1e6:.2f} MB (fp32 {self.fp32_bytes / 1e6:.2f} MB)"
        return (
            f"{Path(self.fp16_file).name}: {sizes}; cosine to fp32 over {self.faces} faces: {checks}; "
            f"max |activation| {self.max_abs_activation:.1f} (fp16 max {FP16_MAX:.0f}); "
            f"nodes kept in fp32: {kept}"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def convert_to_fp16(model: onnx.ModelProto, *, keep_fp32_nodes: Sequence[str] = ()) -> onnx.ModelProto:
    """The fp16 version of ``model`` with fp32 inputs and outputs; ``keep_fp32_nodes`` names nodes to leave
    in fp32 (none are needed for MobileFaceNet: it has no normalisation or reduction left after export)."""
    converted = convert_float_to_float16(
        copy.deepcopy(model),
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST),
        node_block_list=list(keep_fp32_nodes),
    )
    # The converter appends the input casts after the nodes that read them; ONNX wants producers first.
    _sort_topologically(converted.graph)
    return converted


def emulation_model(fp16_model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp32 graph that rounds to half precision every tensor ``fp16_model`` keeps in half precision.

    Initialisers and constants become fp32 (exactly: they already hold fp16 values); every node output that
    is fp16 in ``fp16_model`` is computed in fp32 and then passed through Cast(fp16) → Cast(fp32).
    """
    inferred = onnx.shape_inference.infer_shapes(fp16_model)
    graph = inferred.graph
    half = {
        value.name
        for value in [*graph.value_info, *graph.output]
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16
    }
    model = copy.deepcopy(fp16_model)
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            )
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT16:
                    attribute.t.CopyFrom(
                        numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32))
                    )
            nodes.append(node)
            continue
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                    attribute.i = TensorProto.FLOAT  # the rounding is added below, like any fp16 output
        rounded = []
        for position, name in enumerate(node.output):
            if name in half:
                node.output[position] = f"{name}/fp32"
                rounded += [
                    helper.make_node("Cast", [f"{name}/fp32"], [f"{name}/fp16"], to=TensorProto.FLOAT16),
                    helper.make_node("Cast", [f"{name}/fp16"], [name], to=TensorProto.FLOAT),
                ]
        nodes += [node, *rounded]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def max_abs_activation(fp32_model: onnx.ModelProto, faces: np.ndarray, *, batch: int = CHECK_BATCH) -> float:
    """The largest |value| of any node output of the fp32 graph on ``faces``: headroom below fp16's 65504."""
    model = copy.deepcopy(fp32_model)
    listed = {value.name for value in model.graph.output}
    # Only float outputs: a graph with Shape/Gather nodes (EdgeFace's reshapes) has int64 ones too.
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    floats = {value.name for value in inferred if value.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in model.graph.node:
        if node.op_type != "Constant":
            for name in node.output:
                if name not in listed and name in floats:
                    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = _cpu_session(model)
    largest = 0.0
    for start in range(0, len(faces), batch):
        outputs = session.run(None, {INPUT_NAME: faces[start : start + batch]})
        largest = max(largest, *(float(np.abs(out).max()) for out in outputs))
    return largest


def fp16_cosines(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto, faces: np.ndarray, *, batch: int = CHECK_BATCH
) -> dict[str, np.ndarray]:
    """Per-face cosine between the fp32 graph's embedding and each way of running the fp16 graph."""
    faces = np.ascontiguousarray(faces, dtype=np.float32)
    reference = _embed(_cpu_session(fp32_model), faces, batch)
    runs = {EMULATED: _cpu_session(emulation_model(fp16_model)), CPU_EP: _cpu_session(fp16_model)}
    if CUDA_EP in ort.get_available_providers():
        runs[CUDA_EP] = ort.InferenceSession(fp16_model.SerializeToString(), providers=[CUDA_EP])
    return {name: row_cosines(reference, _embed(session, faces, batch)) for name, session in runs.items()}


def export_fp16(
    fp32_onnx: Path,
    out: Path,
    *,
    faces: np.ndarray | None = None,
    min_cosine: float = FP16_MIN_COSINE,
    keep_fp32_nodes: Sequence[str] = (),
) -> Fp16Report:
    """Convert ``fp32_onnx`` to fp16 and write it to ``out`` once every check passes.

    ``faces`` are normalised ``(N, 3, H, W)`` float32 crops as the embedder takes them — real aligned faces
    (see :func:`aligned_lfw_faces`); without them the check runs on smooth noise, which only proves the graph
    runs and does not overflow. Raises :class:`Fp16ParityError` if any face's cosine in any check is at most
    ``min_cosine``; nothing is written then.
    """
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    fp32_model = onnx.load(str(fp32_onnx))
    fp16_model = convert_to_fp16(fp32_model, keep_fp32_nodes=keep_fp32_nodes)
    onnx.checker.check_model(fp16_model, full_check=True)
    if faces is None:
        faces = _smooth_noise(_input_hw(fp32_model))
    cosines = fp16_cosines(fp32_model, fp16_model, faces)
    report = Fp16Report(
        fp32_file=str(fp32_onnx),
        fp16_file=str(out),
        faces=len(faces),
        min_cosine={name: float(values.min()) for name, values in cosines.items()},
        mean_cosine={name: float(values.mean()) for name, values in cosines.items()},
        max_abs_activation=max_abs_activation(fp32_model, faces),
        fp32_nodes=tuple(
            n.name
            for n in fp16_model.graph.node
            if n.name in set(keep_fp32_nodes) or n.op_type in DEFAULT_OP_BLOCK_LIST
        ),
        fp32_bytes=fp32_onnx.stat().st_size,
        fp16_bytes=fp16_model.ByteSize(),
    )
    # NaN (an overflow to inf somewhere) fails this comparison too
    if not all(value > min_cosine for value in report.min_cosine.values()):
        raise Fp16ParityError(f"fp16 parity check failed (min cosine {min_cosine}): {report.summary()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(fp16_model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; NaN where a row holds inf or NaN (an overflow), which fails every check."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
        return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12)


def aligned_lfw_faces(model_dir: Path, lfw_dir: Path, count: int = 64, *, embedder: str) -> np.ndarray:
    """``count`` LFW photos (one per person, sorted by name) through the service's detector and aligner,
    preprocessed for ``embedder``: real aligned faces for the check, without any cache."""
    from service.config import Settings
    from service.pipeline import decode_image
    from service.pipeline.factory import build_pipeline

    settings = Settings(model_dir=model_dir, embedder=embedder, embedder_precision="fp32")
    pipeline, _ = build_pipeline(settings)
    crops = []
    for person in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        image = decode_image(min(person.glob("*.jpg")).read_bytes(), max_pixels=settings.max_image_pixels)
        faces = pipeline.detect(image)
        if faces:
            crops.append(pipeline.align(image, faces[:1])[0])
        if len(crops) == count:
            break
    return pipeline.embedder.preprocess(np.stack(crops))


def register_eval_variants(model_dir: Path, embedder: str, fp16_path: Path) -> list[str]:
    """Add two evaluation-only embedders to ``model_dir``'s prepared manifest, so that ``facebank eval lfw
    --model NAME`` measures them through the service's pipeline on the cached crops:

    - ``<embedder>-fp16-emulated``: :func:`emulation_model` of the fp16 file (fp16 storage, fp32 arithmetic);
    - ``<embedder>-fp16-cpu-ep``: the fp16 file itself as the CPU provider runs it (fp32 arithmetic on
      fp16-rounded weights).

    They share the fp32 entry's preprocessing, template and threshold. Not for serving: ``models prepare``
    drops them when it rewrites the manifest.
    """
    from dataclasses import replace

    from service.runtime.manifest import Manifest, load_manifest, sha256_file, write_manifest

    manifest_path = model_dir / "manifest.toml"
    manifest = load_manifest(manifest_path)
    base = manifest.get(embedder)
    emulated_file = fp16_path.with_name(fp16_path.name.removesuffix(".onnx") + "-emulated.onnx")
    onnx.save(emulation_model(onnx.load(str(fp16_path))), str(emulated_file))
    variants = {f"{embedder}-fp16-emulated": emulated_file, f"{embedder}-fp16-cpu-ep": fp16_path}
    added = [
        replace(base, name=name, onnx_file=path.name, onnx_sha256=sha256_file(path), fp16_onnx_sha256=None)
        for name, path in variants.items()
    ]
    kept = [entry for entry in manifest if entry.name not in variants]
    write_manifest(
        Manifest(models=(*kept, *added)), manifest_path, header="Prepared models plus fp16 checks."
    )
    return list(variants)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a missing input near node {pending[0].name!r}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [node for node in pending if not any(node is r for r in ready)]
    nodes = [copy.deepcopy(node) for node in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def _embed(session: ort.InferenceSession, faces: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: faces[s : s + batch]})[0]
            for s in range(0, len(faces), batch)
        ]
    )


def _cpu_session(model: onnx.ModelProto) -> ort.InferenceSession:
    # The service's optimisation level: the check must see the graph as the service would run it.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=[CPU_EP])


def _input_hw(model: onnx.ModelProto) -> tuple[int, int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def _smooth_noise(hw: tuple[int, int], count: int = 8) -> np.ndarray:
    """Image-like noise in the normalised range: low frequencies from a coarse grid plus a little static."""
    rng = np.random.default_rng(0)
    h, w = hw
    coarse = rng.uniform(-2.0, 2.0, size=(count, 3, h // 8 + 2, w // 8 + 2))
    rows = np.linspace(0, coarse.shape[2] - 1, h).round().astype(int)
    cols = np.linspace(0, coarse.shape[3] - 1, w).round().astype(int)
    static = 0.2 * rng.standard_normal((count, 3, h, w))
    return (coarse[:, :, rows][:, :, :, cols] + static).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    from service.config import DEFAULT_EMBEDDER

    parser = argparse.ArgumentParser(description="Write <embedder>.fp16.onnx next to the prepared fp32 file.")
    parser.add_argument("--model-dir", type=Path, required=True, help="prepared models (manifest.toml)")
    parser.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER,
        help=f"embedder name in the prepared manifest (default {DEFAULT_EMBEDDER}, the service's default)",
    )
    parser.add_argument("--faces-from", type=Path, help="LFW folder: check on real aligned faces")
    parser.add_argument("--faces", type=int, default=256, help="how many real faces (default 256)")
    parser.add_argument(
        "--register-eval-variants",
        action="store_true",
        help="also add <embedder>-fp16-emulated and <embedder>-fp16-cpu-ep to the prepared manifest "
        "(evaluation only, for `facebank eval lfw --model NAME`)",
    )
    args = parser.parse_args(argv)
    from service.runtime.manifest import load_manifest

    entry = load_manifest(args.model_dir / "manifest.toml").get(args.embedder)
    faces = None
    if args.faces_from:
        faces = aligned_lfw_faces(args.model_dir, args.faces_from, args.faces, embedder=args.embedder)
    fp32_path = args.model_dir / entry.onnx_file
    try:
        report = export_fp16(fp32_path, fp32_path.with_name(fp16_onnx_file(entry.onnx_file)), faces=faces)
    except Fp16ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json()))
    if args.register_eval_variants:
        names = register_eval_variants(args.model_dir, args.embedder, Path(report.fp16_file))
        print(f"registered {', '.join(names)} in {args.model_dir / 'manifest.toml'}", file=sys.stderr)
    return 0


__all__ = [
    "FP16_MIN_COSINE",
    "Fp16ParityError",
    "Fp16Report",
    "aligned_lfw_faces",
    "convert_to_fp16",
    "emulation_model",
    "export_fp16",
    "fp16_cosines",
    "max_abs_activation",
    "register_eval_variants",
    "row_cosines",
]

if __name__ == "__main__":
    sys.exit(main())
