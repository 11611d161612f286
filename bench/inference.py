"""Sections `embedder` (faces/s at batch 1, 64, 1024; with `--device cuda` also the fp16 export) and
`detector` (images/s on 640×480 photos)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from bench import dlib_baseline
from bench.context import Context
from bench.data import canvases_640x480, lfw_photos
from bench.report import Comparison, Figure
from bench.timing import p50, samples, timed

UPSTREAM_ONNX = "mobilefacenet.onnx"


def _upstream_batch1(ctx: Context) -> Comparison:
    """MobileFaceNet's upstream ONNX file (its batch axis is fixed at 1), one face per call: the same network
    for ``mobilefacenet@1`` and its fine-tunes; for another embedder (EdgeFace has no upstream ONNX file) the
    network the project started from, and the label says so."""
    from service.pipeline import l2_normalize
    from service.runtime import create_session

    label = f"upstream {UPSTREAM_ONNX} (batch fixed at 1), one face per call"
    if not ctx.models.embedder_tag.startswith("mobilefacenet"):
        label += f"; MobileFaceNet, another network than {ctx.models.embedder_tag}"
    path = ctx.shared / "models" / UPSTREAM_ONNX
    if not path.is_file():
        return Comparison(label, None, "faces/s", missing=f"{path} not found")
    session = create_session(path, device=ctx.device, threads=ctx.settings.intra_op_threads)
    input_name = session.get_inputs()[0].name
    embedder = ctx.pipeline.embedder
    crops = ctx.crops(32 if ctx.quick else 256)
    position = iter(range(10**9))

    def one_face() -> None:
        crop = crops[next(position) % len(crops)]
        (out,) = session.run(None, {input_name: embedder.preprocess(crop[None])})
        l2_normalize(out)

    times = samples(one_face, repeat=len(crops), warmup=3)
    return Comparison(label, 1.0 / p50(times), "faces/s")


def _fp16_session(ctx: Context) -> tuple[Any, str]:
    """The fp16 embedder's session (IO-bound on CUDA), or None and why it is not measured."""
    from service.runtime.manifest import load_manifest
    from service.runtime.sessions import ProviderError, create_session, embedder_onnx_file, runner_for

    model_dir = ctx.settings.model_dir
    entry = load_manifest(model_dir / "manifest.toml").get(ctx.settings.embedder)
    try:
        name = embedder_onnx_file(entry.onnx_file, precision="fp16", device=ctx.device)
    except ProviderError as exc:
        return None, str(exc)
    path = model_dir / name
    if not path.is_file():
        return None, f"{path} not found; write it with `python -m models.export.fp16 --model-dir {model_dir}`"
    return runner_for(create_session(path, device=ctx.device, threads=ctx.settings.intra_op_threads)), ""


def run_embedder(ctx: Context) -> None:
    from service.pipeline import Embedder
    from service.runtime.sessions import runner_for

    ctx.log("embedder: upstream batch-1 baseline")
    baseline = _upstream_batch1(ctx)
    models = ctx.models
    service_embedder = ctx.pipeline.embedder
    sizes = (1, 64) if ctx.quick else (1, 64, 1024)
    # the service's session through IO binding on CUDA, as the fp16 one below runs
    fp32_session = runner_for(models.embedder_session)
    for batch in sizes:
        ctx.log(f"embedder: batch {batch}")
        crops = ctx.crops(batch)
        # Exactly `batch` faces per onnxruntime call (the service's Embedder chunks at config.max_batch).
        exact = Embedder(fp32_session, replace(models.embedder_config, max_batch=batch))
        times = samples(partial(exact.embed, crops), repeat=_calls(ctx, batch), warmup=1, budget_s=30)
        also = []
        if batch > service_embedder.config.max_batch:
            chunked = samples(partial(service_embedder.embed, crops), repeat=2, warmup=0)
            also.append(
                Comparison(
                    f"service Embedder as configured (chunks of {service_embedder.config.max_batch})",
                    batch / p50(chunked),
                    "faces/s",
                )
            )
        ctx.add(
            Figure(
                id=f"embedder.batch{batch}.faces_per_s",
                section="embedder",
                label=f"{models.embedder_tag} faces/s at batch {batch} ({ctx.device})",
                value=batch / p50(times),
                unit="faces/s",
                better="higher",
                baseline=baseline,
                also=also,
                note=f"p50 of {len(times)} calls; preprocess, onnxruntime, L2-normalise aligned crops",
            )
        )

    if ctx.device != "cuda":
        ctx.log("embedder: fp16 skipped: the fp16 export runs only on the CUDA provider (use --device cuda)")
        return
    fp16_session, why = _fp16_session(ctx)
    if fp16_session is None:
        ctx.log(f"embedder: fp16 not measured: {why}")
        return
    for batch in sizes:
        ctx.log(f"embedder fp16: batch {batch}")
        _add_precision_figure(
            ctx, Embedder(fp16_session, replace(models.embedder_config, max_batch=batch)), "fp16", batch
        )


def _calls(ctx: Context, batch: int) -> int:
    return {1: 30, 64: 3}.get(batch, 2) if ctx.quick else {1: 300, 64: 20}.get(batch, 4)


def _add_precision_figure(ctx: Context, embedder: Any, precision: str, batch: int) -> None:
    """faces/s of ``embedder`` at exactly ``batch`` faces per call, read against the fp32 figure."""
    crops = ctx.crops(batch)
    times = samples(partial(embedder.embed, crops), repeat=_calls(ctx, batch), warmup=1, budget_s=30)
    fp32 = ctx.report.figure(f"embedder.batch{batch}.faces_per_s")
    label = f"{ctx.models.embedder_tag} fp32, same run"
    ctx.add(
        Figure(
            id=f"embedder.{precision}.batch{batch}.faces_per_s",
            section="embedder",
            label=f"{ctx.models.embedder_tag} {precision} export faces/s at batch {batch} ({ctx.device})",
            value=batch / p50(times),
            unit="faces/s",
            better="higher",
            baseline=Comparison(label, fp32.value if fp32 else None, "faces/s"),
            note=f"p50 of {len(times)} calls; IO binding; fp32 in and out, L2-normalised in fp32",
        )
    )


def run_detector(ctx: Context) -> None:
    canvases = canvases_640x480(lfw_photos(ctx.lfw, 64), 2 if ctx.quick else 16)
    pipeline = ctx.pipeline
    ctx.log(f"detector: {len(canvases)} canvases of 640×480, four LFW photos each")
    pipeline.detect(canvases[0])
    times, found = [], []
    for _ in range(1 if ctx.quick else 3):
        for canvas in canvases:
            seconds, faces = timed(pipeline.detect, canvas)
            times.append(seconds)
            found.append(len(faces))

    face_recognition, why = dlib_baseline.load()
    label = "face_recognition.face_locations (dlib HOG, upsample 1, its default)"
    if face_recognition is None:
        baseline = Comparison(label, None, "images/s", missing=why)
        dlib_found = "—"
    else:
        ctx.log("detector: face_recognition baseline")
        arrays = [np.asarray(c) for c in canvases[: 1 if ctx.quick else 8]]
        dlib_times, dlib_counts = [], []
        for array in arrays:
            seconds, boxes = timed(face_recognition.face_locations, array)
            dlib_times.append(seconds)
            dlib_counts.append(len(boxes))
        baseline = Comparison(label, 1.0 / p50(dlib_times), "images/s")
        dlib_found = f"{np.mean(dlib_counts):.2f}"
    ctx.add(
        Figure(
            id="detector.640x480.images_per_s",
            section="detector",
            label=f"{ctx.models.detector_tag} images/s on 640×480 ({ctx.device})",
            value=1.0 / p50(times),
            unit="images/s",
            better="higher",
            baseline=baseline,
            note=(
                f"p50 of {len(times)} detections; faces found per canvas (4 placed): ours "
                f"{np.mean(found):.2f}, baseline {dlib_found}"
            ),
        )
    )
