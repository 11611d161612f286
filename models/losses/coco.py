"""COCO, the congenerous cosine loss (Liu, Li and Wang 2017).

Papers: "Learning Deep Features via Congenerous Cosine Loss for Person Recognition"
(arXiv:1702.06890) and its revision "Rethinking Feature Discrimination and Polymerization for
Large-scale Recognition" (arXiv:1710.00870). Authors' code: github.com/liuyuisanai/coco_loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.losses.heads import NORM_EPS, cosine_logits

DEFAULT_EPSILON = 0.9


def coco_alpha(num_classes: int, epsilon: float = DEFAULT_EPSILON) -> float:
    """Smallest feature scale α at which a perfectly clustered sample can reach probability ε.

    ``α = (K − 1)/K · log((K − 1)·ε / (1 − ε))``

    Why this form (a derivation the reader can check, rather than a formula copied from a source
    we could not re-read here): take a feature lying exactly on its centroid (cos θ_y = 1) and
    centroids balanced around the origin (Σ_k ĉ_k = 0), so the other cosines sum to −1. By
    Jensen, Σ_{k≠y} exp(α cos θ_k) ≥ (K − 1)·exp(−α/(K − 1)), hence
    ``p_y ≤ 1 / (1 + (K − 1)·exp(−α·K/(K − 1)))``, with equality when the centroids form a
    regular simplex (every other cosine −1/(K − 1)). Asking that bound to reach ε gives the α
    above; a smaller α caps ``p_y`` below ε however well the network clusters, so training
    keeps pulling on already-perfect samples. The same bound is NormFace's Proposition 2
    (Wang et al. 2017, arXiv:1704.06369), which COCO's Sec. 3 argument for a lower bound on α
    follows; the paper text was not available while this was written, so the derivation here,
    not a transcription, is what the code implements (the tests check it on simplex centroids).
    For K = 2 it reduces to ``½·log(ε/(1 − ε))``, the "½·log" form often quoted; that form with a
    general ``(K − 1)`` assumes every other centroid antipodal (cos = −1), which only two
    classes can achieve, so it underestimates α for K > 2.

    Args:
        num_classes: K, at least 2.
        epsilon: target probability of the true class; must beat chance (ε > 1/K) and be < 1.

    Example:
        >>> round(coco_alpha(10, 0.9), 4)
        3.955
        >>> round(coco_alpha(2, 0.9), 4)  # ½·log(9)
        1.0986
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 1 / num_classes < epsilon < 1:
        raise ValueError(f"epsilon must be in (1/K, 1) = ({1 / num_classes:.4g}, 1), got {epsilon}")
    k = num_classes
    return (k - 1) / k * math.log((k - 1) * epsilon / (1 - epsilon))


class COCOLoss(nn.Module):
    """Congenerous cosine loss: softmax over cosines to learnable class centroids, scaled by α.

    ``p_k = softmax_k(α · x̂ᵀ ĉ_k)``, ``L = −log p_y``, with ``x̂ = x/‖x‖`` and ``ĉ = c/‖c‖``.
    Pulling a feature towards its own centroid and away from the others in cosine both
    polymerises classes and separates them angularly.

    Scale: α defaults to :func:`coco_alpha` ``(K, ε = 0.9)`` (3.955 for K = 10); pass ``alpha`` to
    override. The authors' Caffe code normalises with learnable scalars instead; their README
    reports initialising them to 1 (centroids) and 2 (features) on MNIST and 30 and 100 on PIPA,
    i.e. effective logit scales of about 2 and 3,000 — α here is the single product of the two.

    Centroids: ``nn.Parameter`` updated by SGD, as in the authors' released layer
    (``CenterProjection`` with ``lr_mult: 1`` in ``net_cocoloss.prototxt``). The papers contrast
    this with center loss, whose centres are running class means of mini-batches; for that style
    (or to warm-start centroids), :meth:`update_centroids_from_batch` moves them towards the batch
    class means of the normalised features.

    Example:
        >>> import torch
        >>> loss_fn = COCOLoss(in_features=8, num_classes=10)
        >>> round(loss_fn.alpha, 3)
        3.955
        >>> features, labels = torch.randn(32, 8), torch.randint(0, 10, (32,))
        >>> loss = loss_fn(features, labels)
        >>> loss.backward()
        >>> loss_fn.update_centroids_from_batch(features, labels, momentum=0.9)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        alpha: float | None = None,
        epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        super().__init__()
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.num_classes = num_classes
        self.alpha = alpha if alpha is not None else coco_alpha(num_classes, epsilon)
        self.centroids = nn.Parameter(torch.randn(num_classes, in_features))

    def logits(self, features: Tensor) -> Tensor:
        """α-scaled cosines to the centroids: ``(B, D)`` → ``(B, K)``."""
        return self.alpha * cosine_logits(features, self.centroids)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the batch."""
        return F.cross_entropy(self.logits(features), labels)

    @torch.no_grad()
    def update_centroids_from_batch(self, features: Tensor, labels: Tensor, *, momentum: float = 0.9) -> None:
        """``c_k ← momentum·ĉ_k + (1 − momentum)·mean_{i: y_i = k} x̂_i`` for classes in the batch.

        Both sides are unit directions (a centroid's norm never reaches the logits), so
        ``momentum`` means the same thing whatever norm the centroid had drifted to.
        Classes absent from the batch are left untouched.
        """
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        directions = F.normalize(features.detach(), dim=1, eps=NORM_EPS).to(self.centroids.dtype)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, directions)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1).to(sums.dtype)
        current = F.normalize(self.centroids[present], dim=1, eps=NORM_EPS)
        self.centroids[present] = momentum * current + (1 - momentum) * means

    def extra_repr(self) -> str:
        dim = self.centroids.shape[1]
        return f"in_features={dim}, num_classes={self.num_classes}, alpha={self.alpha:.4g}"
