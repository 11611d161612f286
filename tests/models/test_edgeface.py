"""EdgeFace-XS-Q / -XXS-Q: dequantized into the fp32 network, exported, and every bad file refused cleanly."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.licences import non_commercial
from service.runtime.manifest import PROJECT_MANIFEST, Manifest, load_manifest, sha256_file, write_manifest
from tests.conftest import LFW, SHARED_MODELS, require_shared

torch = pytest.importorskip("torch", reason="EdgeFace export needs the train extra (torch)")
ort = pytest.importorskip("onnxruntime")

from models.export.edgeface import (  # noqa: E402
    EDGEFACE_MODELS,
    WeightFileError,
    export_edgeface,
    load_edgeface,
)
from models.export.prepare import ModelSourceError, prepare_models  # noqa: E402
from models.nets.edgeface import EdgeFace  # noqa: E402

FILES = {"xs": "edgeface_xs_q.pt", "xxs": "edgeface_xxs_q.pt"}
# Parameters of the timm networks with the 512-d head (timm's own count for edgenext_x(x)_small + fc).
PARAMETERS = {"xs": 2_242_620, "xxs": 1_244_744}


def test_the_manifest_pins_both_models_with_their_non_commercial_licence() -> None:
    project = load_manifest(PROJECT_MANIFEST)
    for name in EDGEFACE_MODELS:
        entry = project.get(name)
        assert entry.kind == "embedder" and entry.tag == f"{name}@1"
        assert entry.embedder is not None and entry.embedder.dim == 512
        assert non_commercial(entry.licence) and "CC-BY-NC-SA-4.0" in entry.licence
        assert (PROJECT_MANIFEST.parent / entry.card).is_file()
    assert project.get("edgeface-xs-q").source_sha256 == (
        "a31314377876ab9fa2a75e5638bc528efe79fd17d5c9c0a228fb7f846d7581a6"
    )
    assert project.get("edgeface-xxs-q").source_sha256 == (
        "46be7cc7e8d6e23501c0627fe5fbef101922ee9b85ccbef476987ab1a320b053"
    )
    assert not non_commercial(project.get("mobilefacenet").licence)


def test_prepare_says_the_default_embedder_is_non_commercial_and_names_another_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.export.cli import _embedder_note
    from service.config import Settings

    monkeypatch.delenv("FACEBANK_EMBEDDER", raising=False)
    project = load_manifest(PROJECT_MANIFEST)
    assert _embedder_note(Settings(), project) == (
        "note: edgeface-xs-q, the embedder a fresh database records (FACEBANK_EMBEDDER), has NON-COMMERCIAL "
        "weights (README, Licences); another choice: FACEBANK_EMBEDDER=mobilefacenet before a fresh "
        "database's first start"
    )
    assert _embedder_note(Settings(embedder="mobilefacenet"), project) is None


def test_licence_rule() -> None:
    assert non_commercial("CC-BY-NC-4.0") and non_commercial("weights CC-BY-NC-SA-4.0")
    assert non_commercial("research, non-commercial use")
    assert (
        not non_commercial("MIT") and not non_commercial("CC-BY-SA-4.0") and not non_commercial("Apache-2.0")
    )


@pytest.mark.shared
@pytest.mark.parametrize("variant", ["xs", "xxs"])
def test_dequantized_weights_load_strictly_and_embed_in_512_d(variant: str) -> None:
    require_shared()
    net = load_edgeface(SHARED_MODELS / FILES[variant], variant)
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[variant]
    with torch.no_grad():
        out = net(torch.zeros(3, 3, 112, 112))
    assert out.shape == (3, 512) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def aligned_faces(model_dir: Path) -> np.ndarray:
    from models.export.fp16 import aligned_lfw_faces

    return aligned_lfw_faces(model_dir, LFW, 12, embedder="edgeface-xxs-q")


@pytest.mark.shared
def test_export_matches_pytorch_on_real_faces_at_any_batch(tmp_path: Path, aligned_faces: np.ndarray) -> None:
    onnx_path = tmp_path / "edgeface-xxs-q.onnx"
    report = export_edgeface(
        SHARED_MODELS / FILES["xxs"], onnx_path, variant="xxs", sample_inputs=[aligned_faces]
    )
    assert report.min_cosine is not None and report.min_cosine > 0.9999
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (whole,) = session.run(["embedding"], {"input": aligned_faces})
    for batch in (1, 5):
        (part,) = session.run(["embedding"], {"input": aligned_faces[:batch]})
        np.testing.assert_allclose(part, whole[:batch], rtol=1e-4, atol=1e-4)
    # Different people, different embeddings: the network is not a constant.
    unit = whole / np.linalg.norm(whole, axis=1, keepdims=True)
    off_diagonal = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    assert off_diagonal.max() < 0.9


def _manifest_for(tmp_path: Path, source: Path, name: str = "edgeface-xxs-q") -> Path:
    """The project's entry for `name`, pinned to `source` (its file name and sha256), alone in a manifest."""
    entry = replace(
        load_manifest(PROJECT_MANIFEST).get(name), source_file=source.name, source_sha256=sha256_file(source)
    )
    (tmp_path / "project").mkdir()
    return write_manifest(Manifest(models=(entry,)), tmp_path / "project" / "manifest.toml")


def _prepare_fails(tmp_path: Path, manifest: Path, source_dir: Path) -> str:
    model_dir = tmp_path / "models"
    with pytest.raises(ModelSourceError) as raised:
        prepare_models(
            model_dir=model_dir,
            source_dir=source_dir,
            manifest_path=manifest,
            names=["edgeface-xxs-q"],
            progress=print,
        )
    # Nothing half-written: no ONNX file (not even a temporary one) and no prepared manifest.
    assert sorted(p.name for p in model_dir.iterdir()) == []
    return str(raised.value)


@pytest.mark.shared
def test_a_file_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    require_shared()
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copyfile(SHARED_MODELS / FILES["xxs"], sources / FILES["xxs"])
    with (sources / FILES["xxs"]).open("ab") as handle:
        handle.write(b"\0")
    message = _prepare_fails(tmp_path, PROJECT_MANIFEST, sources)
    assert str(sources / FILES["xxs"]) in message
    assert "46be7cc7e8d6e23501c0627fe5fbef101922ee9b85ccbef476987ab1a320b053" in message


@pytest.mark.shared
def test_a_state_dict_of_another_architecture_is_refused_naming_it(tmp_path: Path) -> None:
    require_shared()
    other = SHARED_MODELS / "mobilefacenet.pt"
    message = _prepare_fails(tmp_path, _manifest_for(tmp_path, other), SHARED_MODELS)
    assert message.startswith(f"edgeface-xxs-q: {other}: not an EdgeFace-XXS-Q state dict")
    assert "missing" in message and "unexpected" in message
    # Nor is the XS file an XXS network (other depths and widths).
    with pytest.raises(WeightFileError, match=r"xs_q\.pt: not an EdgeFace-XXS-Q state dict.*missing"):
        load_edgeface(SHARED_MODELS / FILES["xs"], "xxs")


@pytest.mark.shared
def test_a_quantized_file_the_loader_cannot_dequantize_is_refused(tmp_path: Path) -> None:
    require_shared()
    state = torch.load(SHARED_MODELS / FILES["xxs"], map_location="cpu", weights_only=True)
    key = "model.head.fc._packed_params._packed_params"
    weight, bias = state[key]
    # quint8 weights: what a static (not dynamic) quantization would hold; not what this loader reads.
    state[key] = (torch.quantize_per_tensor(weight.dequantize(), 0.01, 128, torch.quint8), bias)
    bad = tmp_path / "sources" / "edgeface_xxs_q_quint8.pt"
    bad.parent.mkdir()
    torch.save(state, bad)
    message = _prepare_fails(tmp_path, _manifest_for(tmp_path, bad), bad.parent)
    assert f"{bad}: cannot dequantize {key}" in message and "expected a qint8 tensor" in message


def test_a_file_that_is_no_state_dict_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "edgeface_xxs_q.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightFileError, match=f"{junk}: not a readable PyTorch state dict"):
        load_edgeface(junk, "xxs")
    torch.save([1, 2, 3], junk)
    with pytest.raises(WeightFileError, match="holds a list, expected an EdgeFace-XXS-Q state dict"):
        load_edgeface(junk, "xxs")
    assert isinstance(EdgeFace("xs"), torch.nn.Module)


def test_models_list_shows_each_models_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(tmp_path / "models"))  # not prepared: the project manifest
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    assert main(["models", "list"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines() if "@" in line}
    for entry in load_manifest(PROJECT_MANIFEST):
        assert lines[entry.tag].rstrip().endswith(entry.licence)
    assert "non-commercial" in lines["edgeface-xs-q@1"] and "non-commercial" in lines["edgeface-xxs-q@1"]


@pytest.mark.shared
def test_prepare_only_some_models_leaves_the_non_commercial_ones_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_shared()
    from service.cli import main
    from service.cli.serve import load_for_serving
    from service.config import Settings

    model_dir = tmp_path / "models"
    common = ["models", "prepare", "--from", str(SHARED_MODELS), "--model-dir", str(model_dir)]
    monkeypatch.delenv("FACEBANK_EMBEDDER", raising=False)
    assert main([*common, "--only", "retinaface-mnet025", "mobilefacenet"]) == 0
    out = capsys.readouterr().out
    assert "NON-COMMERCIAL" not in out
    assert load_manifest(model_dir / "manifest.toml").names() == ["retinaface-mnet025", "mobilefacenet"]
    assert not list(model_dir.glob("edgeface*"))
    # The default embedder (EdgeFace) is left out: prepare says what a fresh database needs instead ...
    assert "set FACEBANK_EMBEDDER=mobilefacenet before a fresh database's first start" in out
    # ... and `serve` on a fresh database refuses in one line naming the same fix, which then works.
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: refusing to serve: the default embedder edgeface-xs-q is not prepared")
    fix = "or on a fresh database set a prepared one: FACEBANK_EMBEDDER=mobilefacenet"
    assert err.rstrip().endswith(fix)
    assert main(["doctor"]) != 0  # doctor and ingest name the same fix
    assert fix in capsys.readouterr().out
    photos = tmp_path / "photos" / "Someone"
    photos.mkdir(parents=True)
    (photos / "1.jpg").write_bytes((LFW / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes())
    assert main(["ingest", str(photos.parent)]) != 0
    printed = capsys.readouterr()
    out = " ".join((printed.out + printed.err).split())  # rich wraps long lines
    assert "error: the default embedder edgeface-xs-q is not prepared" in out and fix in out
    assert "ModelLoadError" not in out
    monkeypatch.setenv("FACEBANK_EMBEDDER", "mobilefacenet")
    models, problem = load_for_serving(Settings())
    assert problem is None and models is not None and models.embedder_tag == "mobilefacenet@1"
    # An unknown name is a usage error naming the known ones, not a traceback.
    assert main([*common, "--only", "edgeface-xl"]) == 2
    assert "unknown model(s) edgeface-xl; known: retinaface-mnet025, mobilefacenet" in capsys.readouterr().err


@pytest.mark.shared
@pytest.mark.parametrize(
    ("file_name", "why"),
    [
        # a quantized layer is no plain tensor
        ("edgeface_xxs_q.pt", "is not a plain tensor; expected a MobileFaceNet state dict"),
        # plain tensors, another network's keys
        ("retinaface-mobilenet0.25.pth", "not a MobileFaceNet state dict: missing "),
    ],
)
def test_mobilefacenet_pinned_to_another_networks_file_is_refused_the_same_way(
    tmp_path: Path, file_name: str, why: str
) -> None:
    require_shared()
    other = SHARED_MODELS / file_name
    entry = replace(
        load_manifest(PROJECT_MANIFEST).get("mobilefacenet"),
        source_file=other.name,
        source_sha256=sha256_file(other),
    )
    (tmp_path / "project").mkdir()
    manifest = write_manifest(Manifest(models=(entry,)), tmp_path / "project" / "manifest.toml")
    model_dir = tmp_path / "models"
    with pytest.raises(ModelSourceError) as raised:
        prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, manifest_path=manifest, progress=print)
    assert str(raised.value).startswith(f"mobilefacenet: {other}: ") and why in str(raised.value)
    assert list(model_dir.iterdir()) == []  # nothing written
