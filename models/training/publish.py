"""Turn a trained backbone into a servable model: ONNX with a parity check, a model card, a manifest entry.

- :func:`export_trained`: state dict → ``<name>.pt``, then :func:`models.export.onnx_export.export_embedder`
  (strict load, dynamic batch axis, onnxruntime-vs-PyTorch cosine > 0.9999 on real aligned faces).
- :func:`trained_entry`: the manifest entry (``origin = "trained"``: no upstream URL; ``onnx_sha256``,
  ``base_model`` and ``trained_by`` instead), preprocessing, template and dimension copied from the base
  embedder (:mod:`models.training.bases`), licence from the base.
- :func:`write_fragment`: that entry alone as TOML, for review before it goes into
  ``service/runtime/manifest.toml``.
- :func:`register_in_model_dir`: copy the ONNX, weights and card into a prepared model folder and add the
  entry to its ``manifest.toml``, so ``--model NAME`` and ``facebank models use NAME`` can load it; a later
  ``facebank models prepare`` keeps it while its ONNX file still matches ``onnx_sha256``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.export import EXPORT_VERSION
from models.export.onnx_export import ParityReport, export_embedder_net
from models.training.bases import Base, get_base
from models.training.train import to_tensor
from service.runtime.manifest import (
    EmbedderSpec,
    Manifest,
    ModelEntry,
    dumps_manifest,
    load_manifest,
    sha256_file,
    write_manifest,
)


@dataclass(frozen=True)
class ExportedModel:
    name: str
    weights: Path
    onnx: Path
    parity: ParityReport


def export_trained(
    net: nn.Module,
    name: str,
    out_dir: Path,
    sample_crops: np.ndarray,
    base: Base | None = None,
) -> ExportedModel:
    """Save the backbone and export it as reloaded (strictly) from the saved file, so the ONNX graph is what
    the ``.pt`` holds; the parity check runs on ``sample_crops`` (real aligned faces)."""
    base = base or get_base("mobilefacenet")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    torch.save({key: value.detach().cpu() for key, value in net.state_dict().items()}, weights)
    faces = to_tensor(sample_crops, base.preprocess()).numpy()
    samples = [faces[:1], faces[: min(len(faces), 32)]]
    parity = export_embedder_net(
        base.build(weights),
        out_dir / f"{name}.onnx",
        dim=base.dim,
        input_size=base.entry().embedder.input_size[0],  # type: ignore[union-attr]
        sample_inputs=samples,
    )
    return ExportedModel(name=name, weights=weights, onnx=out_dir / f"{name}.onnx", parity=parity)


def trained_entry(
    name: str,
    *,
    weights: Path,
    threshold: float,
    provenance: str,
    card: str,
    version: str = "1",
    onnx: Path | None = None,
    trained_by: str = "facebank train (models/training)",
    base: Base | None = None,
) -> ModelEntry:
    """A manifest entry for a fine-tuned ``base`` (default MobileFaceNet): input, template, dimension and
    preprocessing of the base's manifest entry, licence of the base.

    The ONNX file (``onnx``, default: beside ``weights`` as :func:`export_trained` writes it) is the
    artefact, so its sha256 is recorded; the weights it came from are named with their sha256 too, and there
    is no upstream URL.
    """
    onnx = onnx if onnx is not None else weights.with_suffix(".onnx")
    network = base or get_base("mobilefacenet")
    upstream = network.entry()
    assert upstream.embedder is not None
    return replace(
        upstream,
        name=name,
        version=version,
        origin="trained",
        base_model=upstream.tag,
        trained_by=trained_by,
        onnx_file=f"{name}.onnx",
        source_file=weights.name,
        source_url=None,
        source_sha256=sha256_file(weights),
        licence=network.licence,
        provenance=provenance,
        card=card,
        embedder=EmbedderSpec(
            input_size=upstream.embedder.input_size,
            dim=upstream.embedder.dim,
            template=upstream.embedder.template,
            threshold=round(float(threshold), 4),
        ),
        onnx_sha256=sha256_file(onnx),
        export_version=EXPORT_VERSION,
    )


def write_fragment(entry: ModelEntry, path: Path) -> Path:
    """The entry alone as manifest TOML, for review before it goes into ``service/runtime/manifest.toml``."""
    header = (
        f"Manifest fragment for {entry.tag}, written by `facebank train`.\n"
        "Review, then merge into service/runtime/manifest.toml to ship it."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_manifest(Manifest(models=(entry,)), header=header), encoding="utf-8")
    return path


def register_in_model_dir(
    entry: ModelEntry, exported: ExportedModel, card_path: Path, model_dir: Path
) -> Path:
    """Add (or replace) ``entry`` in the prepared manifest of ``model_dir``; returns that manifest's path.

    ``facebank models prepare`` keeps the entry on later runs while the ONNX file still matches its sha256.
    """
    manifest_path = model_dir / "manifest.toml"
    current = load_manifest(manifest_path)  # raises ManifestError when the folder was never prepared
    shutil.copyfile(exported.onnx, model_dir / entry.onnx_file)
    (model_dir / "sources").mkdir(exist_ok=True)
    shutil.copyfile(exported.weights, model_dir / "sources" / exported.weights.name)
    (model_dir / entry.card).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(card_path, model_dir / entry.card)
    prepared = entry.prepared(
        onnx_sha256=sha256_file(model_dir / entry.onnx_file), export_version=EXPORT_VERSION
    )
    entries = [e for e in current if e.name != entry.name] + [prepared]
    header = (
        "Prepared by `facebank models prepare` from the project's service/runtime/manifest.toml, plus\n"
        "models registered by `facebank train --register`; onnx_sha256 is checked before each ONNX file is "
        "loaded."
    )
    return write_manifest(Manifest(models=tuple(entries)), manifest_path, header=header)


__all__ = [
    "ExportedModel",
    "export_trained",
    "register_in_model_dir",
    "trained_entry",
    "write_fragment",
]
