"""EdgeFace embedding networks (Idiap): timm's EdgeNeXt with its classifier reset to a 512-d embedding.

EdgeFace (otroshi/edgeface, BSD-3-Clause code) wraps ``timm.create_model("edgenext_x_small")`` (XS) or
``"edgenext_xx_small"`` (XXS) as ``self.model`` and calls ``reset_classifier(512)``. This module re-states
that network in plain PyTorch, with timm's module names, so the published state dicts (``model.stem.0...``,
``model.stages.<i>.blocks.<j>...``, ``model.head.fc``) load with ``strict=True``: timm (Apache-2.0) itself
imports torchvision, and the torchvision wheels that exist for torch 2.13 here are CUDA builds that do not
load beside the CPU torch. The layer code follows timm 1.0.31 ``timm/models/edgenext.py`` (EdgeNeXt, MIT,
github.com/mmaaz60/EdgeNeXt) and was checked against it output for output (docs/accuracy.md).

Input: ``(N, 3, 112, 112)`` float32, RGB on ``[0, 1]`` normalised with mean 0.5 and std 0.5, face aligned to
the 5-point ArcFace template. Output: ``(N, 512)`` raw embedding (not L2-normalised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EMBEDDING_DIM = 512
INPUT_SIZE = 112
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class EdgeNeXtLayout:
    """Per-stage widths and depths of a timm EdgeNeXt; the other hyper-parameters are timm's defaults."""

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (4, 4, 4, 4)
    global_blocks: tuple[int, int, int, int] = (0, 1, 1, 1)
    kernel_sizes: tuple[int, int, int, int] = (3, 5, 7, 9)
    d2_scales: tuple[int, int, int, int] = (2, 2, 3, 4)
    pos_embedding: tuple[bool, bool, bool, bool] = (False, True, False, False)
    expand_ratio: int = 4


# timm's edgenext_x_small and edgenext_xx_small
VARIANTS: dict[str, EdgeNeXtLayout] = {
    "xs": EdgeNeXtLayout(depths=(3, 3, 9, 3), dims=(32, 64, 100, 192)),
    "xxs": EdgeNeXtLayout(depths=(2, 2, 6, 2), dims=(24, 48, 88, 168)),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _depthwise(channels: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


class ConvBlock(nn.Module):
    """Depthwise conv, then LayerNorm and an inverted-bottleneck MLP over channels, layer-scaled residual."""

    def __init__(self, dim: int, kernel_size: int, expand_ratio: int) -> None:
        super().__init__()
        self.conv_dw = _depthwise(dim, kernel_size)
        self.norm = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = Mlp(dim, expand_ratio * dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class PositionalEncodingFourier(nn.Module):
    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.temperature = temperature

    def forward(self, height: int, width: int) -> Tensor:
        """(1, dim, height, width); the same for every image of a batch, so computed once."""
        device = self.token_projection.weight.device
        ones = torch.ones((1, height, width), device=device)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + _EPS) * 2 * math.pi
        x_embed = x_embed / (x_embed[:, :, -1:] + _EPS) * 2 * math.pi
        dim_t = torch.arange(self.hidden_dim, device=device).to(torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.hidden_dim)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
        return self.token_projection(pos)


class CrossCovarianceAttn(nn.Module):
    """XCA: attention across channels (a C x C map per head), not across positions."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.permute(0, 3, 1, 2).reshape(batch, tokens, channels))


class SplitTransposeBlock(nn.Module):
    """Res2Net-like split depthwise convs, XCA over channels, then the inverted-bottleneck MLP."""

    def __init__(self, dim: int, scales: int, num_heads: int, expand_ratio: int, pos_embedding: bool) -> None:
        super().__init__()
        width = max(math.ceil(dim / scales), dim // scales)
        self.convs = nn.ModuleList([_depthwise(width, 3) for _ in range(max(1, scales - 1))])
        self.pos_embd = PositionalEncodingFourier(dim) if pos_embedding else None
        self.norm_xca = nn.LayerNorm(dim, eps=_EPS)
        self.gamma_xca = nn.Parameter(torch.ones(dim))
        self.xca = CrossCovarianceAttn(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = Mlp(dim, expand_ratio * dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        pieces = x.chunk(len(self.convs) + 1, dim=1)
        outputs = []
        piece = pieces[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                piece = piece + pieces[i]
            piece = conv(piece)
            outputs.append(piece)
        outputs.append(pieces[-1])
        x = torch.cat(outputs, 1)

        batch, channels, height, width = x.shape
        x = x.reshape(batch, channels, height * width).permute(0, 2, 1)
        if self.pos_embd is not None:
            x = x + self.pos_embd(height, width).reshape(1, channels, height * width).permute(0, 2, 1)
        x = x + self.gamma_xca * self.xca(self.norm_xca(x))
        x = x.reshape(batch, height, width, channels)
        x = self.gamma * self.mlp(self.norm(x))
        return shortcut + x.permute(0, 3, 1, 2)


class EdgeNeXtStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stage: int, layout: EdgeNeXtLayout) -> None:
        super().__init__()
        # stage 0 follows the stride-4 stem; the others halve the resolution first
        self.downsample: nn.Module = (
            nn.Identity()
            if stage == 0
            else nn.Sequential(LayerNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=2))
        )
        depth, global_blocks = layout.depths[stage], layout.global_blocks[stage]
        blocks: list[nn.Module] = [
            ConvBlock(out_chs, layout.kernel_sizes[stage], layout.expand_ratio)
            if i < depth - global_blocks
            else SplitTransposeBlock(
                out_chs,
                layout.d2_scales[stage],
                layout.heads[stage],
                layout.expand_ratio,
                layout.pos_embedding[stage],
            )
            for i in range(depth)
        ]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class EmbeddingHead(nn.Module):
    """timm's NormMlpClassifierHead after ``reset_classifier(512)``: average pool, LayerNorm, Linear."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_features)
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x.mean(dim=(2, 3), keepdim=True))
        return self.fc(x.flatten(1))


class EdgeNeXt(nn.Module):
    def __init__(self, layout: EdgeNeXtLayout, num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        dims = layout.dims
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(
            *(EdgeNeXtStage(dims[max(i - 1, 0)], dims[i], i, layout) for i in range(len(dims)))
        )
        self.head = EmbeddingHead(dims[-1], num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


class EdgeFace(nn.Module):
    """EdgeFace-XS or -XXS (``variant`` "xs" or "xxs"): EdgeNeXt under ``model.``, as upstream wraps it."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EdgeFace variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.variant = variant
        self.model = EdgeNeXt(VARIANTS[variant])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


__all__ = ["EMBEDDING_DIM", "INPUT_SIZE", "VARIANTS", "EdgeFace", "EdgeNeXtLayout"]
