"""The one rule for a test whose prerequisite (PostgreSQL, ../shared, an installed peer) is missing.

On a developer's machine it skips, saying why. In CI (`CI` set, as every CI service does) it fails: CI
promises those prerequisites, so their absence is a broken run, not ~250 quiet skips.

    from tests._ci import skip_or_fail_in_ci

    if not PAIRS.is_file():
        skip_or_fail_in_ci(f"needs {PAIRS} (../shared)")
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# Values of CI that mean "not CI" (CI=false is how some runners switch it off).
_NOT_CI = {"", "0", "false", "no"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _NOT_CI


def skip_or_fail_in_ci(reason: str) -> NoReturn:
    """Skip with `reason`; in CI fail with it instead."""
    if in_ci():
        pytest.fail(f"{reason}; CI must provide it (CI={os.environ['CI']!r})", pytrace=False)
    pytest.skip(f"{reason}; CI always has it")
