"""`facebank bench` / `python -m bench`: imports only argparse until the command runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

SECTIONS = ("embedder", "detector", "search", "rest", "e2e", "replicas", "ann", "scale")
# replicas starts several servers on SQLite and PostgreSQL (minutes), ann builds HNSW graphs of up to 1M
# faces (minutes on two cores), scale galleries of up to 10M (about an hour, 11 GB): asked for by name only.
DEFAULT_SECTIONS = ("embedder", "detector", "search", "rest", "e2e")

DESCRIPTION = (
    "Measure facebank on this machine, each figure beside a baseline measured in the same run: embedder "
    "and detector throughput, search against stock FAISS, a plain matmul and the memory floor, REST identify "
    "under concurrent clients, and photos/s against face_recognition (dlib)."
)


def _name_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    parser.add_argument(
        "--quick", action="store_true", help="small galleries, few iterations: under a minute"
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the figures as JSON to PATH, or to stdout (the table then goes to stderr)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(DEFAULT_SECTIONS),
        metavar="SECTION",
        help=f"which to run, in order: {' '.join(SECTIONS)} (default all but replicas, ann and scale)",
    )
    parser.add_argument(
        "--ann-sizes",
        nargs="+",
        type=int,
        default=[100_000, 1_000_000],
        metavar="N",
        help="gallery sizes of the ann section (default 100000 1000000; --quick: 10000)",
    )
    parser.add_argument(
        "--scale-sizes",
        nargs="+",
        type=int,
        default=[1_000_000, 10_000_000],
        metavar="N",
        help="gallery sizes of the scale section (default 1000000 10000000; --quick: 20000)",
    )
    parser.add_argument(
        "--scale-stores", nargs="+", metavar="STORE", help="the scale section's stores to run (default all)"
    )
    parser.add_argument(
        "--scale-no-uniform", action="store_true", help="scale: skip the uniform (worst-case) gallery"
    )
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        default=Path("~/.cache/facebank-bench").expanduser(),
        help="scale: where the celeba-train and LFW embeddings are cached (default ~/.cache/facebank-bench)",
    )
    parser.add_argument("--shared", type=Path, help="folder with data/lfw and models/ (default ../shared)")
    parser.add_argument(
        "--server-env",
        action="append",
        metavar="NAME=VALUE",
        type=_name_value,
        help="extra environment for the REST section's server, e.g. OMP_NUM_THREADS=1 (repeatable)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where the temporary SQLite database goes (default /tmp)"
    )


def _bench(args: argparse.Namespace, settings: Any) -> int:
    from bench.runner import run

    return run(args, settings)


def register(commands: Any) -> None:
    """Add `bench` to the `facebank` subcommands."""
    parser = commands.add_parser(
        "bench", help="benchmark against baselines measured in the same run", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(handler=_bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from service.config import Settings

    return _bench(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
