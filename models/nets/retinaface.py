"""RetinaFace with a MobileNet-0.25 backbone, laid out like biubug6's ``mobilenet0.25_Final.pth``.

The parameter names (``body.stage1..3``, ``fpn.output1..3`` / ``merge1..2``, ``ssh1..3``, ``ClassHead`` /
``BboxHead`` / ``LandmarkHead.{0,1,2}.conv1x1``) match the upstream state dict so it loads with
``strict=True``. Every activation is a plain ReLU, as in the Face-Detector-1MB-with-landmark code the weights
were trained with (the older Pytorch_Retinaface uses LeakyReLU(0.1); with these weights that scores faces
lower, see ``service/runtime/cards/retinaface-mnet025.md``).

Input: ``(N, 3, H, W)`` float32, BGR, ``(104, 117, 123)`` subtracted, no scaling; any ``H`` and ``W``.
Output: ``loc (N, P, 4)``, ``conf (N, P, 2)`` (softmax, column 1 is "face"), ``landms (N, P, 10)``, raw
offsets to be decoded against the anchors. ``P`` runs over the three levels (strides 8, 16, 32) in order,
then row-major over each level's ``ceil(H / s) x ceil(W / s)`` grid, then over the level's two anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ANCHORS_PER_LOCATION = 2
_BACKBONE_CHANNELS = (64, 128, 256)  # outputs of stage1..3 (strides 8, 16, 32)
_FPN_CHANNELS = 64


def _conv_bn(inp: int, out: int, *, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(inp, out, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (indices 0, 1, 3, 4 hold weights)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class MobileNetV1x025(nn.Module):
    """The three stages of MobileNet-V1 at width 0.25 that feed the FPN (no classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, stride=2),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *(_conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        return c1, c2, c3


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 lateral convs, nearest upsampling, 3x3 merge convs."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels)
        self.merge2 = _conv_bn(out_channels, out_channels)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p1 = self.output1(feats[0])
        p2 = self.output2(feats[1])
        p3 = self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return p1, p2, p3


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3), concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.conv3X3 = _conv_bn(in_channels, half, relu=False)
        self.conv5X5_1 = _conv_bn(in_channels, quarter)
        self.conv5X5_2 = _conv_bn(quarter, quarter, relu=False)
        self.conv7X7_2 = _conv_bn(quarter, quarter)
        self.conv7x7_3 = _conv_bn(quarter, quarter, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        branch5_in = self.conv5X5_1(x)
        out = torch.cat(
            [self.conv3X3(x), self.conv5X5_2(branch5_in), self.conv7x7_3(self.conv7X7_2(branch5_in))], dim=1
        )
        return F.relu(out)


class _Head(nn.Module):
    """A 1x1 conv predicting ``width`` numbers per anchor, flattened to ``(N, H * W * anchors, width)``."""

    def __init__(self, in_channels: int, width: int, anchors: int = ANCHORS_PER_LOCATION) -> None:
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(in_channels, anchors * width, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        # reshape with -1 for the batch-independent part only, so the exported graph keeps a dynamic batch
        return out.reshape(out.shape[0], -1, self.width)


def _heads(width: int, levels: int = 3) -> nn.ModuleList:
    return nn.ModuleList(_Head(_FPN_CHANNELS, width) for _ in range(levels))


class RetinaFace(nn.Module):
    """RetinaFace-MobileNet-0.25 returning ``(loc, conf, landms)``; ``conf`` is already softmaxed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MobileNetV1x025()
        self.fpn = FPN(_BACKBONE_CHANNELS, _FPN_CHANNELS)
        self.ssh1 = SSH(_FPN_CHANNELS, _FPN_CHANNELS)
        self.ssh2 = SSH(_FPN_CHANNELS, _FPN_CHANNELS)
        self.ssh3 = SSH(_FPN_CHANNELS, _FPN_CHANNELS)
        self.ClassHead = _heads(2)
        self.BboxHead = _heads(4)
        self.LandmarkHead = _heads(10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p1, p2, p3 = self.fpn(self.body(x))
        feats = (self.ssh1(p1), self.ssh2(p2), self.ssh3(p3))
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landms = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, F.softmax(logits, dim=-1), landms


def num_priors(height: int, width: int, steps: tuple[int, ...] = (8, 16, 32)) -> int:
    """Number of anchors ``P`` the network predicts for an ``height x width`` input."""
    return sum(-(-height // s) * -(-width // s) * ANCHORS_PER_LOCATION for s in steps)
