"""Render a `--json` report as Markdown tables: `python -m bench.markdown run.json`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import Comparison, Figure, format_number


def _figure(data: dict[str, Any]) -> Figure:
    fields = dict(data)
    fields["baseline"] = Comparison(**fields["baseline"])
    fields["also"] = [Comparison(**c) for c in fields["also"]]
    fields["load"] = tuple(fields["load"])
    return Figure(**fields)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _comparison(figure: Figure, other: Comparison) -> str:
    if other.value is None:
        return f"{other.label}: not measured ({other.missing})"
    verdict = figure.versus(other) if other.compare else ""
    return f"{other.label}: {format_number(other.value, other.unit)}" + (
        f" (ours {verdict})" if verdict else ""
    )


def render(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"- date: {env['date']}; command: `{env['command']}`; commit {env['git']}",
        f"- machine: {env['cpu']}, {env['cpu_cores']} cores, {env['memory_gib']} GiB; device {env['device']}",
        f"- faiss {env['faiss']}, onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, "
        f"{env.get('face_recognition', 'face_recognition: unknown')}",
        f"- load average (1/5/15 min) at start {env['load_at_start']}, at end {env.get('load_at_end')}",
        "",
        "| section | figure | ours | baseline (same run) | also | load 1/5/15 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for data in report["figures"]:
        figure = _figure(data)
        value = (
            format_number(figure.value, figure.unit)
            if figure.value is not None
            else f"not measured: {figure.missing}"
        )
        also = "<br>".join(_cell(_comparison(figure, c)) for c in figure.also)
        load = " ".join(f"{x:.2f}" for x in figure.load)
        baseline = _cell(_comparison(figure, figure.baseline))
        lines.append(f"| {figure.section} | {_cell(figure.label)} | {value} | {baseline} | {also} | {load} |")
    lines += ["", "| target | goal | measured | status | margin |", "| --- | --- | --- | --- | --- |"]
    for t in report["targets"]:
        lines.append(
            f"| {t['name']} | {t['goal']} | {t['measured']} | {t['status']} | {_cell(t['margin'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.markdown", description=__doc__)
    parser.add_argument("report", type=Path, help="a file written by `python -m bench --json PATH`")
    args = parser.parse_args(argv)
    sys.stdout.write(render(json.loads(args.report.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
