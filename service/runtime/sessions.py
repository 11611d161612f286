"""Create onnxruntime sessions with providers ordered by the configured device; pick the embedder's file
for the configured precision; run sessions through IO binding on CUDA."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "fp16"]

CUDA_PROVIDER = "CUDAExecutionProvider"
FP16_SUFFIX = ".fp16.onnx"


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


def fp16_onnx_file(onnx_file: str) -> str:
    """The half-precision export's file name: ``mobilefacenet.onnx`` → ``mobilefacenet.fp16.onnx``."""
    return onnx_file.removesuffix(".onnx") + FP16_SUFFIX


def embedder_onnx_file(onnx_file: str, *, precision: Precision, device: Device) -> str:
    """The embedder file to load for ``precision`` on ``device``; raises :class:`ProviderError` for fp16
    without a CUDA provider.

    fp16 is refused on the CPU rather than quietly replaced by fp32: onnxruntime's CPU provider has no fp16
    convolution, so it would run the fp16 file in fp32 with rounded weights — slower than fp32 and not what
    was asked for. A user who set fp16 learns at start that it needs ``device=cuda`` (or ``auto`` on a
    machine with the CUDA provider).
    """
    if precision == "fp32":
        return onnx_file
    if device == "cpu" or CUDA_PROVIDER not in ort.get_available_providers():
        raise ProviderError(
            f"FACEBANK_EMBEDDER_PRECISION=fp16 runs only on the CUDA provider, but FACEBANK_DEVICE={device} "
            f"and onnxruntime offers {ort.get_available_providers()}; set FACEBANK_EMBEDDER_PRECISION=fp32, "
            "or FACEBANK_DEVICE=cuda with the gpu extra installed"
        )
    return fp16_onnx_file(onnx_file)


def on_cuda(session: ort.InferenceSession) -> bool:
    return CUDA_PROVIDER in session.get_providers()


class IoBoundSession:
    """Runs a session through IO binding: inputs bound from host memory, outputs either into arrays the
    caller owns (:meth:`run_into`) or left for onnxruntime to allocate (:meth:`run`).

    Device-generic: on the CUDA provider the input is copied to the GPU by onnxruntime and the output is
    copied straight into the caller's array, without the intermediate array ``session.run`` returns; on the
    CPU provider the last kernel writes into the caller's array directly. A fresh binding per call keeps it
    safe to share between threads (the session's ``run_with_iobinding`` is thread-safe like ``run``).
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        # An output bound without a buffer is allocated where its kernel runs; copy_outputs_to_cpu moves it.
        self._output_device = "cuda" if on_cuda(session) else "cpu"

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run_into(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Run with each named output written into its given C-contiguous array of the exact output shape."""
        binding = self.session.io_binding()
        self._bind_inputs(binding, inputs)
        for name, out in outputs.items():
            if not out.flags.c_contiguous:
                raise ValueError(f"output {name!r} must be bound to a C-contiguous array")
            binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        """``session.run``'s signature, for outputs whose shape is only known after the run (the detector)."""
        binding = self.session.io_binding()
        self._bind_inputs(binding, input_feed)
        names = list(output_names) if output_names else [o.name for o in self.session.get_outputs()]
        for name in names:
            binding.bind_output(name, self._output_device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    @staticmethod
    def _bind_inputs(binding: ort.IOBinding, inputs: Mapping[str, np.ndarray]) -> None:
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.synchronize_inputs()


def runner_for(session: ort.InferenceSession | IoBoundSession) -> ort.InferenceSession | IoBoundSession:
    """What the pipeline should call: the session through IO binding on the CUDA provider, else itself
    (on the CPU provider binding saves nothing measurable over ``session.run``). Idempotent."""
    if isinstance(session, IoBoundSession) or not on_cuda(session):
        return session
    return IoBoundSession(session)
