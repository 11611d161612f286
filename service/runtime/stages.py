"""What each pipeline stage needs to know of its model (read from the manifest by `service.runtime.models`)
and the session interfaces the stages run. The pipeline imports these; they import nothing of `service/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variances: tuple[float, float]
    mean: tuple[float, float, float]  # pixel units, in channel_order
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    max_side: int = 640
    # Face width, in the network's input pixels, found reliably: sets the scale of the pass for small faces.
    # RetinaFace-mnet0.25 finds 96.9 % of celeba-train faces 20 px wide, 91.1 % at 16 px (docs/accuracy.md,
    # `python -m bench.group_photos --sizes-at-input`); celeba-train, not LFW, so LFW stays a test.
    smallest_face: float = 20.0


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    input_size: tuple[int, int]  # width, height
    dim: int
    template: np.ndarray  # (5, 2) landmark positions in the input crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str
    threshold: float
    max_batch: int = 64


class OnnxSession(Protocol):
    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@runtime_checkable
class BindingSession(Protocol):
    """A session writing outputs into arrays the caller owns (IO binding; service.runtime.sessions)."""

    def run_into(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None: ...
