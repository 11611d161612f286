"""Training losses over cosine logits (plus the softmax and center-loss baselines).

Every loss is an ``nn.Module`` called as ``loss_fn(features, labels) -> scalar`` that owns its
class vectors, and offers ``loss_fn.logits(features)`` (no margin) for prediction.
"""

from models.losses.center import CenterLoss
from models.losses.coco import COCOLoss, coco_alpha
from models.losses.cosface import CosFaceLoss, cosface_logits
from models.losses.csoftmax import CSoftmaxLoss
from models.losses.heads import CosineHead, cosine_logits
from models.losses.softmax import SoftmaxLoss

__all__ = [
    "COCOLoss",
    "CSoftmaxLoss",
    "CenterLoss",
    "CosFaceLoss",
    "CosineHead",
    "SoftmaxLoss",
    "coco_alpha",
    "cosface_logits",
    "cosine_logits",
]
