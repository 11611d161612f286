"""C-Softmax: softmax cross-entropy weighted per sample by how well it fits its class centre."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.losses.heads import NORM_EPS


class CSoftmaxLoss(nn.Module):
    """Softmax cross-entropy where each sample weighs ``cos(x_i, c_{y_i})``, renormalised.

    Easy samples — close in angle to their class centre — weigh more; samples far from it
    (occluded faces, mislabelled identities) weigh less, so they steer the classifier less.
    This is the opposite of hard-example mining and is meant for noisy face labels.

    Weights, per batch: ``w_i = max(cos(x_i, c_{y_i}), floor)``, then ``w ← w / mean(w)`` so the
    batch mean weight is exactly 1 and the loss stays on the scale of plain cross-entropy
    (learning rates carry over). The floor keeps opposite-facing samples from getting zero or
    negative weight (negative would push them further away). A class never seen yet has no
    centre, and its samples get weight 1 before renormalisation. Weights are computed under
    ``torch.no_grad()``: they scale the gradient, they are not trained.

    Centres: a buffer holding the running mean of each class's unit feature direction,
    ``c_k ← momentum·c_k + (1 − momentum)·mean_{i: y_i = k} x̂_i``, updated in ``forward`` while
    training (before the weights are computed, so a class's first batch sets its centre), frozen
    in ``eval()``.

    Example:
        >>> import torch
        >>> loss_fn = CSoftmaxLoss(in_features=8, num_classes=4)
        >>> features, labels = torch.randn(16, 8), torch.randint(0, 4, (16,))
        >>> loss_fn(features, labels).shape
        torch.Size([])
        >>> round(loss_fn.sample_weights(features, labels).mean().item(), 4)
        1.0
    """

    centres: Tensor
    seen: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        momentum: float = 0.9,
        floor: float = 0.05,
    ) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {floor}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.floor = floor
        self.classifier = nn.Linear(in_features, num_classes)
        self.register_buffer("centres", torch.zeros(num_classes, in_features))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def logits(self, features: Tensor) -> Tensor:
        """Class scores used for prediction: ``(B, D)`` → ``(B, K)``."""
        return self.classifier(features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Weighted mean cross-entropy over the batch."""
        if self.training:
            self.update_centres(features, labels)
        weights = self.sample_weights(features, labels)
        per_sample = F.cross_entropy(self.logits(features), labels, reduction="none")
        return (weights * per_sample).mean()

    @torch.no_grad()
    def sample_weights(self, features: Tensor, labels: Tensor) -> Tensor:
        """Detached ``(B,)`` weights with mean 1; larger for samples nearer their class centre."""
        directions = F.normalize(features.detach(), dim=1, eps=NORM_EPS)
        centres = F.normalize(self.centres[labels], dim=1, eps=NORM_EPS).to(directions.dtype)
        weights = (directions * centres).sum(dim=1).clamp(min=self.floor)
        weights = torch.where(self.seen[labels], weights, torch.ones_like(weights))
        return weights / weights.mean()

    @torch.no_grad()
    def update_centres(self, features: Tensor, labels: Tensor) -> None:
        """Fold this batch's per-class mean direction into the running centres."""
        directions = F.normalize(features.detach(), dim=1, eps=NORM_EPS).to(self.centres.dtype)
        sums = torch.zeros_like(self.centres).index_add_(0, labels, directions)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1).to(sums.dtype)
        # A class's first batch replaces the zero initial centre instead of being damped by it.
        keep = torch.where(self.seen[present], self.momentum, 0.0).unsqueeze(1).to(means.dtype)
        self.centres[present] = keep * self.centres[present] + (1 - keep) * means
        self.seen |= present

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, floor={self.floor}"
