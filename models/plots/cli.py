"""`facebank plot-losses`: the loss-geometry figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _plot_losses(args: argparse.Namespace, _settings: Any) -> int:
    from models.plots.loss_geometry import plot_loss_geometry

    path = plot_loss_geometry(args.out, epochs=args.epochs, seed=args.seed)
    print(f"wrote {path}")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser("plot-losses", help="2-D feature geometry per loss (PNG)")
    parser.add_argument("--out", type=Path, default=Path("loss-geometry.png"), help="PNG to write")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_plot_losses)
