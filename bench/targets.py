"""The targets of issue 6, read from the figures of one run, each with pass/miss and by how much."""

from __future__ import annotations

from bench.report import Report, Status, Target

GPU_NOTE = "not measured: needs --device cuda on a GPU (H100 targets)"


def _at_most(report: Report, name: str, figure_id: str, limit: float, unit: str) -> Target:
    goal = f"≤ {limit:g} {unit}"
    figure = report.figure(figure_id)
    if figure is None or figure.value is None:
        return Target(name, figure_id, goal, "not measured", margin="figure not in this run")
    measured = f"{figure.value:.3g} {unit}"
    if figure.value <= limit:
        return Target(name, figure_id, goal, "pass", measured, f"{limit / figure.value:.2f}× under the limit")
    return Target(name, figure_id, goal, "miss", measured, f"{figure.value / limit:.2f}× over the limit")


def _at_least(report: Report, name: str, figure_id: str, limit: float, unit: str) -> Target:
    goal = f"≥ {limit:g} {unit}"
    figure = report.figure(figure_id)
    if figure is None or figure.value is None:
        return Target(name, figure_id, goal, "not measured", margin="figure not in this run")
    measured = f"{figure.value:.3g} {unit}"
    if figure.value >= limit:
        return Target(name, figure_id, goal, "pass", measured, f"{figure.value / limit:.2f}× the goal")
    return Target(name, figure_id, goal, "miss", measured, f"{figure.value / limit:.2f}× the goal")


def _times_baseline(report: Report, name: str, figure_id: str, factor: float) -> Target:
    goal = f"≥ {factor:g}× the baseline"
    figure = report.figure(figure_id)
    if figure is None or figure.value is None:
        return Target(name, figure_id, goal, "not measured", margin="figure not in this run")
    if figure.baseline.value is None:
        return Target(
            name, figure_id, goal, "not measured", margin=f"baseline missing: {figure.baseline.missing}"
        )
    ratio = figure.value / figure.baseline.value
    measured = f"{figure.value:.3g} vs {figure.baseline.value:.3g} {figure.unit} = {ratio:.2f}×"
    status: Status = "pass" if ratio >= factor else "miss"
    return Target(name, figure_id, goal, status, measured, f"{ratio / factor:.2f}× the goal")


def _within_floor(report: Report, name: str, figure_id: str, factor: float) -> Target:
    goal = f"≤ {factor:g}× the memory floor"
    figure = report.figure(figure_id)
    floor = next((c for c in figure.also if "floor" in c.label), None) if figure else None
    if figure is None or figure.value is None or floor is None or floor.value is None:
        return Target(name, figure_id, goal, "not measured", margin="figure or floor not in this run")
    ratio = figure.value / floor.value
    status: Status = "pass" if ratio <= factor else "miss"
    return Target(name, figure_id, goal, status, f"{figure.value:.3g} ms = {ratio:.2f}× the floor", "")


def _ann_within(report: Report, name: str, size: str, p50_limit: float, recall_goal: float) -> Target:
    """The best identity recall@10 (synthetic face queries) of any approximate store and setting of the
    `scale` section whose one-query p50 is within `p50_limit`, against `recall_goal`."""
    goal = f"p50 ≤ {p50_limit:g} ms with identity recall@10 ≥ {recall_goal:g}"
    prefix = f"scale.faces.{size}."
    best: tuple[float, str, float] | None = None  # (recall, setting, p50)
    measured_any = False
    for figure in report.figures:
        if not (figure.id.startswith(prefix) and figure.id.endswith(".single_p50_ms")):
            continue
        setting = figure.id[len(prefix) : -len(".single_p50_ms")]
        if setting.startswith("flat.") or figure.value is None:
            continue
        measured_any = True
        found = report.figure(f"{prefix}{setting}.synthetic.identity_recall_at_10")
        recall_here = found.value if found is not None else None
        if figure.value > p50_limit or recall_here is None:
            continue
        if best is None or recall_here > best[0]:
            best = (recall_here, setting, figure.value)
    if not measured_any:
        return Target(name, None, goal, "not measured", margin="scale section not in this run")
    if best is None:
        return Target(name, None, goal, "miss", "no setting within the latency", "")
    recall, setting, p50 = best
    status: Status = "pass" if recall >= recall_goal else "miss"
    return Target(
        name, f"{prefix}{setting}", goal, status, f"{setting}: {p50:.3g} ms, recall {recall:.3g}", ""
    )


def evaluate(report: Report, *, device: str, quick: bool) -> list[Target]:
    targets = [
        _at_most(
            report, "CPU: REST identify p50, 1 client, gallery 100k", "rest.100k.clients1.p50_ms", 60, "ms"
        ),
        _times_baseline(report, "CPU: photos/s vs face_recognition", "e2e.photos_per_s", 3),
        _at_most(report, "replica lag p50, PostgreSQL", "replicas.postgresql.add_p50_ms", 100, "ms"),
        _at_most(report, "replica lag p99, PostgreSQL", "replicas.postgresql.add_p99_ms", 1000, "ms"),
        _times_baseline(
            report, "identify throughput while following", "replicas.follow_cost.identify_rps", 0.95
        ),
        # Issue 12: approximate search in-process, default HNSW parameters, one thread.
        _at_most(report, "CPU: HNSW one-query p50 at 1M×128", "ann.1m.hnsw.single_p50_ms", 2, "ms"),
        _at_least(
            report, "CPU: HNSW identity recall@10 at 1M×128", "ann.1m.hnsw.identity_recall_at_10", 0.99, ""
        ),
        # Issue 12, section scale: the best approximate store and setting on the face-shaped gallery.
        _ann_within(report, "CPU: approximate search at 1M×128 (scale)", "1m", 2, 0.99),
        _ann_within(report, "CPU: approximate search at 10M×128 (scale)", "10m", 10, 0.98),
    ]
    if quick:
        for target in targets:
            if target.status == "not measured":
                target.margin = "quick run: galleries and samples too small for this target"
    if device != "cuda":
        gpu = [
            ("H100: single-query search at 1M×128", "≤ 1.5× the memory floor"),
            ("H100: single-query search at 10M×128", "≤ 1.5× the memory floor"),
            ("H100: batched search at 1M×128", "≥ 120,000 q/s"),
            ("H100: embedder at batch 1024", "≥ 50,000 faces/s"),
            ("H100: REST identify p50, 1 client, gallery 1M", "≤ 10 ms"),
        ]
        targets += [Target(name, None, goal, "not measured", margin=GPU_NOTE) for name, goal in gpu]
        return targets
    targets += [
        _within_floor(report, "H100: single-query search at 1M×128", "search.1m.single_p50_ms", 1.5),
        _within_floor(report, "H100: single-query search at 10M×128", "search.10m.single_p50_ms", 1.5),
        _at_least(report, "H100: batched search at 1M×128", "search.1m.batch1024_qps", 120_000, "q/s"),
        _at_least(
            report, "H100: embedder at batch 1024", "embedder.batch1024.faces_per_s", 50_000, "faces/s"
        ),
        _at_most(
            report, "H100: REST identify p50, 1 client, gallery 1M", "rest.1m.clients1.p50_ms", 10, "ms"
        ),
    ]
    return targets
