"""Tests for models.plots.loss_geometry: the figure renders as a PNG of the documented size."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training the digits nets needs torch (the 'train' extra)")
pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="the figure is drawn with matplotlib")

from PIL import Image

from models.plots.loss_geometry import DPI, FIGSIZE_IN, plot_loss_geometry


def test_loss_geometry_writes_a_png_of_the_documented_size(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "loss-geometry.png"

    returned = plot_loss_geometry(out, epochs=1, seed=0)

    assert returned == out
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI))
        image.verify()


def test_loss_geometry_refuses_zero_epochs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        plot_loss_geometry(tmp_path / "never.png", epochs=0)
    assert not (tmp_path / "never.png").exists()
