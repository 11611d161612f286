"""A CI-sized `facebank eval openset --limit` run through the real pipeline and the CLI handler, and the
full LFW open-set split counted on the real files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from models.evaluation.cli import register
from models.evaluation.lfw import list_images
from models.evaluation.run_openset import lfw_open_set_split
from service.config import DEFAULT_EMBEDDER, Settings
from service.runtime.manifest import load_manifest
from tests._ci import skip_or_fail_in_ci
from tests.conftest import LFW, SHARED, require_shared
from tests.evaluation._prepared import prepared_model_dir

pytestmark = pytest.mark.shared

CELEBA = SHARED / "data" / "celeba-train"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="facebank")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _require_celeba() -> None:
    require_shared()
    if not CELEBA.is_dir():
        skip_or_fail_in_ci(f"needs {CELEBA} (../shared)")


def test_full_lfw_open_set_split_has_the_published_sizes() -> None:
    require_shared()
    split = lfw_open_set_split(list_images(LFW))
    # 1,680 people have two or more photos, 4,069 have one; 13,233 photos in all.
    assert (len(split.gallery), len(split.mated), len(split.non_mated)) == (1680, 7484, 4069)


def test_eval_openset_with_limit_takes_thresholds_from_celeba_and_reports_lfw(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_celeba()
    model_dir = prepared_model_dir(tmp_path_factory)
    settings = Settings(model_dir=model_dir, data_dir=tmp_path_factory.mktemp("data"))
    argv = ["eval", "openset", "--limit", "120", "--json", "-q", "--cache", str(tmp_path_factory.mktemp("c"))]
    args = _parse([*argv, "--lfw", str(LFW), "--celeba", str(CELEBA)])
    assert args.handler(args, settings) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == f"{DEFAULT_EMBEDDER}@1" and report["limit"] == 120
    lfw, celeba = report["lfw"], report["celeba"]
    for fpir in ("0.01", "0.001"):
        chosen = celeba["pooled_thresholds"][fpir]
        applied = lfw["at_celeba_threshold"][fpir]
        # The LFW figure uses the CelebA threshold unchanged, and CelebA holds its FPIR target there.
        assert applied["threshold"] == chosen["threshold"]
        assert chosen["false_alarms"] <= float(fpir) * chosen["non_mated"]
        assert chosen["non_mated"] == celeba["images"] - celeba["no_face"]
        assert applied["hits"] <= applied["mated"] and applied["false_alarms"] <= applied["non_mated"]
        assert len(celeba["trials"]) == 5
    assert sum(t["identities_non_mated"] for t in celeba["trials"]) == celeba["identities"]
    # The service's own cut-off is reported as it is, read from the prepared manifest.
    service_threshold = load_manifest(model_dir / "manifest.toml").get(DEFAULT_EMBEDDER).embedder
    assert service_threshold is not None
    assert lfw["at_manifest_threshold"]["threshold"] == round(service_threshold.threshold, 6)
    assert celeba["at_manifest_threshold"]["threshold"] == round(service_threshold.threshold, 6)
    # ~25 non-mated photos per fold cannot place a 1 % or a 0.1 % threshold on their own.
    assert set(celeba["own_curve_dir"]["0.001"]) == {"unresolved"}
    small = lfw["at_celeba_threshold_celeba_sized_gallery"]["0.01"]
    assert small["gallery"] == min(t["identities_enrolled"] for t in celeba["trials"])
    assert small["draws"] == 5 and 0 <= small["fpir"]["min"] <= small["fpir"]["max"] <= 1
    # ~120 photos of each kind; the pretrained model finds nearly every enrolled LFW person at FPIR 1 %.
    assert lfw["at_celeba_threshold"]["0.01"]["mated"] + lfw["gallery"] >= 120
    assert lfw["at_celeba_threshold"]["0.01"]["non_mated"] >= 120
    assert report["lfw_dir_at_fpir_1e-2"] >= 0.8
    assert lfw["rank1_of_mated"] >= report["lfw_dir_at_fpir_1e-2"]


def test_eval_openset_refuses_lfw_as_the_threshold_set(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = _parse(["eval", "openset", "--celeba", str(tmp_path / "lfw")])
    assert args.handler(args, Settings(model_dir=tmp_path, data_dir=tmp_path)) == 2
    assert "must not be chosen on LFW" in capsys.readouterr().err
