"""What every section shares: settings, device, the loaded models, the report, and where to print."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np

from bench.data import REPO_ROOT, lfw_photos
from bench.report import Figure, Report, load_average

if TYPE_CHECKING:
    from service.config import Settings
    from service.pipeline import FacePipeline
    from service.runtime import LoadedModels

Device = Literal["cpu", "cuda"]


class DeviceUnavailable(RuntimeError):
    """`--device cuda` was asked for but this machine cannot run the CUDA paths."""


def check_device(device: Device) -> None:
    """Fail before measuring anything when the CUDA provider or FAISS GPU is not really there."""
    if device != "cuda":
        return
    import faiss
    import onnxruntime as ort

    problems = []
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        problems.append(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: {', '.join(providers)});"
            " install onnxruntime-gpu (pip install 'facebank[gpu]')"
        )
    if not hasattr(faiss, "StandardGpuResources"):
        problems.append(f"faiss {faiss.__version__} is built without GPU support; install faiss-gpu")
    elif faiss.get_num_gpus() < 1:
        problems.append("faiss sees no GPU (faiss.get_num_gpus() == 0)")
    if problems:
        raise DeviceUnavailable("--device cuda cannot run here: " + "; ".join(problems))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(argv: list[str]) -> str:
    """How this run was started, as a person would type it."""
    program = Path(argv[0]).name if argv else "bench"
    if program == "__main__.py":
        program = "python -m bench"
    elif program == "facebank":
        program = "facebank bench"
    return (
        " ".join([program, *argv[1:]]) if program != "facebank bench" else " ".join(["facebank", *argv[1:]])
    )


def environment(device: Device, argv: list[str]) -> dict[str, Any]:
    import faiss
    import onnxruntime as ort

    env: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "git": _git_commit(),
        "device": device,
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_omp_max_threads": faiss.omp_get_max_threads(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "load_at_start": load_average(),
    }
    if device == "cuda":
        try:
            import torch

            env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "torch sees no GPU"
        except ImportError:
            env["gpu"] = "unknown (torch not installed)"
    return env


@dataclass
class Context:
    settings: Settings
    device: Device
    quick: bool
    shared: Path
    lfw: Path
    work_dir: Path
    report: Report
    out: TextIO = field(default=sys.stdout)
    server_env: dict[str, str] = field(default_factory=dict)  # extra environment for the REST server
    ann_sizes: tuple[int, ...] = (100_000, 1_000_000)  # gallery sizes of the `ann` section
    scale_sizes: tuple[int, ...] = (1_000_000, 10_000_000)  # gallery sizes of the `scale` section
    scale_stores: tuple[str, ...] = ()  # the `scale` section's stores by name; empty: all
    scale_uniform: bool = True  # `scale` also measures the uniform (worst-case) gallery at its first size
    # Where `scale` caches real-face embeddings (.npz)
    embedding_cache: Path = field(default_factory=lambda: Path("~/.cache/facebank-bench").expanduser())
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"  ... {elapsed:6.1f}s {message}", file=self.out, flush=True)

    def add(self, figure: Figure) -> Figure:
        return self.report.add(figure, self.out)

    def service_settings(self, **update: Any) -> Settings:
        """The settings the service would run with here, on the benchmark's device."""
        return self.settings.model_copy(update={"device": self.device, **update})

    @cached_property
    def models(self) -> LoadedModels:
        from service.runtime import load_models

        s = self.service_settings()
        return load_models(
            s.model_dir, detector=s.detector, embedder=s.embedder, device=s.device, threads=s.intra_op_threads
        )

    @cached_property
    def pipeline(self) -> FacePipeline:
        from service.pipeline.factory import build_pipeline

        pipeline, _ = build_pipeline(self.service_settings(), self.models)
        return pipeline

    @cached_property
    def sample_crops(self) -> np.ndarray:
        """Aligned 112×112 crops of the largest face of up to 64 LFW photos."""
        crops = []
        for path in lfw_photos(self.lfw, 16 if self.quick else 64):
            with open(path, "rb") as handle:
                from service.pipeline import decode_image
                from service.pipeline.face_policy import largest_face

                image = decode_image(handle.read(), max_pixels=self.settings.max_image_pixels)
            faces = self.pipeline.detect(image)
            if faces:
                crops.append(self.pipeline.align(image, [largest_face(faces)])[0])
        if not crops:
            raise RuntimeError("no face found in the LFW sample photos")
        return np.stack(crops)

    def crops(self, count: int) -> np.ndarray:
        """`count` aligned crops: the LFW sample repeated (throughput does not depend on content)."""
        sample = self.sample_crops
        return sample[np.arange(count) % len(sample)]
