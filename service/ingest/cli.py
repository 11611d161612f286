"""`facebank ingest PATH`: fill the gallery from a folder or a CSV manifest, embedded or through --url."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.config import Settings

log = logging.getLogger(__name__)

# Exit codes: rejects are not errors.
EXIT_OK = 0
EXIT_ERRORS = 1  # some photos failed (unreadable, database or HTTP errors), or the run could not start
EXIT_USAGE = 2  # the input cannot be read (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM after finishing the photos in flight

DEFAULT_WORKERS = 2
DEFAULT_URL_WORKERS = 4

DESCRIPTION = """\
Ingest photos: PATH is a folder with one sub-folder per identity (the folder name is the identity's name, or
its external_id with --match-external-id), or a CSV manifest `path,identity[,external_id]` (paths relative to
the manifest). Photos outside the folder (symbolic links out of it; absolute or '..' manifest paths) are
refused unless --allow-outside-paths. An identity is matched by external_id when given, else by exact name
(the oldest identity of that name), and created when missing. A photo already ingested (same sha256,
identity and model) is skipped, so a stopped or killed run can simply be run again.

Without --url, faces are written straight into the configured database (FACEBANK_DATABASE_URL); servers
running on that database see them as they are committed (they follow its change log). With --url, photos go
through a running server's REST API.

Exit status: 0 when every photo was ingested, skipped or rejected by a gate; 1 when any photo failed or the
run could not start; 2 for unusable input; 130 when stopped by Ctrl-C."""


def register(commands: Any) -> None:
    """Add `ingest` to an argparse subparsers object; its handler is `handler(args, settings) -> int`."""
    from service.ingest.gates import Gates

    defaults = Gates()
    parser = commands.add_parser(
        "ingest",
        help="ingest a folder or CSV manifest of photos into the gallery",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="gallery folder or .csv manifest")
    parser.add_argument(
        "--url", help="ingest through the server at this base URL (e.g. http://127.0.0.1:8000)"
    )
    parser.add_argument(
        "--api-key",
        help="--url: API key with the enroll and identify scopes (default FACEBANK_API_KEY)",
    )
    parser.add_argument(
        "--report", type=Path, help="write totals and every skipped/rejected/failed photo (.json or .csv)"
    )
    parser.add_argument(
        "--min-face-size",
        type=float,
        default=defaults.min_face_size,
        metavar="PX",
        help="reject faces whose box is narrower or shorter than this "
        f"(default {defaults.min_face_size:g}; 0 off)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=defaults.min_score,
        help=f"reject faces with a lower detection score (default {defaults.min_score:g}; 0 off)",
    )
    parser.add_argument(
        "--min-blur",
        type=float,
        default=defaults.min_blur,
        help="reject aligned crops whose variance of Laplacian is lower, i.e. blurrier "
        f"(default {defaults.min_blur:g}; 0 off)",
    )
    parser.add_argument(
        "--multi-face",
        choices=["largest", "skip"],
        default=defaults.multi_face,
        help="photos with several faces: enroll the largest, or reject them (default largest)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        help=f"embedded: threads that read, decode, detect and align (default {DEFAULT_WORKERS}); "
        f"--url: requests in flight (default {DEFAULT_URL_WORKERS})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=16,
        help="embedded: faces per embedding run (default 16); --url: ignored, the API enrolls one photo "
        "per request",
    )
    parser.add_argument(
        "--match-external-id",
        action="store_true",
        help="folders: the sub-folder name is the identity's external_id (and its name when created)",
    )
    parser.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="accept photos outside the gallery folder: symbolic links out of it, and manifest rows with "
        "absolute or '..' paths (refused by default)",
    )
    parser.set_defaults(handler=ingest_command)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def ingest_command(args: argparse.Namespace, settings: Settings) -> int:
    from service.ingest.gates import Gates
    from service.ingest.progress import StopFlag, make_console, progress_bar
    from service.ingest.report import Outcome, Status, Tally, write_report
    from service.ingest.scan import ScanError, scan

    console = make_console()
    try:
        scanned = scan(
            args.path, match_external_id=args.match_external_id, allow_outside=args.allow_outside_paths
        )
    except ScanError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    gates = Gates(
        min_face_size=args.min_face_size,
        min_score=args.min_score,
        min_blur=args.min_blur,
        multi_face=args.multi_face,
    )
    tally = Tally()
    for ignored in scanned.ignored:
        tally.add(Outcome(str(ignored.path), None, None, Status.SKIPPED, ignored.reason))
    workers = args.workers or (DEFAULT_URL_WORKERS if args.url else DEFAULT_WORKERS)
    mode = "url" if args.url else "embedded"
    console.print(
        f"ingest: {len(scanned.items)} photos from {args.path} ({mode}"
        + (f" {args.url}" if args.url else f", database {_safe_url(settings.resolved_database_url)}")
        + f", {workers} workers)"
    )
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    stop = StopFlag()
    info: dict[str, Any] = {}
    fatal: str | None = None
    from service.active_model import EmbedderChoiceError
    from service.runtime import ModelLoadError

    try:
        with stop.installed(console), progress_bar(console, tally, len(scanned.items)):
            info = _run(args, settings, scanned.items, gates, workers, tally, stop)
    except KeyboardInterrupt:
        stop.set()
        fatal = "aborted by a second interrupt; photos not committed yet were dropped (none is half-written)"
    except (ModelLoadError, EmbedderChoiceError) as exc:
        fatal = str(exc)  # says what to prepare or set: no class name needed
    except Exception as exc:
        log.debug("ingest failed", exc_info=True)
        fatal = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    images = tally.processed - len(scanned.ignored)
    rate = images / seconds if seconds > 0 else 0.0
    if args.report:
        meta = {
            "path": str(args.path),
            "mode": mode,
            "url": args.url,
            "started": started_at.isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "photos": len(scanned.items),
            "processed": images,
            "images_per_s": round(rate, 2),
            "workers": workers,
            "batch_size": args.batch_size,
            "gates": {
                "min_face_size": gates.min_face_size,
                "min_score": gates.min_score,
                "min_blur": gates.min_blur,
                "multi_face": gates.multi_face,
            },
            "interrupted": bool(stop),
            "fatal": fatal,
            **info,
        }
        write_report(args.report, tally, meta)
    console.print(f"{images} of {len(scanned.items)} photos in {seconds:.1f} s ({rate:.1f} images/s)")
    console.print(tally.summary(), highlight=False)
    if args.report:
        console.print(f"report: {args.report}")
    if fatal is not None:
        console.print(f"[red]error:[/red] {fatal}")
        return EXIT_INTERRUPTED if stop and fatal.startswith("aborted") else EXIT_ERRORS
    if stop:
        console.print("[yellow]stopped early; run the same command again to go on[/yellow]")
        return EXIT_INTERRUPTED
    return EXIT_ERRORS if tally.errors else EXIT_OK


def _run(
    args: argparse.Namespace,
    settings: Settings,
    items: list[Any],
    gates: Any,
    workers: int,
    tally: Any,
    stop: Any,
) -> dict[str, Any]:
    if args.url:
        from service.cli.common import api_key_of
        from service.ingest.remote import RemoteOptions, run_remote

        remote = run_remote(
            items,
            base_url=args.url,
            settings=settings,
            options=RemoteOptions(gates=gates, concurrency=workers, api_key=api_key_of(args, settings)),
            tally=tally,
            stop=stop,
        )
        return {"model": remote.model, "requests": remote.requests, "retries": remote.retries}
    from service.ingest.embedded import RunOptions, run_embedded

    run = run_embedded(
        items,
        settings=settings,
        options=RunOptions(gates=gates, workers=workers, batch_size=args.batch_size),
        tally=tally,
        stop=stop,
    )
    return {
        "model": run.model,
        "database": _safe_url(settings.resolved_database_url),
        "stage_thread_seconds": {k: round(v, 2) for k, v in sorted(run.stage_seconds.items())},
    }


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m service.ingest PATH ...`: the same command without the rest of the facebank CLI."""
    parser = argparse.ArgumentParser(prog="python -m service.ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Both `python -m service.ingest PATH` and the usage line's `python -m service.ingest ingest PATH`.
    args = parser.parse_args(argv if argv[:1] == ["ingest"] else ["ingest", *argv])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.handler(args, Settings()))
