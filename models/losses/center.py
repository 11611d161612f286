"""Center loss (Wen et al., ECCV 2016, "A Discriminative Feature Learning Approach for Deep Face
Recognition"). Kept for the loss-geometry figure, as the classic Euclidean counterpart of COCO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The paper's face-recognition settings: λ = 0.003 weighs the centre term, α = 0.5 moves centres.
DEFAULT_CENTER_WEIGHT = 0.003
DEFAULT_ALPHA = 0.5


class CenterLoss(nn.Module):
    """Softmax cross-entropy plus ``λ·½‖x_i − c_{y_i}‖²`` (averaged over the batch).

    Centres are a buffer, not parameters: after each training forward they move towards their
    samples by the paper's rule (Eq. 4), ``Δc_j = Σ_{i: y_i = j}(c_j − x_i) / (1 + n_j)``,
    ``c_j ← c_j − α·Δc_j``; classes absent from the batch stay put. The centre term is
    averaged over the batch (the paper sums) so λ does not depend on the batch size.

    Example:
        >>> import torch
        >>> loss_fn = CenterLoss(in_features=2, num_classes=10)
        >>> features, labels = torch.randn(32, 2), torch.randint(0, 10, (32,))
        >>> loss_fn(features, labels).shape
        torch.Size([])
        >>> bool(loss_fn.centres.abs().sum() > 0)  # centres moved towards the batch
        True
    """

    centres: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        center_weight: float = DEFAULT_CENTER_WEIGHT,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        super().__init__()
        if center_weight < 0:
            raise ValueError(f"center_weight must be non-negative, got {center_weight}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_classes = num_classes
        self.center_weight = center_weight
        self.alpha = alpha
        self.classifier = nn.Linear(in_features, num_classes)
        self.register_buffer("centres", torch.zeros(num_classes, in_features))

    def logits(self, features: Tensor) -> Tensor:
        """Class scores used for prediction: ``(B, D)`` → ``(B, K)``."""
        return self.classifier(features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy plus the weighted centre term; moves the centres while training."""
        softmax = F.cross_entropy(self.logits(features), labels)
        # Indexing copies, so the in-place centre update below cannot disturb autograd.
        pull = 0.5 * (features - self.centres[labels]).pow(2).sum(dim=1).mean()
        if self.training:
            self.update_centres(features, labels)
        return softmax + self.center_weight * pull

    @torch.no_grad()
    def update_centres(self, features: Tensor, labels: Tensor) -> None:
        """One step of Wen et al.'s Eq. 4 with rate ``alpha``."""
        gaps = self.centres[labels] - features.detach().to(self.centres.dtype)
        delta = torch.zeros_like(self.centres).index_add_(0, labels, gaps)
        counts = torch.bincount(labels, minlength=self.num_classes).to(delta.dtype)
        self.centres -= self.alpha * delta / (1 + counts).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, center_weight={self.center_weight}, alpha={self.alpha}"
