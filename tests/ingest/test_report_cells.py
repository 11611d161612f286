"""CSV ingest reports cannot carry spreadsheet formulas out of a gallery's file and folder names."""

from __future__ import annotations

import csv
from pathlib import Path

from service.ingest.report import Outcome, Status, Tally, write_report


def test_csv_report_cells_that_look_like_formulas_are_escaped(tmp_path: Path) -> None:
    tally = Tally()
    hostile = '=HYPERLINK("http://evil.example","x")'
    tally.add(
        Outcome(f"/photos/{hostile}.jpg", "+1+cmd|' /C calc'!A0", "@SUM(A1)", Status.REJECTED, "no_face")
    )
    tally.add(Outcome("/photos/-2.jpg", hostile, None, Status.SKIPPED, "already_ingested", "\t=1"))
    report = tmp_path / "report.csv"
    write_report(report, tally, {})
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    cells = [value for row in rows for value in row.values() if value]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    (skipped,) = [row for row in rows if row["status"] == "skipped"]
    assert skipped["identity"] == "'" + hostile and skipped["detail"] == "'\t=1"
    # Plain values and the totals stay as they were.
    assert {row["reason"] for row in rows if row["status"] == "total"} == {s.value for s in Status}
    (rejected,) = [row for row in rows if row["status"] == "rejected"]
    assert rejected["path"] == f"/photos/{hostile}.jpg" and rejected["reason"] == "no_face"
