"""The networks ``facebank train`` can fine-tune, and the one place that says what each needs.

A :class:`Base` names the project-manifest embedder whose preprocessing, template, input size and dimension
a fine-tune inherits, its default initial weights, how to build the network from a weight file (the upstream
file, or a fine-tune's fp32 state dict), how to cut it into a frozen trunk and a trainable top, the licence a
CelebA fine-tune of it carries, and the words its model card uses.

- ``mobilefacenet``: foamliu's MobileFaceNet (128-d, BatchNorm); blocks = its 15 bottleneck blocks.
- ``edgeface-xs``: Idiap's EdgeFace-XS (EdgeNeXt, 512-d, LayerNorm only: no running statistics to drift),
  initialised from the dequantized ``edgeface_xs_q.pt``; blocks = the 18 blocks of its four stages, each
  stage's downsampling layer travelling with the stage's first block.

Usage::

    base = get_base("edgeface-xs")
    net = base.build(base.default_init)
    trunk, top = base.split(net, 15)   # top(trunk(x)) == net(x)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from service.runtime.manifest import PROJECT_MANIFEST, ModelEntry, Preprocess, load_manifest

if TYPE_CHECKING:  # torch is imported by the functions that build networks, so the CLI loads without it
    from torch import nn

BaseName = Literal["mobilefacenet", "edgeface-xs"]
CELEBA_LICENCE = "fine-tuned on CelebA (non-commercial research licence)"


@dataclass(frozen=True)
class Base:
    name: BaseName
    manifest_entry: str  # the project manifest's embedder this network is served as
    default_init: Path
    blocks: int  # how many blocks ``split`` can put into the frozen trunk
    network: str  # model card: what the network is
    origin: str  # model card: where the initial weights come from
    licence: str  # of a fine-tune of these weights on CelebA
    # weight file → network in eval mode, strictly loaded
    build: Callable[[str | os.PathLike[str]], nn.Module]
    # (trunk, top) sharing the network's modules: top(trunk(x)) == net(x)
    split: Callable[[nn.Module, int], tuple[nn.Sequential, nn.Sequential]]

    def entry(self) -> ModelEntry:
        return load_manifest(PROJECT_MANIFEST).get(self.manifest_entry)

    def preprocess(self) -> Preprocess:
        """The pixel preprocessing the served graph expects (the base embedder's manifest entry)."""
        return self.entry().preprocess

    @property
    def dim(self) -> int:
        spec = self.entry().embedder
        assert spec is not None
        return spec.dim


def _build_mobilefacenet(path: str | os.PathLike[str]) -> nn.Module:
    from models.export.onnx_export import build_embedder

    return build_embedder(path)


def _split_mobilefacenet(net: nn.Module, frozen_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    from torch import nn

    from models.nets.mobilefacenet import MobileFaceNet

    assert isinstance(net, MobileFaceNet)
    blocks = list(net.features.children())
    trunk = nn.Sequential(net.conv1, net.dw_conv, *blocks[:frozen_blocks])
    top = nn.Sequential(*blocks[frozen_blocks:], net.conv2, net.gdconv, net.conv3, net.bn, nn.Flatten(1))
    return trunk, top


def _build_edgeface_xs(path: str | os.PathLike[str]) -> nn.Module:
    from models.export.edgeface import load_edgeface

    return load_edgeface(path, "xs")  # the published _q file (dequantized) or a fine-tune's fp32 weights


def _split_edgeface(net: nn.Module, frozen_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    from torch import nn

    from models.nets.edgeface import EdgeFace, EdgeNeXtStage

    assert isinstance(net, EdgeFace)
    units: list[nn.Module] = []
    for stage in net.model.stages.children():
        assert isinstance(stage, EdgeNeXtStage)
        for i, block in enumerate(stage.blocks.children()):
            units.append(nn.Sequential(stage.downsample, block) if i == 0 else block)
    trunk = nn.Sequential(net.model.stem, *units[:frozen_blocks])
    top = nn.Sequential(*units[frozen_blocks:], net.model.head)
    return trunk, top


BASES: dict[str, Base] = {
    "mobilefacenet": Base(
        name="mobilefacenet",
        manifest_entry="mobilefacenet",
        default_init=Path("../shared/models/mobilefacenet.pt"),
        blocks=15,
        network="MobileFaceNet (`models/nets/mobilefacenet.py`), 128-d",
        origin="foamliu/MobileFaceNet, see `mobilefacenet.md`",
        licence=(
            f"research and non-commercial use only: {CELEBA_LICENCE} from MobileFaceNet weights trained on "
            "MS-Celeb-1M (research use only)"
        ),
        build=_build_mobilefacenet,
        split=_split_mobilefacenet,
    ),
    "edgeface-xs": Base(
        name="edgeface-xs",
        manifest_entry="edgeface-xs-q",
        default_init=Path("../shared/models/edgeface_xs_q.pt"),
        blocks=18,
        network="EdgeFace-XS (EdgeNeXt, `models/nets/edgeface.py`), 512-d, fp32 (Linear weights dequantized)",
        origin="Idiap EdgeFace-XS-Q, see `edgeface.md`",
        licence=(
            f"CC-BY-NC-SA-4.0, non-commercial use only: {CELEBA_LICENCE} from Idiap's EdgeFace-XS-Q weights "
            "(CC-BY-NC-SA-4.0)"
        ),
        build=_build_edgeface_xs,
        split=_split_edgeface,
    ),
}
BASE_NAMES: tuple[BaseName, ...] = get_args(BaseName)


def get_base(name: str) -> Base:
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {name!r}") from None


__all__ = ["BASES", "BASE_NAMES", "Base", "BaseName", "get_base"]
