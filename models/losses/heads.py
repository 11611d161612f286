"""Class-centre modules: one vector per class, compared with embeddings by cosine.

The losses in this package follow insightface's split of roles: a head turns embeddings into
cosine logits (``cos θ_j`` in [-1, 1]), a loss bends and scales them, cross-entropy finishes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F.normalize divides by max(‖x‖, eps): a zero embedding gets zero cosines (and zero gradient)
# instead of NaN.
NORM_EPS = 1e-12


def cosine_logits(features: Tensor, centres: Tensor) -> Tensor:
    """Cosine between every embedding and every class centre.

    Args:
        features: ``(B, D)`` embeddings, any norm.
        centres: ``(K, D)`` class vectors, any norm.

    Returns:
        ``(B, K)`` cosines in [-1, 1].

    Example:
        >>> import torch
        >>> cosine_logits(torch.tensor([[3.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
        tensor([[1., 0.]])
    """
    return F.normalize(features, dim=1, eps=NORM_EPS) @ F.normalize(centres, dim=1, eps=NORM_EPS).T


class CosineHead(nn.Module):
    """Learnable class centres producing cosine logits (insightface's ``partial_fc``, undistributed).

    Example:
        >>> import torch
        >>> head = CosineHead(in_features=4, num_classes=3)
        >>> head(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(f"need in_features >= 1 and num_classes >= 2, got {in_features}, {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        # Only the direction matters; insightface initialises with std 0.01 as well.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, size=(num_classes, in_features)))

    def forward(self, features: Tensor) -> Tensor:
        """``(B, D)`` embeddings → ``(B, K)`` cosines."""
        return cosine_logits(features, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
