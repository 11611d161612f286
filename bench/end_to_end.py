"""Section `e2e`: photos/s from file to embedding and identify latency, beside face_recognition (dlib).

Both run one photo at a time in this process on the same LFW photos, from the JPEG file on disk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import dlib_baseline
from bench.context import Context
from bench.data import lfw_photos, unit_vectors
from bench.report import Comparison, Figure
from bench.timing import ms, p50

K = 5


def _timed(call: Any, photos: list[Path]) -> tuple[list[float], list[int], float]:
    """Seconds per photo, faces found per photo, and process CPU seconds per photo (after a warm-up call)."""
    call(photos[0])
    times, found = [], []
    cpu = time.process_time()
    for path in photos:
        start = time.perf_counter()
        found.append(call(path))
        times.append(time.perf_counter() - start)
    return times, found, (time.process_time() - cpu) / len(photos)


def run(ctx: Context) -> None:
    from service.index import make_index
    from service.pipeline import decode_image
    from service.pipeline.factory import build_pipeline

    photos = lfw_photos(ctx.lfw, 4 if ctx.quick else 60)
    gallery_size = 1_000 if ctx.quick else 100_000
    max_pixels = ctx.settings.max_image_pixels
    pipeline = ctx.pipeline
    single_thread, _ = build_pipeline(ctx.service_settings(intra_op_threads=1))

    def ours(path: Path, p: Any = pipeline) -> int:
        return len(p.analyze(decode_image(path.read_bytes(), max_pixels=max_pixels)))

    ctx.log(f"e2e: ours on {len(photos)} LFW photos")
    ours_s, ours_found, ours_cpu = _timed(ours, photos)
    one_thread_s, _, _ = _timed(lambda path: ours(path, single_thread), photos)

    # Identify: the same photos against a gallery of synthetic unit vectors in our index.
    dim = ctx.models.embedder_config.dim
    index = make_index(dim, device=ctx.device, search_threads=ctx.settings.search_threads)
    index.add(np.arange(gallery_size), unit_vectors(gallery_size, dim, seed=7))
    depth = max(4 * K, 32)  # what Gallery asks the index for, to rank identities by their best face

    def ours_identify(path: Path) -> int:
        faces = pipeline.analyze(decode_image(path.read_bytes(), max_pixels=max_pixels))
        if faces:
            index.search(np.stack([f.embedding for f in faces]), depth)
        return len(faces)

    ours_identify_s, _, _ = _timed(ours_identify, photos)

    face_recognition, why = dlib_baseline.load()
    rate_label = "face_recognition: load_image_file + face_locations (HOG) + face_encodings"
    identify_label = rate_label + f" + face_distance over {gallery_size:,} encodings, top {K}"
    if face_recognition is None:
        rate = Comparison(rate_label, None, "photos/s", missing=why)
        identify = Comparison(identify_label, None, "ms", missing=why)
        dlib_found = "—"
        cpu_note = f"; CPU per photo: ours {ms(ours_cpu):.1f} ms"
    else:
        ctx.log(f"e2e: face_recognition on the same {len(photos)} photos")

        def theirs(path: Path) -> int:
            image = face_recognition.load_image_file(path)
            return len(face_recognition.face_encodings(image, face_recognition.face_locations(image)))

        known = unit_vectors(gallery_size, 128, seed=8).astype(np.float64)  # dlib's encodings are 128-d

        def theirs_identify(path: Path) -> int:
            image = face_recognition.load_image_file(path)
            encodings = face_recognition.face_encodings(image, face_recognition.face_locations(image))
            for encoding in encodings:
                np.argsort(face_recognition.face_distance(known, encoding))[:K]
            return len(encodings)

        theirs_s, theirs_found, theirs_cpu = _timed(theirs, photos)
        theirs_identify_s, _, _ = _timed(theirs_identify, photos)
        rate = Comparison(rate_label, len(photos) / sum(theirs_s), "photos/s")
        identify = Comparison(identify_label, ms(p50(theirs_identify_s)), "ms")
        dlib_found = str(sum(theirs_found))
        cpu_note = f"; CPU per photo: ours {ms(ours_cpu):.1f} ms, face_recognition {ms(theirs_cpu):.1f} ms"

    found = f"faces found in {len(photos)} photos: ours {sum(ours_found)}, face_recognition {dlib_found}"
    ctx.add(
        Figure(
            id="e2e.photos_per_s",
            section="e2e",
            label=f"photos/s from JPEG file to embeddings, one at a time ({ctx.device})",
            value=len(photos) / sum(ours_s),
            unit="photos/s",
            better="higher",
            baseline=rate,
            also=[
                Comparison(
                    "ours with onnxruntime limited to 1 thread", len(photos) / sum(one_thread_s), "photos/s"
                )
            ],
            note=f"{len(photos)} LFW photos (250×250, first photo of each person); {found}{cpu_note}",
        )
    )
    ctx.add(
        Figure(
            id="e2e.identify_p50_ms",
            section="e2e",
            label=f"identify from JPEG file, gallery {gallery_size:,} (in process), p50",
            value=ms(p50(ours_identify_s)),
            unit="ms",
            better="lower",
            baseline=identify,
            note="ours: decode, detect, align, embed, search our index at depth 32 (as Gallery does)",
        )
    )
