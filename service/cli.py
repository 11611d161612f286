"""The `facebank` command: serve, models, and the tools that compose the rest."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import Settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.api import create_app

    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Inference runs in FastAPI's thread pool; one process keeps one copy of the index.
        workers=1,
    )
    return 0


def _models_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from models.export.prepare import PrepareError, prepare_models

    if not args.source and not args.download:
        print("say where the weights come from: --from DIR or --download", file=sys.stderr)
        return 2
    model_dir = args.model_dir or settings.model_dir
    try:
        prepare_models(model_dir=model_dir, source_dir=args.source, download=args.download)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"models ready in {model_dir}")
    return 0


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    from models.manifest import PROJECT_MANIFEST, load_manifest

    prepared = settings.model_dir / "manifest.toml"
    manifest = load_manifest(prepared if prepared.is_file() else PROJECT_MANIFEST)
    active = {settings.detector, settings.embedder}
    where = prepared if prepared.is_file() else f"{PROJECT_MANIFEST} (not prepared yet)"
    print(f"manifest: {where}")
    for entry in manifest.entries():
        mark = "*" if entry.name in active else " "
        print(f"{mark} {entry.tag:32} {entry.kind:9} {entry.licence}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the REST API (uvicorn)")
    serve.add_argument("--host", help="bind address (default FACEBANK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FACEBANK_PORT or 8000)")
    serve.set_defaults(handler=_serve)

    models = commands.add_parser("models", help="prepare and inspect models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = models_commands.add_parser("prepare", help="verify upstream weights and export ONNX")
    source = prepare.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", type=Path, help="folder holding the upstream weight files")
    source.add_argument("--download", action="store_true", help="fetch the pinned upstream URLs")
    prepare.add_argument("--model-dir", type=Path, help="output folder (default FACEBANK_MODEL_DIR)")
    prepare.set_defaults(handler=_models_prepare)
    listing = models_commands.add_parser("list", help="models in the manifest; * marks the active ones")
    listing.set_defaults(handler=_models_list)

    for register in _feature_commands():
        register(commands)
    return parser


def _feature_commands() -> list[Callable[[Any], None]]:
    """Commands that live beside their feature; each module's `register(commands)` must import lightly."""
    from models.plots.cli import register as register_plots

    return [register_plots]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    return int(args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())
