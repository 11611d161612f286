"""`facebank identify PHOTO`: who is in a photo, asked of a running server, printed as a table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.config import Settings

EXIT_OK = 0
EXIT_ERROR = 1  # the server refused or could not be reached
EXIT_USAGE = 2  # the photo cannot be read


def register(commands: Any) -> None:
    """Add `identify` to an argparse subparsers object; its handler is `handler(args, settings) -> int`."""
    parser = commands.add_parser(
        "identify",
        help="who is in a photo: ask a running server, print a table",
        description="Send PHOTO to a running server's /v1/identify and print every face found: its box, "
        "the person recognised (or unknown) and the closest candidates with their scores.",
    )
    parser.add_argument("photo", type=Path, help="the photo (any format the server decodes)")
    parser.add_argument(
        "--url", help="the server (default FACEBANK_SERVER_URL, itself http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", help="an API key with the identify scope (default FACEBANK_API_KEY)")
    parser.add_argument("-k", type=int, default=3, help="candidates shown per face (default 3)")
    parser.add_argument("--threshold", type=float, help="match threshold (default: the server's)")
    parser.set_defaults(handler=identify_command)


def identify_command(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from service.cli.common import api_key_of
    from service.client import Client, FacebankError

    console, errors = Console(highlight=False), Console(stderr=True, highlight=False)
    url, api_key = args.url or settings.server_url, api_key_of(args, settings)
    try:
        photo = args.photo.read_bytes()
    except OSError as exc:
        errors.print(f"[red]error:[/red] cannot read {args.photo}: {exc.strerror or exc}")
        return EXIT_USAGE
    try:
        with Client(url, api_key=api_key) as facebank:
            answer = facebank.identify(photo, k=args.k, threshold=args.threshold)
    except FacebankError as exc:
        hint = " (set FACEBANK_API_KEY or --api-key)" if exc.status == 401 and not api_key else ""
        errors.print(f"[red]error:[/red] {url}: {exc}{hint}")
        return EXIT_ERROR
    # Left to right, as a reader scans the photo.
    faces = sorted(answer.faces, key=lambda f: (f.bbox[0], f.bbox[1]))
    title = f"{escape(args.photo.name)}: {len(faces)} face(s), threshold {answer.threshold:.3f}"
    title += f", model {answer.model}"
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("box x1,y1,x2,y2")
    table.add_column("who")
    table.add_column("score", justify="right")
    table.add_column("closest candidates")
    for number, face in enumerate(faces, 1):
        who = f"[bold]{escape(face.identity.name)}[/bold]" if face.identity else "[yellow]unknown[/yellow]"
        score = f"{face.identity.score:.3f}" if face.identity else ""
        candidates = ", ".join(f"{escape(m.name)} {m.score:.3f}" for m in face.matches) or "(no one enrolled)"
        box = ",".join(f"{v:.0f}" for v in face.bbox)
        table.add_row(str(number), box, who, score, candidates)
    console.print(table)
    return EXIT_OK
