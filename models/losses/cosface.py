"""CosFace, the large margin cosine loss (Wang et al., CVPR 2018, arXiv:1801.09414)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.losses.heads import CosineHead

# Defaults of the paper's face experiments (Sec. 4): scale s = 64, margin m = 0.35.
DEFAULT_SCALE = 64.0
DEFAULT_MARGIN = 0.35


def cosface_logits(cosine: Tensor, labels: Tensor, *, scale: float, margin: float) -> Tensor:
    """Bend cosine logits: ``s·(cos θ_y − m)`` for the true class, ``s·cos θ_j`` for the others.

    Example:
        >>> import torch
        >>> cosface_logits(torch.tensor([[1.0, 0.5]]), torch.tensor([0]), scale=2.0, margin=0.25)
        tensor([[1.5000, 1.0000]])
    """
    one_hot = F.one_hot(labels, num_classes=cosine.shape[1]).to(cosine.dtype)
    return scale * (cosine - margin * one_hot)


class CosFaceLoss(nn.Module):
    """Large margin cosine loss: normalised features and class weights, additive cosine margin.

    ``L = CE(s·(cos θ_y − m), s·cos θ_j≠y)``. The margin asks every sample to beat the nearest
    other class by ``m`` in cosine; the scale ``s`` keeps the softmax sharp enough to reach a low
    loss with logits bounded to [-s, s]. Defaults ``s = 64``, ``m = 0.35`` are the paper's.

    A margin is only satisfiable if the classes fit: in ``D`` dimensions with ``K`` classes the
    best spacing is a regular simplex. In 2-D with 10 classes neighbours sit 36° apart, so
    ``m`` must stay below ``1 − cos 36° ≈ 0.19`` — the loss-geometry figure uses 0.1.

    Example:
        >>> import torch
        >>> loss_fn = CosFaceLoss(in_features=8, num_classes=4)
        >>> features, labels = torch.randn(16, 8), torch.randint(0, 4, (16,))
        >>> loss_fn(features, labels).shape
        torch.Size([])
        >>> loss_fn.logits(features).argmax(dim=1).shape  # prediction: no margin
        torch.Size([16])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        scale: float = DEFAULT_SCALE,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if not 0 <= margin < 2:
            raise ValueError(f"margin must be in [0, 2), got {margin}")
        self.head = CosineHead(in_features, num_classes)
        self.scale = scale
        self.margin = margin

    def logits(self, features: Tensor) -> Tensor:
        """Scaled cosines without margin, for prediction: ``(B, D)`` → ``(B, K)``."""
        return self.scale * self.head(features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean large-margin cross-entropy over the batch."""
        bent = cosface_logits(self.head(features), labels, scale=self.scale, margin=self.margin)
        return F.cross_entropy(bent, labels)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}"
