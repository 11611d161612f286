"""What the command groups share: a migrated database session, error lines, a yes/no question."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from service.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Exit codes of every command: 1 when the work failed, 2 when the command line or configuration is unusable.
EXIT_FAILED = 1
EXIT_USAGE = 2


@contextmanager
def database(settings: Settings, *, migrate: bool = True) -> Iterator[Session]:
    """A session on the configured database, migrated to the newest schema first unless `migrate` is off."""
    from service.storage import make_engine, make_session_factory, upgrade_to_head

    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        if migrate:
            upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print `error: message` to standard error and return the exit code to end the command with."""
    print(f"error: {message}", file=sys.stderr)
    return code


def confirm(question: str) -> bool:
    """Ask on the terminal; no terminal (a pipe, CI) counts as no."""
    if not sys.stdin.isatty():
        print(f"{question} [y/N] no answer possible (standard input is not a terminal)", file=sys.stderr)
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


def api_key_of(args: Any, settings: Settings) -> str | None:
    """The key a client command sends: its --api-key, else FACEBANK_API_KEY."""
    if getattr(args, "api_key", None):
        return str(args.api_key)
    return settings.api_key.get_secret_value() if settings.api_key is not None else None
