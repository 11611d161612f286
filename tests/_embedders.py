"""A second embedder for tests that switch models, made cheaply from the prepared MobileFaceNet.

`add_flipped_embedder(model_dir)` writes `mobilefacenet-flipped.onnx`: MobileFaceNet followed by a Mul that
flips the sign of every other dimension. Cosines between two faces are unchanged (the threshold still holds),
but a vector of one model compared with the same face's vector of the other scores about 0, so mixing the
two in one index would show. It is registered as a trained model (`origin = "trained"`), as
`facebank train --register` does.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.export import EXPORT_VERSION
from service.runtime.manifest import Manifest, ModelEntry, load_manifest, sha256_file, write_manifest

FLIPPED = "mobilefacenet-flipped"
FLIPPED_TAG = f"{FLIPPED}@2"


def copy_model_dir(model_dir: Path, target: Path) -> Path:
    """A private copy of a prepared model folder, so a test can add models to it."""
    shutil.copytree(model_dir, target)
    return target


def flipped_onnx(source: Path, target: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    (output,) = graph.output
    dim = output.type.tensor_type.shape.dim[1].dim_value
    for node in graph.node:
        node.output[:] = ["embedding_unflipped" if name == output.name else name for name in node.output]
    signs = np.where(np.arange(dim) % 2 == 0, 1.0, -1.0).astype(np.float32).reshape(1, dim)
    graph.initializer.append(numpy_helper.from_array(signs, name="flip_signs"))
    graph.node.append(helper.make_node("Mul", ["embedding_unflipped", "flip_signs"], [output.name]))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(target))


def add_flipped_embedder(model_dir: Path) -> ModelEntry:
    """Write the flipped embedder into `model_dir` and register it in its prepared manifest."""
    manifest_path = model_dir / "manifest.toml"
    manifest = load_manifest(manifest_path)
    base = manifest.get("mobilefacenet")
    flipped_onnx(model_dir / base.onnx_file, model_dir / f"{FLIPPED}.onnx")
    card = model_dir / "cards" / f"{FLIPPED}.md"
    card.parent.mkdir(exist_ok=True)
    card.write_text("# Model card: mobilefacenet-flipped (test model)\n", encoding="utf-8")
    entry = replace(
        base,
        name=FLIPPED,
        version="2",
        origin="trained",
        base_model=base.tag,
        trained_by="tests/_embedders.py (sign flip of every other dimension)",
        onnx_file=f"{FLIPPED}.onnx",
        source_file=None,
        source_url=None,
        source_sha256=None,
        provenance="a test model: mobilefacenet with every other output dimension negated",
        card=f"cards/{FLIPPED}.md",
        onnx_sha256=sha256_file(model_dir / f"{FLIPPED}.onnx"),
        export_version=EXPORT_VERSION,
    )
    others = tuple(e for e in manifest if e.name != FLIPPED)
    write_manifest(Manifest(models=(*others, entry)), manifest_path)
    return entry
