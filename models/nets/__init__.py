"""PyTorch network definitions whose state-dict layouts match the upstream pretrained weights."""

from models.nets.mobilefacenet import MobileFaceNet
from models.nets.retinaface import RetinaFace

__all__ = ["MobileFaceNet", "RetinaFace"]
