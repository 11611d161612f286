"""The `facebank` command: serve, models, keys, doctor and ingest, plus the commands other packages add.

Commands that need torch or the benchmark data (`eval`, `train`, `plot-losses`, `bench`, `models prepare`)
live beside their code outside `service/` and join through entry points declared in pyproject.toml
(groups `facebank.commands` and `facebank.models_commands`): `service` never imports them, so a
serving-only install runs without them. Each plugin's `register(subparsers)` must import lightly.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from typing import Any

from service.cli import doctor, identify, keys, models, serve
from service.config import Settings
from service.log_setup import configure_logging

COMMAND_PLUGINS = "facebank.commands"
MODELS_COMMAND_PLUGINS = "facebank.models_commands"


def build_parser() -> argparse.ArgumentParser:
    from service.ingest.cli import register as register_ingest

    parser = argparse.ArgumentParser(prog="facebank", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    serve.register(commands)
    models_commands = models.register(commands)
    keys.register(commands)
    doctor.register(commands)
    register_ingest(commands)
    identify.register(commands)
    _add_plugins(MODELS_COMMAND_PLUGINS, models_commands)
    _add_plugins(COMMAND_PLUGINS, commands)
    return parser


def _add_plugins(group: str, subparsers: Any) -> None:
    for plugin in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            register = plugin.load()
        except ImportError as exc:  # e.g. a package left out of this install: the rest still works
            print(f"warning: command {plugin.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(subparsers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    settings = Settings()
    return int(args.handler(args, settings))
