"""Which EdgeFace path is more accurate: the int8 model as published, or its Linear weights dequantized?

The ``_q`` files are dynamically quantized networks: at run time each Linear quantizes its input to uint8,
multiplies by the int8 weight and rescales. The service runs the fp32 rebuild (the same int8 weight values,
fp32 activations; :mod:`models.export.edgeface`), which ONNX exports and onnxruntime runs. This compares the
two on celeba-train (never LFW), on the very same aligned crops: every one of the 209 identities' first photo
(by file name) is enrolled and the other photos are identified (top-1), and over every pair of faces the true
accept rate at FAR 1e-3 is measured. The embedders the service runs (ONNX, through its pipeline) are listed
beside them, mobilefacenet included.

Usage::

    nice -n 10 python -m models.evaluation.quantized ../shared/data/celeba-train --model-dir /tmp/fb-models \
        --cache /tmp/fb-cache
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.evaluation.folders import list_identity_folders
from models.evaluation.protocol import calibrate_threshold, identification_top_k
from models.evaluation.run import embed_paths
from models.export.edgeface import EDGEFACE_MODELS, load_edgeface, read_quantized_state_dict
from models.nets.edgeface import EdgeFace
from service.config import Settings
from service.pipeline import l2_normalize
from service.pipeline.factory import build_pipeline
from service.runtime.manifest import PROJECT_MANIFEST, load_manifest

FAR = 1e-3


def int8_edgeface(path: Path, variant: str) -> torch.nn.Module:
    """The network as upstream runs it: Linear layers dynamically quantized, the ``_q`` state dict loaded."""
    load_edgeface(path, variant)  # the same checks and errors as the export path
    quantized = torch.ao.quantization.quantize_dynamic(
        EdgeFace(variant), {torch.nn.Linear}, dtype=torch.qint8
    )
    # as read (an OrderedDict whose _metadata tells the quantized Linear its older packed layout)
    quantized.load_state_dict(read_quantized_state_dict(path, variant), strict=True)
    return quantized.eval()


def scores(embeddings: np.ndarray, identities: Sequence[str]) -> tuple[float, float, int]:
    """(top-1 with each identity's first photo enrolled, TAR at FAR 1e-3 over all pairs, probes)."""
    ids = np.asarray(identities)
    first = np.asarray([i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))])
    top1 = identification_top_k(embeddings[~first], ids[~first], embeddings[first], ids[first], ks=(1,))[1]
    return top1, calibrate_threshold(embeddings, list(ids), FAR).tar, int((~first).sum())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="ROOT/<identity>/*.jpg (celeba-train; never LFW)")
    parser.add_argument("--model-dir", type=Path, required=True, help="prepared models")
    parser.add_argument("--source", type=Path, default=Path("../shared/models"), help="the _q .pt files")
    parser.add_argument("--cache", type=Path, default=None, help="crop and embedding cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    items = list_identity_folders(args.dataset)
    paths, identities = [item.path for item in items], [item.identity for item in items]
    project = load_manifest(PROJECT_MANIFEST)
    print(f"{args.dataset}: {len(paths)} photos of {len(set(identities))} identities")
    print("| embedder | path | top-1 (first photo enrolled) | TAR@FAR=1e-3 | photos without a face |")
    print("| --- | --- | --- | --- | --- |")
    for name in ["mobilefacenet", *EDGEFACE_MODELS]:
        settings = Settings(model_dir=args.model_dir, embedder=name)
        embedded = embed_paths(settings, paths, choice="largest", cache_dir=args.cache, want_crops=True)
        found = embedded.batch.found
        ids = [identity for identity, ok in zip(identities, found, strict=True) if ok]
        top1, tar, probes = scores(embedded.embeddings[found], ids)
        missing = int((~found).sum())
        print(
            f"| {name} | ONNX fp32 (the service) | {100 * top1:.2f} % of {probes} "
            f"| {100 * tar:.2f} % | {missing} |"
        )
        if name not in EDGEFACE_MODELS:
            continue
        source = project.get(name).source_file
        assert source is not None and embedded.batch.crops is not None
        pipeline, _ = build_pipeline(settings)
        net = int8_edgeface(args.source / source, EDGEFACE_MODELS[name])
        inputs = pipeline.embedder.preprocess(embedded.batch.crops[found])
        started = time.perf_counter()
        with torch.no_grad():
            rows = [net(torch.from_numpy(inputs[i : i + 64])).numpy() for i in range(0, len(inputs), 64)]
        seconds = time.perf_counter() - started
        top1, tar, probes = scores(l2_normalize(np.concatenate(rows)), ids)
        print(
            f"| {name} | int8 in PyTorch as published ({len(inputs) / seconds:.0f} faces/s) "
            f"| {100 * top1:.2f} % of {probes} | {100 * tar:.2f} % | {missing} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
