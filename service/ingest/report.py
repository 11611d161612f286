"""What happened to each photo: outcomes, running totals, and the --report file (JSON, or CSV)."""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from service.ingest.scan import IngestItem


class Status(StrEnum):
    INGESTED = "ingested"
    SKIPPED = "skipped"  # nothing to do: already ingested, or not a photo to ingest
    REJECTED = "rejected"  # a quality gate or an undecodable image; not an error
    ERROR = "error"  # could not be processed; the run exits non-zero


# Skip and error reasons (reject reasons live in gates.py, plus the decoder's codes).
ALREADY_INGESTED = "already_ingested"
READ_ERROR = "read_error"
DATABASE_ERROR = "database_error"
HTTP_ERROR = "http_error"
INTERNAL_ERROR = "internal_error"
EMBEDDER_SWITCHED = "embedder_switched"  # `facebank models use` ran during the ingest


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    identity: str | None
    external_id: str | None
    status: Status
    reason: str = ""
    detail: str = ""

    @classmethod
    def of(cls, item: IngestItem, status: Status, reason: str = "", detail: str = "") -> Outcome:
        return cls(str(item.path), item.name, item.external_id, status, reason, detail)


class Tally:
    """Thread-safe counts per status and reason, and every outcome that is not `ingested`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Called after each outcome is counted (the progress bar); from whichever thread decided it.
        self.on_add: Callable[[Outcome], None] | None = None
        self.by_status: Counter[str] = Counter()
        self.by_reason: dict[str, Counter[str]] = {s.value: Counter() for s in Status}
        self.rows: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self.by_status[outcome.status] += 1
            if outcome.status is not Status.INGESTED:
                self.by_reason[outcome.status][outcome.reason] += 1
                self.rows.append(outcome)
        if self.on_add is not None:
            self.on_add(outcome)

    @property
    def processed(self) -> int:
        return sum(self.by_status.values())

    @property
    def errors(self) -> int:
        return self.by_status[Status.ERROR]

    def totals(self) -> dict[str, int]:
        return {status.value: self.by_status[status] for status in Status}

    def summary(self) -> str:
        """One line: totals, with the reasons of rejects, skips and errors."""
        parts = []
        for status in Status:
            count = self.by_status[status]
            reasons = self.by_reason.get(status, Counter())
            detail = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
            parts.append(f"{status} {count}" + (f" ({detail})" if detail else ""))
        return "; ".join(parts)


# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe; names and paths come
    from the gallery's files, which whoever supplied the photos chose."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_report(path: Path, tally: Tally, meta: dict[str, Any]) -> None:
    """JSON with `meta`, `totals`, `reasons` and `rows`; or, for a .csv path, one row per skipped, rejected
    or failed photo after `total` rows (status=total, reason=<status>, detail=<count>)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(tally.rows, key=lambda o: (o.status, o.reason, o.path))
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["status", "reason", "path", "identity", "external_id", "detail"])
            for status, count in tally.totals().items():
                writer.writerow(["total", status, "", "", "", count])
            for row in rows:
                cells = [row.status, row.reason, row.path, row.identity, row.external_id, row.detail]
                writer.writerow([spreadsheet_safe(cell) for cell in cells])
        return
    document = {
        "meta": meta,
        "totals": tally.totals(),
        "reasons": {
            status: dict(counts.most_common())
            for status, counts in tally.by_reason.items()
            if status != Status.INGESTED
        },
        "rows": [asdict(row) for row in rows],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
