"""`facebank models prepare`: verify upstream weights and export ONNX (needs torch, hence not in service/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.runtime.manifest import Manifest


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
    from service.runtime.manifest import ManifestError, load_manifest

    if not args.source and not args.download:
        return fail("say where the weights come from: --from DIR or --download", EXIT_USAGE)
    model_dir = args.model_dir or settings.model_dir
    try:
        prepared = prepare_models(
            model_dir=model_dir, source_dir=args.source, download=args.download, names=args.only
        )
    except PrepareError as exc:
        return fail(str(exc))
    except ManifestError as exc:  # an unknown name in --only
        return fail(str(exc), EXIT_USAGE)
    if (note := _embedder_note(settings, load_manifest(prepared))) is not None:
        print(note)
    print(f"models ready in {model_dir}")
    return 0


def _embedder_note(settings: Any, prepared: Manifest) -> str | None:
    """What to know about the embedder a fresh database records (FACEBANK_EMBEDDER): that ``--only`` left it
    out and what to set instead, or that its weights are non-commercial and what else there is; or None."""
    from models.licences import non_commercial

    others = [entry.name for entry in prepared.embedders() if entry.name != settings.embedder]
    if settings.embedder not in prepared.names():
        choice = f"FACEBANK_EMBEDDER={others[0]}" if others else "an embedder"
        return (
            f"note: {settings.embedder}, the embedder a fresh database records (FACEBANK_EMBEDDER), is not "
            f"prepared: set {choice} before a fresh database's first start; a database that already "
            "records its embedder keeps it"
        )
    if non_commercial(prepared.get(settings.embedder).licence):
        note = (
            f"note: {settings.embedder}, the embedder a fresh database records (FACEBANK_EMBEDDER), has "
            "NON-COMMERCIAL weights (README, Licences)"
        )
        usable = [e.name for e in prepared.embedders() if not non_commercial(e.licence)]
        if usable:
            note += f"; another choice: FACEBANK_EMBEDDER={usable[0]} before a fresh database's first start"
        return note
    return None
