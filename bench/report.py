"""Figures, each beside its baseline measured in the same run, and the targets they are held to."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

Better = Literal["higher", "lower"]
Status = Literal["pass", "miss", "not measured"]


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


@dataclass
class Comparison:
    """A value to read a figure against. `missing` says why there is no value."""

    label: str
    value: float | None
    unit: str
    missing: str | None = None
    compare: bool = True  # False for context (e.g. a total that includes the figure): no better/worse verdict


@dataclass
class Figure:
    id: str  # stable key, e.g. "search.1m.single_p50_ms"
    section: str
    label: str
    value: float | None
    unit: str
    better: Better
    baseline: Comparison
    also: list[Comparison] = field(default_factory=list)
    note: str = ""
    missing: str | None = None  # why the figure itself was not measured
    load: tuple[float, float, float] = field(default_factory=load_average)

    def versus(self, other: Comparison) -> str:
        """'2.5× better' or '1.3× worse' than `other`, in the direction that matters for this figure."""
        if self.value is None or other.value is None or other.value == 0 or self.value == 0:
            return ""
        if other.unit != self.unit:
            return ""
        ratio = self.value / other.value
        if self.better == "lower":
            ratio = 1 / ratio
        return f"{ratio:.2f}× better" if ratio >= 1 else f"{1 / ratio:.2f}× worse"


@dataclass
class Target:
    name: str
    figure_id: str | None  # the figure it reads; None when the target cannot be measured here
    goal: str  # e.g. "≤ 60 ms"
    status: Status
    measured: str = ""
    margin: str = ""  # by how much it passes or misses


@dataclass
class Report:
    environment: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, figure: Figure, stream: TextIO | None = None) -> Figure:
        self.figures.append(figure)
        if stream is not None:
            print(format_figure(figure), file=stream, flush=True)
        return figure

    def figure(self, figure_id: str) -> Figure | None:
        return next((f for f in self.figures if f.id == figure_id), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "figures": [asdict(f) for f in self.figures],
            "targets": [asdict(t) for t in self.targets],
        }

    def write_json(self, stream: TextIO) -> None:
        json.dump(self.to_json(), stream, indent=2, default=str)
        stream.write("\n")


def format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def format_comparison(figure: Figure, other: Comparison) -> str:
    if other.value is None:
        return f"{other.label}: not measured ({other.missing or 'no reason given'})"
    verdict = figure.versus(other) if other.compare else ""
    return f"{other.label}: {format_number(other.value, other.unit)}" + (
        f" → ours {verdict}" if verdict else ""
    )


def format_figure(figure: Figure) -> str:
    head = f"[{figure.section}] {figure.label}: "
    if figure.value is None:
        head += f"not measured ({figure.missing or 'no reason given'})"
    else:
        head += format_number(figure.value, figure.unit)
    lines = [head, "    baseline  " + format_comparison(figure, figure.baseline)]
    lines += ["    also      " + format_comparison(figure, other) for other in figure.also]
    if figure.note:
        lines.append(f"    note      {figure.note}")
    lines.append(f"    load      {figure.load[0]:.2f} {figure.load[1]:.2f} {figure.load[2]:.2f}")
    return "\n".join(lines)


def format_targets(targets: list[Target]) -> str:
    lines = ["targets:"]
    for t in targets:
        detail = ", ".join(part for part in (t.measured, t.margin) if part)
        lines.append(f"  {t.status.upper():13} {t.name} (goal {t.goal})" + (f": {detail}" if detail else ""))
    return "\n".join(lines)
