"""Loss geometry: how softmax, center loss, COCO and CosFace shape a 2-D feature space.

Reproduces the idea of Figure 3 of the COCO paper (Liu, Li and Wang 2017) on scikit-learn's
8×8 handwritten digits (10 classes, 1,797 images, shipped offline): a small MLP with a 2-D
feature layer is trained once per loss and the held-out features are scattered side by side
(the authors used 3-D features on MNIST; 2-D can be plotted without projection). The top row
shows raw features, the bottom row their directions on the unit circle — all a cosine loss sees.

Regenerate the committed figure (10–15 s on two CPU cores)::

    python -m models.plots.loss_geometry docs/img/loss-geometry.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from models.losses import CenterLoss, COCOLoss, CosFaceLoss, SoftmaxLoss, coco_alpha

# Fixed inches × dpi (and no tight bbox) so the PNG has a known size in pixels.
FIGSIZE_IN = (18.0, 7.5)
DPI = 100
FEATURE_DIM = 2
NUM_CLASSES = 10
TEST_FRACTION = 0.3
BATCH_SIZE = 64
LEARNING_RATE = 3e-3

LossFn = SoftmaxLoss | CenterLoss | COCOLoss | CosFaceLoss


@dataclass(frozen=True)
class LossSpec:
    """One panel: a title, a loss factory, and which class vectors to overlay."""

    title: str
    make: Callable[[], LossFn]
    angular: bool = False  # dashed rays along the class directions
    centres: bool = False  # black crosses at Euclidean class centres


# Figure-specific settings, and why they differ from the library defaults:
# - center loss λ = 0.1 (default 0.003 is tuned for 512-D faces; in 2-D the pull must be
#   visible against the softmax term, as in Wen et al.'s own 2-D MNIST figure).
# - CosFace s = 16, m = 0.1: ten classes on a circle sit 36° apart, so m must stay below
#   1 − cos 36° ≈ 0.19 to be satisfiable; s = 64 is for hundreds of dimensions.
# - COCO keeps its default α = coco_alpha(10, 0.9) ≈ 3.96.
SPECS: tuple[LossSpec, ...] = (
    LossSpec("Softmax", lambda: SoftmaxLoss(FEATURE_DIM, NUM_CLASSES)),
    LossSpec(
        "Center loss (λ=0.1, α=0.5)",
        lambda: CenterLoss(FEATURE_DIM, NUM_CLASSES, center_weight=0.1, alpha=0.5),
        centres=True,
    ),
    LossSpec(
        f"COCO (α={coco_alpha(NUM_CLASSES):.2f} from K=10, ε=0.9)",
        lambda: COCOLoss(FEATURE_DIM, NUM_CLASSES),
        angular=True,
    ),
    LossSpec(
        "CosFace (s=16, m=0.1)",
        lambda: CosFaceLoss(FEATURE_DIM, NUM_CLASSES, scale=16.0, margin=0.1),
        angular=True,
    ),
)


class DigitsNet(nn.Module):
    """64 pixels → 2-D feature; the last layer is linear so features can point anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, 128),
            nn.PReLU(),
            nn.Linear(128, 64),
            nn.PReLU(),
            nn.Linear(64, FEATURE_DIM),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


@dataclass(frozen=True)
class Digits:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_split(seed: int) -> Digits:
    """Stratified train/test split of the digits, pixels scaled from 0–16 to 0–1."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, data.target, test_size=TEST_FRACTION, random_state=seed, stratify=data.target
    )
    return Digits(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y).long(),
    )


@dataclass(frozen=True)
class Trained:
    features: np.ndarray  # (N_test, 2)
    labels: np.ndarray  # (N_test,)
    accuracy: float
    class_vectors: np.ndarray  # (K, 2): centres (center loss), centroids / weights (cosine losses)


def train_one(spec: LossSpec, digits: Digits, *, epochs: int, seed: int) -> Trained:
    """Train the net with one loss and return its test features and accuracy."""
    torch.manual_seed(seed)
    net, loss_fn = DigitsNet(), spec.make()
    optimiser = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    n = len(digits.train_y)
    net.train()
    loss_fn.train()
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=generator).split(BATCH_SIZE):
            loss = loss_fn(net(digits.train_x[batch]), digits.train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()
    loss_fn.eval()
    with torch.no_grad():
        features = net(digits.test_x)
        accuracy = (loss_fn.logits(features).argmax(dim=1) == digits.test_y).float().mean().item()
    return Trained(features.numpy(), digits.test_y.numpy(), accuracy, class_vectors(loss_fn).numpy())


def class_vectors(loss_fn: LossFn) -> Tensor:
    if isinstance(loss_fn, CenterLoss):
        return loss_fn.centres.detach()
    if isinstance(loss_fn, COCOLoss):
        return loss_fn.centroids.detach()
    if isinstance(loss_fn, CosFaceLoss):
        return loss_fn.head.weight.detach()
    return loss_fn.classifier.weight.detach()


def draw_features(ax: Axes, spec: LossSpec, trained: Trained, palette: np.ndarray) -> None:
    """Raw 2-D features, with the class vectors the loss compares them against."""
    x, y = trained.features, trained.labels
    ax.scatter(x[:, 0], x[:, 1], c=palette[y], s=7, alpha=0.75, linewidths=0)
    ax.set_title(f"{spec.title}\ntest accuracy {trained.accuracy:.1%}", fontsize=11)
    ax.set_aspect("equal", adjustable="datalim")
    ax.axhline(0, color="0.85", lw=0.6, zorder=0)
    ax.axvline(0, color="0.85", lw=0.6, zorder=0)
    ax.tick_params(labelsize=8)
    if spec.angular:
        # A cosine loss only sees directions: draw each class vector as a ray from the origin.
        reach = float(np.linalg.norm(x, axis=1).max())
        for k, vector in enumerate(trained.class_vectors):
            tip = vector / max(float(np.linalg.norm(vector)), 1e-12) * reach
            ax.plot([0, tip[0]], [0, tip[1]], color=palette[k], lw=1.0, ls="--")
    if spec.centres:
        centres = trained.class_vectors
        ax.scatter(centres[:, 0], centres[:, 1], c="black", marker="x", s=30, linewidths=1.2)


def draw_directions(ax: Axes, trained: Trained, palette: np.ndarray) -> None:
    """Normalised features on the unit circle: the angular separation each loss achieved."""
    x, y = trained.features, trained.labels
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    # Radial jitter turns points stacked on one angle into a visible band.
    ring = unit * (1.0 + np.random.default_rng(0).uniform(-0.07, 0.07, size=(len(unit), 1)))
    theta = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(theta), np.sin(theta), color="0.8", lw=0.6, zorder=0)
    ax.scatter(ring[:, 0], ring[:, 1], c=palette[y], s=4, alpha=0.8, linewidths=0)
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def plot_loss_geometry(out: Path, *, epochs: int = 60, seed: int = 0) -> Path:
    """Train one digits net per loss and save the four 2-D feature scatters as one PNG.

    Args:
        out: PNG path to write; parent folders are created.
        epochs: passes over the 1,257 training images per loss (60 take about 2 s per loss on CPU).
        seed: seeds the split, the initialisation and the batch order.

    Returns:
        ``out``; the image is ``FIGSIZE_IN × DPI`` pixels (1800 × 750).

    Example:
        >>> from pathlib import Path
        >>> plot_loss_geometry(Path("docs/img/loss-geometry.png"))  # doctest: +SKIP
        PosixPath('docs/img/loss-geometry.png')
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    digits = load_split(seed)
    results = [train_one(spec, digits, epochs=epochs, seed=seed) for spec in SPECS]

    # Figure() rather than pyplot: no global backend state, renders with Agg on any headless box.
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(SPECS), height_ratios=(1.0, 0.5))
    palette = np.array([colormaps["tab10"](k) for k in range(NUM_CLASSES)])
    for column, (spec, trained) in enumerate(zip(SPECS, results, strict=True)):
        draw_features(axes[0, column], spec, trained, palette)
        draw_directions(axes[1, column], trained, palette)
    axes[0, 0].set_ylabel("feature x (2-D)", fontsize=10)
    axes[1, 0].set_ylabel("direction x/‖x‖", fontsize=10)
    handles = [axes[0, 0].scatter([], [], color=palette[k], s=20, label=str(k)) for k in range(NUM_CLASSES)]
    fig.legend(handles=handles, loc="outside right center", title="digit", fontsize=9, frameon=False)
    fig.suptitle(
        f"2-D features of {len(digits.test_y)} held-out 8×8 digits: same net and seed, one loss per column",
        fontsize=12,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write, e.g. docs/img/loss-geometry.png")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    path = plot_loss_geometry(args.out, epochs=args.epochs, seed=args.seed)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
