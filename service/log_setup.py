"""How the `facebank` command logs: its own INFO lines always, libraries' chatter only with -v."""

from __future__ import annotations

import logging

# Loggers whose INFO lines say nothing a user acts on: Alembic's plugin set-up and migration steps, FAISS's
# search for the fastest build it can load ("Could not load library with AVX512 support ..."), and httpx's
# line per request of the client commands (identify, ingest --url, doctor --server).
CHATTY_LIBRARIES = ("alembic", "faiss", "httpx")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
