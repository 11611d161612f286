"""What a model's licence lets users do: the one rule that `models prepare` and the model cards rely on."""

from __future__ import annotations

import re

# SPDX "-NC" licences (CC-BY-NC-4.0, CC-BY-NC-SA-4.0, ...) or the words themselves.
_NON_COMMERCIAL = re.compile(r"\bCC-BY(-[A-Z]+)*-NC\b|non-commercial|noncommercial", re.IGNORECASE)


def non_commercial(licence: str) -> bool:
    """True when the licence text restricts the weights to non-commercial use."""
    return bool(_NON_COMMERCIAL.search(licence))
