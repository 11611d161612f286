"""Plain softmax: the baseline the other losses are measured against."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SoftmaxLoss(nn.Module):
    """Linear classifier followed by cross-entropy.

    Nothing constrains the feature norm or angle, so classes come out separable but spread in
    long radial fans (the left panel of ``docs/img/loss-geometry.png``).

    Example:
        >>> import torch
        >>> loss_fn = SoftmaxLoss(in_features=8, num_classes=4)
        >>> loss = loss_fn(torch.randn(16, 8), torch.randint(0, 4, (16,)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = True) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes, bias=bias)

    def logits(self, features: Tensor) -> Tensor:
        """Class scores used for prediction: ``(B, D)`` → ``(B, K)``."""
        return self.classifier(features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the batch."""
        return F.cross_entropy(self.logits(features), labels)
