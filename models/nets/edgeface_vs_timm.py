"""Check models/nets/edgeface.py against timm's EdgeNeXt, output for output, on the published weights.

timm is not a dependency: install it anywhere (``pip install --no-deps --target DIR timm==1.0.31``) and pass
``--timm-path DIR``. timm imports torchvision at import time but EdgeNeXt uses nothing from it; where no
working torchvision is installed (here: only CUDA builds exist for torch 2.13, and they do not load beside the
CPU torch) a stand-in module lets timm import. Both networks get the same dequantized state dict.

Usage::

    python -m models.nets.edgeface_vs_timm --timm-path /tmp/timm --source ../shared/models
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.export.edgeface import dequantized_state_dict, load_edgeface, read_quantized_state_dict

TIMM_NAMES = {
    "xs": ("edgenext_x_small", "edgeface_xs_q.pt"),
    "xxs": ("edgenext_xx_small", "edgeface_xxs_q.pt"),
}


class _Placeholder(type):
    """Any attribute of a stand-in torchvision name is another placeholder class."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _StandInTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA build beside a CPU torch fails in many ways
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-path", type=Path, required=True, help="folder holding the timm package")
    parser.add_argument("--source", type=Path, default=Path("../shared/models"), help="the _q .pt files")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("torchvision") is None or not _torchvision_loads():
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandInTorchvision())
    sys.path.insert(0, str(args.timm_path))
    import timm

    torch.manual_seed(0)
    inputs = torch.randn(8, 3, 112, 112)
    worst = 0.0
    for variant, (timm_name, file_name) in TIMM_NAMES.items():
        path = args.source / file_name
        ours = load_edgeface(path, variant)
        reference = timm.create_model(timm_name)
        reference.reset_classifier(512)
        wrapper = torch.nn.Module()
        wrapper.model = reference
        state = dequantized_state_dict(read_quantized_state_dict(path, variant), path, variant)
        wrapper.load_state_dict(state, strict=True)
        wrapper.eval()
        with torch.no_grad():
            difference = float((ours(inputs) - reference(inputs)).abs().max())
        worst = max(worst, difference)
        print(
            f"{variant}: timm {timm.__version__} {timm_name}, 8 random inputs: "
            f"max |ours - timm| {difference:.2e}"
        )
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
