"""A CI-sized LFW run (`facebank eval lfw --limit`) through the real pipeline and the CLI handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from models.evaluation.cli import register
from service.config import DEFAULT_EMBEDDER, Settings
from tests.conftest import LFW, SHARED
from tests.evaluation._prepared import prepared_model_dir

pytestmark = pytest.mark.shared

KEYS = {
    "verification_accuracy",
    "verification_std",
    "tar_at_far_1e-3",
    "identification_top1",
    "identification_top5",
    "identification_top10",
    "no_face",
    "model",
    "seconds",
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="facebank")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_eval_lfw_with_limit_prints_the_agreed_json_and_caches(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = prepared_model_dir(tmp_path_factory)
    cache = tmp_path_factory.mktemp("eval-cache")
    settings = Settings(model_dir=model_dir, data_dir=tmp_path_factory.mktemp("data"))
    argv = ["eval", "lfw", "--limit", "40", "--json", "-q", "--cache", str(cache)]
    argv += ["--lfw", str(LFW), "--pairs", str(SHARED / "data" / "lfw-pairs.txt")]
    args = _parse(argv)
    assert args.handler(args, settings) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= KEYS
    assert report["model"] == f"{DEFAULT_EMBEDDER}@1"
    assert report["pairs"] == 40 and report["limit"] == 40
    # 40 easy pairs and ~40 probes: the pretrained model should get nearly all of them.
    assert report["verification_accuracy"] >= 0.9
    assert report["identification_top1"] >= 0.8
    assert report["no_face"] == 0
    assert any(Path(cache, "embeddings").iterdir())

    args = _parse(argv)
    assert args.handler(args, settings) == 0
    again = json.loads(capsys.readouterr().out)
    assert {k: again[k] for k in KEYS - {"seconds"}} == {k: report[k] for k in KEYS - {"seconds"}}


def test_eval_calibrate_refuses_lfw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = _parse(["eval", "calibrate", str(tmp_path / "lfw")])
    assert args.handler(args, Settings(model_dir=tmp_path, data_dir=tmp_path)) == 2
    assert "LFW is a test set" in capsys.readouterr().err
