"""Create onnxruntime sessions with providers ordered by the configured device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class ProviderError(RuntimeError):
    """The requested execution provider is not really active."""


def _providers_for(device: Device) -> list[str | tuple[str, dict[str, object]]]:
    available = ort.get_available_providers()
    cuda: tuple[str, dict[str, object]] = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ProviderError(
                "FACEBANK_DEVICE=cuda but onnxruntime has no CUDA provider "
                f"(available: {available}); install the gpu extra: pip install 'facebank[gpu]'"
            )
        return [cuda, "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in available:
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: Path, *, device: Device = "cpu", threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Requests already run concurrently in a thread pool; more inter-op threads only contend.
    options.inter_op_num_threads = 1
    # Spinning workers starve FAISS's OpenMP threads and the other session (measured: a 100-vector
    # search went from 0.015 ms to 16 ms in a process with a spinning session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=_providers_for(device))
    active = session.get_providers()
    # onnxruntime falls back to CPU silently when a CUDA library is missing.
    if device == "cuda" and "CUDAExecutionProvider" not in active:
        raise ProviderError(f"CUDA provider requested but not active for {path.name} (active: {active})")
    log.info("loaded %s with providers %s", path.name, active)
    return session
