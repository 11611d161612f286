"""Two servers on one database: how long a write through one takes to reach the other's index, and what
following the change log costs a server at rest. PostgreSQL (NOTIFY wakes the follower) and SQLite (it polls
every FACEBANK_FOLLOW_POLL_MS), each measured in the same run."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bench.context import Context
from bench.data import lfw_people_with_two_photos
from bench.report import Comparison, Figure
from bench.server import Probe, cpu_seconds, load, serve
from bench.timing import ms, p50, percentile

# The PostgreSQL server to create a scratch database on (dropped afterwards).
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# A follower that effectively never polls: the baseline for what following costs at rest.
IDLE_POLL_MS = "60000"


@contextmanager
def _postgres_database() -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    name = f"facebank_bench_{secrets.token_hex(4)}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _index_faces(http: httpx.Client) -> int:
    return int(http.get("/readyz").json()["checks"]["index_faces"])


def _until_index_holds(http: httpx.Client, count: int, timeout_s: float = 30.0) -> float:
    """Seconds until the server's index holds `count` faces (polled every 2 ms)."""
    start = time.perf_counter()
    while _index_faces(http) != count:
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"the index did not reach {count} faces in {timeout_s} s")
        time.sleep(0.002)
    return time.perf_counter() - start


def _propagation(ctx: Context, backend: str, url: str, people: list[str]) -> None:
    settings = ctx.service_settings()
    adds: list[float] = []
    removals: list[float] = []
    local: list[float] = []
    a_dir, b_dir = ctx.work_dir / f"{backend}-a", ctx.work_dir / f"{backend}-b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        serve(settings, url, a_dir, extra_env=ctx.server_env) as a_server,
        serve(settings, url, b_dir, extra_env=ctx.server_env) as b_server,
        httpx.Client(base_url=a_server.url, timeout=120) as a,
        httpx.Client(base_url=b_server.url, timeout=120) as b,
    ):
        faces = _index_faces(a)
        for name in people:
            # At a random moment of B's polling period: writes in lockstep with it would all wait alike.
            time.sleep(random.uniform(0, settings.follow_poll_ms / 1000))
            identity = a.post("/v1/identities", json={"name": name}).json()["id"]
            photo = (ctx.lfw / name / f"{name}_0001.jpg").read_bytes()
            files = {"image": ("p.jpg", photo, "image/jpeg")}
            response = a.post(f"/v1/identities/{identity}/faces", files=files)
            response.raise_for_status()
            # From A's answer (the write is committed) until B's index holds the face.
            faces += 1
            adds.append(_until_index_holds(b, faces))
            local.append(_index_faces(a) == faces)
            time.sleep(random.uniform(0, settings.follow_poll_ms / 1000))
            deleted = a.delete(f"/v1/identities/{identity}/faces/{response.json()['id']}")
            deleted.raise_for_status()
            faces -= 1
            removals.append(_until_index_holds(b, faces))
            time.sleep(random.uniform(0, settings.follow_poll_ms / 1000))
    ctx.log(f"replicas/{backend}: {len(adds)} adds and removals measured")
    for kind, values in (("add", adds), ("remove", removals)):
        for q, label in ((50, "p50"), (99, "p99")):
            ctx.add(
                Figure(
                    id=f"replicas.{backend}.{kind}_{label}_ms",
                    section="replicas",
                    label=f"face {kind} through replica A reaches replica B's index, {label} ({backend})",
                    value=ms(percentile(values, q)),
                    unit="ms",
                    better="lower",
                    baseline=Comparison(
                        "FACEBANK_FOLLOW_POLL_MS, the polling period", settings.follow_poll_ms, "ms"
                    ),
                    note=f"{len(values)} writes, one at a time; max {ms(max(values)):.1f} ms"
                    + (
                        f"; A's own index held each at its answer: {sum(local)}/{len(local)}"
                        if kind == "add"
                        else ""
                    ),
                )
            )


def _idle_cpu(ctx: Context, url: str) -> None:
    """CPU a server spends at rest, following vs not: the follower's own cost, free of request noise."""
    settings = ctx.service_settings()
    window_s = 5.0 if ctx.quick else 30.0
    used: dict[str, float] = {}
    for mode, env in (("following", {}), ("idle", {"FACEBANK_FOLLOW_POLL_MS": IDLE_POLL_MS})):
        data_dir = ctx.work_dir / f"rest-{mode}"
        data_dir.mkdir()
        with serve(settings, url, data_dir, extra_env={**ctx.server_env, **env}) as server:
            time.sleep(2.0)  # past start-up
            before = cpu_seconds(server.process.pid) or 0.0
            time.sleep(window_s)
            used[mode] = ((cpu_seconds(server.process.pid) or 0.0) - before) / window_s
    ctx.add(
        Figure(
            id="replicas.follow_cost.idle_cpu_ms_per_s",
            section="replicas",
            label="server CPU at rest, following the change log every "
            f"{settings.follow_poll_ms:.0f} ms (SQLite)",
            value=used["following"] * 1000,
            unit="ms/s",
            better="lower",
            baseline=Comparison("the same server with the follower idle", used["idle"] * 1000, "ms/s"),
            note=f"CPU seconds of the server process over {window_s:.0f} s at rest, per second",
        )
    )


def _follow_cost(ctx: Context, url: str, probes: list[Probe]) -> None:
    settings = ctx.service_settings()
    requests = 20 if ctx.quick else 120
    rates: dict[str, list[float]] = {"following": [], "idle": []}
    # Alternate the two servers to spread the machine's drift over both.
    for round_ in range(2 if ctx.quick else 3):
        for mode, env in (("following", {}), ("idle", {"FACEBANK_FOLLOW_POLL_MS": IDLE_POLL_MS})):
            data_dir = ctx.work_dir / f"cost-{mode}-{round_}"
            data_dir.mkdir()
            with serve(settings, url, data_dir, extra_env={**ctx.server_env, **env}) as server:
                load(server.url, probes, clients=1, requests=5)  # warm-up
                rates[mode].append(load(server.url, probes, clients=2, requests=requests).requests_per_s)
    ctx.add(
        Figure(
            id="replicas.follow_cost.identify_rps",
            section="replicas",
            label="identify throughput at rest, 2 clients, follower polling every "
            f"{settings.follow_poll_ms:.0f} ms (SQLite)",
            value=p50(rates["following"]),
            unit="req/s",
            better="higher",
            baseline=Comparison(
                "the same with the follower idle (polling once a minute)", p50(rates["idle"]), "req/s"
            ),
            note=f"median of {len(rates['idle'])} alternating runs of {requests} requests each; "
            f"following {_rounded(rates['following'])}, idle {_rounded(rates['idle'])} req/s",
        )
    )


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def run(ctx: Context) -> None:
    people = lfw_people_with_two_photos(ctx.lfw, 10 if ctx.quick else 60)
    probes = [
        Probe(name, f"{name}_0002.jpg", (ctx.lfw / name / f"{name}_0002.jpg").read_bytes()) for name in people
    ]
    sqlite_url = f"sqlite:///{ctx.work_dir / 'replicas.sqlite'}"
    _propagation(ctx, "sqlite", sqlite_url, people)
    try:
        with _postgres_database() as postgres_url:
            _propagation(ctx, "postgresql", postgres_url, people)
    except Exception as exc:  # no PostgreSQL here: say so beside the SQLite figures
        ctx.log(f"replicas: PostgreSQL figures not measured: {exc}")
    _idle_cpu(ctx, sqlite_url)
    _follow_cost(ctx, sqlite_url, probes)
