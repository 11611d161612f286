"""Section `rest`: POST /v1/identify p50/p99 with 1, 8 and 32 concurrent clients against a real server.

The SQL database is filled with real LFW people (their first photo enrolled through the pipeline) and
synthetic unit embeddings up to the gallery size; then `facebank serve` starts on a free loopback port and
rebuilds its index from SQL, and httpx clients identify the second photos of the LFW people.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

import numpy as np

from bench.context import Context
from bench.data import lfw_people_with_two_photos
from bench.report import Comparison, Figure
from bench.server import Probe, cpu_seconds, load, serve
from bench.sqlfill import FACES_PER_IDENTITY, Person, insert_people, insert_synthetic, raw_scan_s
from bench.timing import ms, p50, percentile, samples

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from service.gallery import Gallery

CLIENTS = (1, 8, 32)
K = 5


def gallery_sizes(ctx: Context) -> list[int]:
    return [2_000] if ctx.quick else [100_000, 1_000_000]


def _requests(ctx: Context, clients: int) -> int:
    if ctx.quick:
        return max(12, clients)
    return {1: 150, 8: 320}.get(clients, 480)


def _size_name(n: int) -> str:
    return f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"


def _people(ctx: Context) -> tuple[list[Person], list[Probe]]:
    """LFW people with two photos: the first is enrolled, the second is what clients send."""
    from service.pipeline import decode_image
    from service.pipeline.face_policy import largest_face

    people, probes = [], []
    for name in lfw_people_with_two_photos(ctx.lfw, 8 if ctx.quick else 100):
        enrolled = (ctx.lfw / name / f"{name}_0001.jpg").read_bytes()
        image = decode_image(enrolled, max_pixels=ctx.settings.max_image_pixels)
        faces = ctx.pipeline.detect(image)
        if not faces:
            continue
        (largest,) = ctx.pipeline.embed_faces(image, [largest_face(faces)])
        people.append(Person(name, largest.embedding))
        photo = ctx.lfw / name / f"{name}_0002.jpg"
        probes.append(Probe(name, photo.name, photo.read_bytes()))
    return people, probes


def _rebuild_parts(ctx: Context, sessions: sessionmaker[Session], tag: str, dim: int) -> list[Comparison]:
    """Where Gallery.rebuild spends its time: reading through the repository, and adding to the index."""
    import faiss

    from service.index import make_index
    from service.storage import repository as repo

    batches = []
    started = time.perf_counter()
    with sessions() as session:
        for keys, vectors, _ in repo.iter_embeddings(session, model=tag):
            batches.append((keys, vectors))
    read_s = time.perf_counter() - started
    index = make_index(dim, device=ctx.device, search_threads=ctx.settings.search_threads)
    started = time.perf_counter()
    for keys, vectors in batches:
        index.add(keys, vectors)
    add_s = time.perf_counter() - started
    stock = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    started = time.perf_counter()
    for keys, vectors in batches:
        stock.add_with_ids(vectors, keys)
    stock_s = time.perf_counter() - started
    size = len(batches[0][0]) if batches else 0
    return [
        Comparison("of which repository.iter_embeddings alone", read_s, "s", compare=False),
        Comparison(
            f"of which FaissFlatIndex.add, {len(batches)} batches of {size:,}", add_s, "s", compare=False
        ),
        Comparison("stock IndexIDMap2.add_with_ids, same batches", stock_s, "s", compare=False),
    ]


def _gallery_identify(
    ctx: Context, name: str, n: int, gallery: Gallery, people: list[Person], sessions: sessionmaker[Session]
) -> Figure:
    """Gallery.identify (what the route's search stage runs) beside the index search inside it, and SQL."""
    from service.storage import repository as repo

    queries = [p.embedding[None, :] for p in people]
    repeat = 30 if ctx.quick else 200
    depth = max(4 * K, 32)
    cycle = iter(range(10**9))

    def query() -> np.ndarray:
        return queries[next(cycle) % len(queries)]

    identify = samples(lambda: gallery.identify(query(), K), repeat=repeat, warmup=3)
    search = samples(lambda: gallery.index.search(query(), depth), repeat=repeat, warmup=3)
    some_ids = [gallery.identify(queries[0], K)[0][i].identity_id for i in range(K)]

    def names() -> None:
        with sessions() as session:
            repo.identity_names(session, identity_ids=some_ids)

    sql = samples(names, repeat=repeat, warmup=3)
    return Figure(
        id=f"rest.{name}.gallery_identify_p50_ms",
        section="rest",
        label=f"Gallery.identify, one face, k={K}, gallery {n:,} (in process), p50",
        value=ms(p50(identify)),
        unit="ms",
        better="lower",
        baseline=Comparison(f"the index search inside it (depth {depth})", ms(p50(search)), "ms"),
        also=[Comparison(f"the SQL name lookup inside it ({K} identities, new session)", ms(p50(sql)), "ms")],
        note=f"p50 of {repeat} calls; FAISS threads {ctx.settings.search_threads}",
    )


def run(ctx: Context) -> None:
    from service.gallery import Gallery
    from service.index import make_index
    from service.pipeline import decode_image
    from service.storage.engine import make_engine, make_session_factory
    from service.storage.migrate import upgrade_to_head

    database = ctx.work_dir / "rest.sqlite"
    url = f"sqlite:///{database}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    tag, dim = ctx.models.embedder_tag, ctx.models.embedder_config.dim
    settings = ctx.service_settings()
    ctx.log("rest: enrolling LFW people in process")
    people, probes = _people(ctx)
    insert_people(engine, people, model=tag)
    in_sql = len(people)

    for n in gallery_sizes(ctx):
        name = _size_name(n)
        ctx.log(f"rest: filling SQL up to {n:,} faces")
        fill_s = insert_synthetic(engine, n - in_sql, model=tag, dim=dim, seed=100 + in_sql)
        filled, in_sql = n - in_sql, n

        ctx.log("rest: rebuilding the gallery in process, and reading the rows raw")
        gallery = Gallery(
            make_index(dim, device=ctx.device, search_threads=settings.search_threads),
            make_session_factory(engine),
            tag,
        )
        started = time.perf_counter()
        gallery.rebuild()
        rebuild_s = time.perf_counter() - started
        started = time.perf_counter()
        gallery.audit(since_rebuild=True)
        audit_s = time.perf_counter() - started
        raw_s, _ = raw_scan_s(str(database), tag)
        parts = _rebuild_parts(ctx, make_session_factory(engine), tag, dim)

        # The same work as the route, in this process: decode, detect, align, embed, Gallery.identify.
        in_process = []
        for i in range(len(probes) if ctx.quick else max(len(probes), 100)):
            probe = probes[i % len(probes)]
            start = time.perf_counter()
            faces = ctx.pipeline.analyze(decode_image(probe.data, max_pixels=ctx.settings.max_image_pixels))
            if faces:
                gallery.identify(np.stack([f.embedding for f in faces]), K)
            in_process.append(time.perf_counter() - start)
        identify_figure = _gallery_identify(ctx, name, n, gallery, people, make_session_factory(engine))
        del gallery
        gc.collect()

        ctx.log(f"rest: starting the server on a {n:,}-face database")
        with serve(settings, url, ctx.work_dir, extra_env=ctx.server_env) as server:
            ctx.add(
                Figure(
                    id=f"rest.{name}.rebuild_s",
                    section="rest",
                    label=f"Gallery.rebuild from SQLite, {n:,} faces (in process)",
                    value=rebuild_s,
                    unit="s",
                    better="lower",
                    baseline=Comparison("raw sqlite3 read of the same rows into arrays", raw_s, "s"),
                    also=[
                        *parts,
                        Comparison(
                            "Gallery.audit(since_rebuild=True), which the server runs after the rebuild",
                            audit_s,
                            "s",
                            compare=False,
                        ),
                        Comparison(
                            "server start until /healthz answers (models, migrations, rebuild)",
                            server.ready_s,
                            "s",
                            compare=False,
                        ),
                    ],
                    note=(
                        f"{filled:,} synthetic faces ({FACES_PER_IDENTITY} per identity) bulk-inserted in "
                        f"{fill_s:.1f} s ({filled / fill_s if fill_s else 0:,.0f} rows/s, "
                        "SQLAlchemy core executemany)"
                    ),
                )
            )
            ctx.add(identify_figure)
            load(server.url, probes, clients=1, requests=5)  # warm-up
            for clients in CLIENTS:
                ctx.log(f"rest: {clients} client(s)")
                cpu_before = cpu_seconds(server.process.pid)
                result = load(server.url, probes, clients=clients, requests=_requests(ctx, clients))
                cpu_after = cpu_seconds(server.process.pid)
                stages = ", ".join(f"{s} {np.median(v):.1f}" for s, v in result.stages_ms.items())
                note = (
                    f"{len(result.latencies_s)} requests at {result.requests_per_s:.1f} req/s, "
                    f"{len(result.errors)} errors, top-1 {result.correct}/{len(result.latencies_s)}; "
                    f"server stages p50 (ms): {stages}"
                )
                if cpu_before is not None and cpu_after is not None and result.latencies_s:
                    per_request = (cpu_after - cpu_before) / len(result.latencies_s)
                    note += f"; server CPU per request {ms(per_request):.1f} ms"
                if result.errors:
                    note += f"; first error: {result.errors[0]}"
                for q, label in ((50, "p50"), (99, "p99")):
                    value = ms(percentile(result.latencies_s, q)) if result.latencies_s else None
                    ctx.add(
                        Figure(
                            id=f"rest.{name}.clients{clients}.{label}_ms",
                            section="rest",
                            label=f"POST /v1/identify {label}, {clients} client(s), gallery {n:,}",
                            value=value,
                            unit="ms",
                            better="lower",
                            missing=None if value is not None else "every request failed",
                            baseline=Comparison(
                                f"same work in process, no HTTP, one at a time ({label})",
                                ms(percentile(in_process, q)),
                                "ms",
                            ),
                            note=note,
                        )
                    )
    engine.dispose()
