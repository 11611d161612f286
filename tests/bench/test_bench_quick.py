"""The benchmark harness: `python -m bench --quick` end to end, and the pieces it trusts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from bench.cli import DEFAULT_SECTIONS, SECTIONS, register
from bench.report import Comparison, Figure
from bench.search import numpy_topk
from tests.conftest import REPO_ROOT, SHARED

QUICK_FIGURES = {
    "embedder.batch1.faces_per_s",
    "embedder.batch64.faces_per_s",
    "detector.640x480.images_per_s",
    "search.10k.single_p50_ms",
    "search.10k.batch1024_qps",
    "search.10k.batch8_qps",
    "search.10k.batch32_qps",
    "search.10k.threads_all.single_p50_ms",
    "search.10k.threads_all.batch1024_qps",
    "search.10k.worker_thread.single_p50_ms",
    "search.10k.concurrent2.single_qps",
    "search.10m.single_p50_ms",
    "rest.2k.rebuild_s",
    "rest.2k.gallery_identify_p50_ms",
    *(f"rest.2k.clients{c}.{q}_ms" for c in (1, 8, 32) for q in ("p50", "p99")),
    "e2e.photos_per_s",
    "e2e.identify_p50_ms",
}


def test_register_adds_the_bench_command_without_importing_heavy_modules() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--json", "--sections", "search", "e2e"])
    assert args.quick and args.json == "-" and args.sections == ["search", "e2e"]
    assert args.device == "cpu" and callable(args.handler)
    assert parser.parse_args(["bench"]).sections == list(DEFAULT_SECTIONS)
    assert set(DEFAULT_SECTIONS) < set(SECTIONS)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--device", "tpu"])
    heavy = ("numpy", "faiss", "onnxruntime", "httpx", "service")
    probe = f"import sys, bench.cli; print([m for m in {heavy!r} if m in sys.modules])"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True)
    assert imported.stdout.strip() == "[]", imported.stdout + imported.stderr


def test_numpy_baseline_finds_the_same_neighbours_as_faiss() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((5000, 32), dtype=np.float32)
    queries = rng.standard_normal((7, 32), dtype=np.float32)
    index = faiss.IndexFlatIP(32)
    index.add(gallery)
    _, expected = index.search(queries, 10)
    assert np.array_equal(numpy_topk(gallery, queries, 10, block=1024), expected)


def test_a_figure_reads_better_or_worse_in_the_direction_that_matters() -> None:
    latency = Figure("x", "s", "x", 10.0, "ms", "lower", Comparison("b", 20.0, "ms"))
    rate = Figure("y", "s", "y", 10.0, "q/s", "higher", Comparison("b", 20.0, "q/s"))
    assert latency.versus(latency.baseline) == "2.00× better"
    assert rate.versus(rate.baseline) == "2.00× worse"
    assert rate.versus(Comparison("other unit", 5.0, "ms")) == ""


@pytest.mark.shared
@pytest.mark.slow
def test_quick_run_prints_every_figure_beside_its_baseline_within_a_minute(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "FACEBANK_MODEL_DIR": str(model_dir),
        "FACEBANK_DATA_DIR": str(tmp_path / "data"),
        "FACEBANK_SHARED_DIR": str(SHARED),
    }
    env.pop("FACEBANK_DATABASE_URL", None)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--work-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert elapsed < 60, f"--quick took {elapsed:.0f} s (load {os.getloadavg()})"

    report = json.loads(out.read_text())
    figures = {f["id"]: f for f in report["figures"]}
    assert set(figures) >= QUICK_FIGURES, sorted(QUICK_FIGURES - set(figures))
    for figure in figures.values():
        assert len(figure["load"]) == 3, figure["id"]
        baseline = figure["baseline"]
        assert baseline["label"], figure["id"]
        if figure["missing"]:
            assert figure["value"] is None and figure["id"] == "search.10m.single_p50_ms"
            continue
        assert figure["value"] > 0, figure["id"]
        if baseline["value"] is None:
            # Only the outside library may be absent, and then the reason says how to install it.
            assert "face_recognition" in baseline["label"] and "pip install" in baseline["missing"], figure[
                "id"
            ]
        else:
            assert baseline["value"] > 0, figure["id"]
        assert f"{figure['label']}: " in result.stdout
    assert figures["search.10k.single_p50_ms"]["also"][0]["label"].startswith("memory floor")
    environment = report["environment"]
    assert environment["quick"] and environment["device"] == "cpu" and environment["date"]
    assert len(environment["load_at_start"]) == 3 and len(environment["load_at_end"]) == 3
    statuses = {t["name"]: t["status"] for t in report["targets"]}
    assert statuses["CPU: REST identify p50, 1 client, gallery 100k"] == "not measured"
    assert statuses["CPU: photos/s vs face_recognition"] in {"pass", "miss", "not measured"}
    assert all(s == "not measured" for name, s in statuses.items() if name.startswith("H100"))


def test_cuda_without_a_gpu_build_fails_at_once_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(faiss, "StandardGpuResources"):
        pytest.skip("this machine has the CUDA builds")
    from bench.cli import main

    assert main(["--device", "cuda", "--quick", "--sections", "search"]) == 2
    error = capsys.readouterr().err
    assert "--device cuda cannot run here" in error and "install" in error
