"""MobileFaceNet embedding network, laid out like foamliu/MobileFaceNet's ``weights/mobilefacenet.pt``.

The parameter names (``conv1``, ``dw_conv``, ``features.0..14``, ``conv2``, ``gdconv``, ``conv3``, ``bn``)
match the upstream state dict so it loads with ``strict=True``. Activations follow the upstream code and the
upstream ONNX graph: ReLU6 in every conv-BN-activation block, plain ReLU inside ``dw_conv``, none after
``gdconv``, ``conv3`` or ``bn``.

Input: ``(N, 3, 112, 112)`` float32, RGB on ``[0, 1]`` normalised with mean ``(0.485, 0.456, 0.406)`` and std
``(0.229, 0.224, 0.225)``, face aligned to the 5-point template. Output: ``(N, 128)`` raw embedding (not
L2-normalised; normalise before taking cosines).
"""

from __future__ import annotations

from torch import Tensor, nn

EMBEDDING_DIM = 128
INPUT_SIZE = 112

# (expansion t, output channels c, repeats n, first stride s), as in the MobileFaceNet paper's table 1
_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU6 at indices 0, 1, 2."""

    def __init__(self, inp: int, out: int, *, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, out, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class GDConv(nn.Module):
    """Global depthwise conv: a 7x7 depthwise kernel over the whole 7x7 map, then BN (linear)."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNet-V2 bottleneck: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == out
        self.conv = nn.Sequential(
            ConvBNReLU6(inp, hidden, kernel=1),
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet (0.99 M parameters): ``(N, 3, 112, 112) -> (N, 128)`` raw embeddings."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU6(3, 64, stride=2)
        self.dw_conv = DepthwiseSeparableConv(64, 64)
        blocks: list[nn.Module] = []
        channels = 64
        for expand, out, repeats, stride in _BLOCKS:
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        self.features = nn.Sequential(*blocks)
        self.conv2 = ConvBNReLU6(channels, 512, kernel=1)
        self.gdconv = GDConv(512)
        self.conv3 = nn.Conv2d(512, embedding_dim, kernel_size=1)
        self.bn = nn.BatchNorm2d(embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.bn(self.conv3(self.gdconv(self.conv2(x))))
        # flatten(1), not view(size(0), -1): keeps the batch axis symbolic in the exported ONNX graph
        return x.flatten(1)
