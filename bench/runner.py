"""Run the chosen sections in one process and print (or write as JSON) every figure beside its baseline."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import dlib_baseline
from bench.context import Context, DeviceUnavailable, check_device, environment
from bench.data import DataMissing, lfw_dir, shared_dir
from bench.report import Report, format_targets, load_average
from bench.targets import evaluate
from service.config import Settings


def _sections() -> dict[str, Callable[[Context], None]]:
    from bench import ann, end_to_end, inference, replicas, rest, scale, search

    return {
        "embedder": inference.run_embedder,
        "detector": inference.run_detector,
        "search": search.run,
        "rest": rest.run,
        "e2e": end_to_end.run,
        "replicas": replicas.run,
        "ann": ann.run,
        "scale": scale.run,
    }


def run(args: argparse.Namespace, settings: Settings, argv: list[str] | None = None) -> int:
    from service.runtime import ModelLoadError

    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    try:
        check_device(args.device)
        shared = args.shared or shared_dir()
        lfw = lfw_dir(shared)
    except (DeviceUnavailable, DataMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    env = environment(args.device, argv if argv is not None else sys.argv)
    env["quick"] = args.quick
    env["search_threads_setting"] = settings.search_threads
    env["intra_op_threads_setting"] = settings.intra_op_threads
    env["face_recognition"] = dlib_baseline.version()
    env["server_env"] = args.server_env or []
    report = Report(environment=env)
    print(
        f"facebank bench {'--quick ' if args.quick else ''}on {args.device}: {env['cpu']}, "
        f"{env['cpu_cores']} cores, "
        f"{env['memory_gib']} GiB; load {' '.join(map(str, env['load_at_start']))}; {env['date']}",
        file=out,
        flush=True,
    )
    sections = _sections()
    with tempfile.TemporaryDirectory(prefix="facebank-bench-", dir=args.work_dir) as work:
        context = Context(
            settings=settings,
            device=args.device,
            quick=args.quick,
            shared=shared,
            lfw=lfw,
            work_dir=Path(work),
            report=report,
            out=out,
            server_env=dict(item.split("=", 1) for item in args.server_env or []),
            ann_sizes=tuple(args.ann_sizes),
            scale_sizes=tuple(args.scale_sizes),
            scale_stores=tuple(args.scale_stores or ()),
            scale_uniform=not args.scale_no_uniform,
            embedding_cache=args.embedding_cache,
        )
        try:
            context.models  # noqa: B018 (load once, fail early with the reason)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for name in args.sections:
            print(f"== {name}", file=out, flush=True)
            sections[name](context)
    report.targets = evaluate(report, device=args.device, quick=args.quick)
    env["load_at_end"] = load_average()
    print(format_targets(report.targets), file=out)
    print(f"load at end: {' '.join(map(str, env['load_at_end']))}", file=out, flush=True)
    if args.json == "-":
        report.write_json(sys.stdout)
    elif args.json:
        with open(args.json, "w") as handle:
            report.write_json(handle)
        print(f"wrote {args.json}", file=out)
    return 0
