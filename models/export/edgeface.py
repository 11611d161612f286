"""EdgeFace ``_q`` weights → the fp32 network → ONNX.

The published ``edgeface_xs_q.pt`` / ``edgeface_xxs_q.pt`` are state dicts of the timm network after
``torch.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``: every Linear is stored as
``<name>._packed_params._packed_params`` = (int8 weight with its scale and zero point, fp32 bias), plus
``<name>.scale`` / ``<name>.zero_point`` (unused by dynamic quantization) and ``<name>._packed_params.dtype``;
everything else is plain fp32. :func:`dequantized_state_dict` turns each Linear back into an fp32 ``weight``
and ``bias`` (weight = scale x (int8 - zero point), exactly the values the int8 model multiplies with) so the
state dict loads strictly into :class:`models.nets.edgeface.EdgeFace`. The int8 model also quantizes its
activations at run time; the fp32 rebuild does not, which changes embeddings slightly (cosine ~0.93-0.96 to
the int8 run on real faces, per ../shared/models/README.md) and is what the ONNX graph computes: accuracy
is measured on it (docs/accuracy.md), not parity with the int8 run.

Every way a file can be wrong ends in one :class:`WeightFileError` that names the file and what was
expected; the ONNX file is written to a temporary name and moved into place only after its parity check.

Usage::

    from models.export.edgeface import export_edgeface

    print(export_edgeface("edgeface_xs_q.pt", "edgeface-xs-q.onnx", variant="xs").summary())

Command line: export again into a temporary folder with the parity check on real aligned LFW faces (batch 1,
the whole set, and 64) and print it::

    python -m models.export.edgeface --model-dir /tmp/fb-models --faces-from ../shared/data/lfw
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.export.onnx_export import (
    EMBEDDER_MIN_COSINE,
    ParityReport,
    WeightFileError,
    export_embedder_net,
    load_strictly,
    read_weights,
)
from models.nets.edgeface import EMBEDDING_DIM, INPUT_SIZE, VARIANTS, EdgeFace

# Manifest name → network variant: the one place that says which entries are EdgeFace networks.
EDGEFACE_MODELS: dict[str, str] = {"edgeface-xs-q": "xs", "edgeface-xxs-q": "xxs"}

_PACKED = "._packed_params._packed_params"
_PACKED_DTYPE = "._packed_params.dtype"
_QUANT_EXTRAS = (".scale", ".zero_point")


def _expected(variant: str) -> str:
    network = f"EdgeFace-{variant.upper()}-Q"
    return f"an {network} state dict (timm edgenext, nn.Linear dynamically quantized to qint8)"


def read_quantized_state_dict(path: str | os.PathLike[str], variant: str) -> Mapping[str, object]:
    """The raw state dict of ``path`` (tensors, packed (int8 weight, bias) tuples and dtypes only)."""
    return read_weights(path, _expected(variant))


def dequantized_state_dict(
    raw: Mapping[str, object], path: str | os.PathLike[str], variant: str
) -> dict[str, torch.Tensor]:
    """fp32 ``weight``/``bias`` for each dynamically quantized Linear, every other tensor as it is."""
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.endswith(_PACKED):
            name = key.removesuffix(_PACKED)
            out[f"{name}.weight"], bias = _dequantized_linear(value, key, path, variant)
            if bias is not None:
                out[f"{name}.bias"] = bias
        elif key.endswith(_PACKED_DTYPE):
            if value != torch.qint8:
                raise WeightFileError(
                    f"{path}: {key} is {value}, expected torch.qint8 (dynamic int8 quantization of nn.Linear)"
                )
        elif key.endswith(_QUANT_EXTRAS) and _is_packed_owner(raw, key):
            continue  # output scale / zero point of a dynamic Linear: not used by its arithmetic
        elif isinstance(value, torch.Tensor) and not value.is_quantized:
            out[key] = value.float()
        else:
            what = (
                f"{type(value).__name__} {value.dtype}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise WeightFileError(f"{path}: cannot dequantize {key} ({what}); expected {_expected(variant)}")
    return out


def _is_packed_owner(raw: Mapping[str, object], key: str) -> bool:
    owner = key.rsplit(".", 1)[0]
    return f"{owner}{_PACKED}" in raw


def _dequantized_linear(
    value: object, key: str, path: str | os.PathLike[str], variant: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise WeightFileError(f"{path}: cannot dequantize {key}: expected an (int8 weight, bias) pair")
    weight, bias = value
    schemes = (torch.per_tensor_affine, torch.per_channel_affine)
    if not (isinstance(weight, torch.Tensor) and weight.is_quantized and weight.dtype == torch.qint8):
        kind = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise WeightFileError(f"{path}: cannot dequantize {key}: weight is {kind}, expected a qint8 tensor")
    if weight.qscheme() not in schemes:
        raise WeightFileError(
            f"{path}: cannot dequantize {key}: quantization scheme {weight.qscheme()}, "
            "expected per-tensor or per-channel affine"
        )
    if bias is not None and not (isinstance(bias, torch.Tensor) and bias.is_floating_point()):
        raise WeightFileError(f"{path}: cannot dequantize {key}: bias is not a float tensor")
    return weight.dequantize().float(), None if bias is None else bias.float()


def load_edgeface(path: str | os.PathLike[str], variant: str) -> EdgeFace:
    """The fp32 EdgeFace network with ``path``'s dequantized weights, loaded strictly, in eval mode."""
    net = EdgeFace(variant)
    state = dequantized_state_dict(read_quantized_state_dict(path, variant), path, variant)
    load_strictly(net, state, path, _expected(variant))
    return net.eval()


def export_edgeface(
    source: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    variant: str,
    sample_inputs: Sequence[np.ndarray] | None = None,
    min_cosine: float = EMBEDDER_MIN_COSINE,
) -> ParityReport:
    """Export the dequantized network with a dynamic batch axis: input ``input`` (N, 3, 112, 112), output
    ``embedding`` (N, 512). ``sample_inputs``: normalised faces for the parity check (default noise)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EdgeFace variant {variant!r}; known: {', '.join(VARIANTS)}")
    net = load_edgeface(source, variant)
    return export_embedder_net(
        net,
        out_path,
        dim=EMBEDDING_DIM,
        input_size=INPUT_SIZE,
        sample_inputs=sample_inputs,
        min_cosine=min_cosine,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EdgeFace export parity on real aligned faces")
    parser.add_argument("--model-dir", type=Path, required=True, help="prepared models (for detection)")
    parser.add_argument(
        "--source", type=Path, default=Path("../shared/models"), help="folder of the .pt files"
    )
    parser.add_argument("--faces-from", type=Path, required=True, help="LFW folder")
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args(argv)
    from models.export.fp16 import aligned_lfw_faces
    from service.runtime.manifest import PROJECT_MANIFEST, load_manifest

    project = load_manifest(PROJECT_MANIFEST)
    for name, variant in EDGEFACE_MODELS.items():
        entry = project.get(name)
        assert entry.source_file is not None
        faces = aligned_lfw_faces(args.model_dir, args.faces_from, args.count, embedder=name)
        with tempfile.TemporaryDirectory() as folder:
            report = export_edgeface(
                args.source / entry.source_file,
                Path(folder) / entry.onnx_file,
                variant=variant,
                sample_inputs=[faces[:1], faces],
            )
        print(f"{entry.tag}: {len(faces)} aligned LFW faces; {report.summary()}")
    return 0


__all__ = [
    "EDGEFACE_MODELS",
    "WeightFileError",
    "dequantized_state_dict",
    "export_edgeface",
    "load_edgeface",
    "read_quantized_state_dict",
]


if __name__ == "__main__":
    raise SystemExit(main())
