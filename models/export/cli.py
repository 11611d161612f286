"""`facebank models prepare`: verify upstream weights and export ONNX (needs torch, hence not in service/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(models_commands: Any) -> None:
    prepare = models_commands.add_parser("prepare", help="verify upstream weights and export ONNX")
    source = prepare.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", type=Path, help="folder holding the upstream weight files")
    source.add_argument("--download", action="store_true", help="fetch the pinned upstream URLs")
    prepare.add_argument("--model-dir", type=Path, help="output folder (default FACEBANK_MODEL_DIR)")
    prepare.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="prepare only these models, e.g. to leave out non-commercial weights (default: all)",
    )
    prepare.set_defaults(handler=_models_prepare)


def _models_prepare(args: argparse.Namespace, settings: Any) -> int:
    from models.export.prepare import PrepareError, prepare_models
    from service.cli.common import EXIT_USAGE, fail
    from service.runtime.manifest import ManifestError

    if not args.source and not args.download:
        return fail("say where the weights come from: --from DIR or --download", EXIT_USAGE)
    model_dir = args.model_dir or settings.model_dir
    try:
        prepare_models(model_dir=model_dir, source_dir=args.source, download=args.download, names=args.only)
    except PrepareError as exc:
        return fail(str(exc))
    except ManifestError as exc:  # an unknown name in --only
        return fail(str(exc), EXIT_USAGE)
    print(f"models ready in {model_dir}")
    return 0
