import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser

COMMANDS = ["serve", "models", "keys", "doctor", "ingest", "eval", "train", "plot-losses", "bench"]
COMMANDS += ["identify"]


def test_every_command_is_registered() -> None:
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if a.dest == "command"]
    assert set(COMMANDS) <= set(subcommands.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert "usage: facebank" in capsys.readouterr().out


def test_the_command_line_starts_without_importing_torch() -> None:
    code = "import sys; from service.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("subcommand", ["prepare", "list", "use", "prune"])
def test_each_models_subcommand_explains_itself(subcommand: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["models", subcommand, "--help"])
    assert info.value.code == 0
    assert f"usage: facebank models {subcommand}" in capsys.readouterr().out


def test_models_prune_needs_a_model_tag_and_use_needs_a_name() -> None:
    for argv in (["models", "prune"], ["models", "use"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
    args = build_parser().parse_args(["models", "prune", "--model", "old@1", "--yes"])
    assert (args.model, args.yes) == ("old@1", True)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("FACEBANK_EMBEDDER_PRECISION", "fp16", "fp16 runs only on the CUDA provider"),
        ("FACEBANK_DEVICE", "cuda", "FACEBANK_DEVICE=cuda"),
        ("FACEBANK_EMBEDDER", "no-such-model", "no-such-model"),
    ],
)
def test_serve_refuses_a_setting_it_cannot_run_in_one_line_before_starting_the_server(
    setting: str,
    value: str,
    says: str,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main as facebank

    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(setting, value)
    assert facebank(["serve", "--port", "1"]) == 2  # port 1: were it to start, binding would fail loudly
    error = capsys.readouterr().err
    assert error.startswith("error: refusing to serve: ") and says in error
    assert "Traceback" not in error
