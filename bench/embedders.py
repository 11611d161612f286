"""faces/s of every prepared embedder, interleaved round by round so that they share the machine's load.

`facebank bench --sections embedder` measures one embedder per run; on a shared machine the load changes
between runs more than the embedders differ. Here each round times every embedder once on the same aligned
LFW crops (one face per call, and batches of 64), and the median over rounds is reported for each.

Usage::

    nice -n 10 python -m bench.embedders --models /tmp/fb-models --rounds 15
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.data import lfw_dir, shared_dir
from service.config import Settings
from service.pipeline import FacePipeline, decode_image
from service.pipeline.factory import build_pipeline
from service.runtime.manifest import load_manifest


def aligned_crops(pipeline: FacePipeline, lfw: Path, count: int) -> np.ndarray:
    """(count, 112, 112, 3) uint8: the first face of the first photo of `count` LFW people, aligned."""
    crops = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        image = decode_image(min(person.glob("*.jpg")).read_bytes(), max_pixels=40_000_000)
        faces = pipeline.detect(image)
        if faces:
            crops.append(pipeline.align(image, faces[:1])[0])
        if len(crops) == count:
            break
    return np.stack(crops)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="prepared models (FACEBANK_MODEL_DIR)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--single", type=int, default=16, help="one-face calls per round")
    args = parser.parse_args(argv)
    names = [e.name for e in load_manifest(args.models / "manifest.toml").embedders()]
    pipelines = {name: build_pipeline(Settings(model_dir=args.models, embedder=name))[0] for name in names}
    embedders = {name: pipeline.embedder for name, pipeline in pipelines.items()}
    templates = {name: e.config.template for name, e in embedders.items()}
    if any(not np.array_equal(t, templates[names[0]]) for t in templates.values()):
        raise SystemExit("the embedders use different alignment templates; crops cannot be shared")
    # uint8 crops, shared; each embedder preprocesses them itself, as in the service
    crops = aligned_crops(pipelines[names[0]], lfw_dir(shared_dir()), 64)
    single: dict[str, list[float]] = {name: [] for name in names}
    batched: dict[str, list[float]] = {name: [] for name in names}
    for embedder in embedders.values():  # warm-up
        embedder.embed(crops)
    for _ in range(args.rounds):
        for name, embedder in embedders.items():
            started = time.perf_counter()
            for i in range(args.single):
                embedder.embed(crops[i : i + 1])
            single[name].append(args.single / (time.perf_counter() - started))
            started = time.perf_counter()
            embedder.embed(crops)
            batched[name].append(len(crops) / (time.perf_counter() - started))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"# {datetime.now(UTC):%Y-%m-%dT%H:%MZ}, {platform.machine()}, {os.cpu_count()} CPUs, load {load}; "
        f"median of {args.rounds} interleaved rounds"
    )
    print("| embedder | faces/s, one face per call | faces/s, batches of 64 |")
    print("| --- | --- | --- |")
    for name in names:
        print(f"| {name} | {np.median(single[name]):.0f} | {np.median(batched[name]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
