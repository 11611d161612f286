"""service.runtime.manifest: the project manifest, validation messages, tags and the TOML round trip."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from service.runtime.manifest import (
    PROJECT_MANIFEST,
    Manifest,
    ManifestError,
    dumps_manifest,
    load_manifest,
    parse_manifest,
    sha256_file,
    write_manifest,
)

SHA_A = "a" * 64


@pytest.fixture(scope="module")
def project() -> Manifest:
    return load_manifest(PROJECT_MANIFEST)


def _rewrite(tmp_path: Path, old: str, new: str) -> Path:
    text = PROJECT_MANIFEST.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "manifest.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_project_manifest_lists_one_detector_and_three_embedders(project: Manifest) -> None:
    assert project.names() == ["retinaface-mnet025", "mobilefacenet", "edgeface-xs-q", "edgeface-xxs-q"]
    assert [e.name for e in project.detectors()] == ["retinaface-mnet025"]
    assert [e.name for e in project.embedders()] == ["mobilefacenet", "edgeface-xs-q", "edgeface-xxs-q"]
    assert project.root == PROJECT_MANIFEST.parent


def test_project_manifest_pins_the_upstream_files(project: Manifest) -> None:
    detector, embedder = project.get("retinaface-mnet025"), project.get("mobilefacenet")
    assert detector.source_sha256 == "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1"
    assert embedder.source_sha256 == "90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4"
    assert detector.onnx_sha256 is None and embedder.onnx_sha256 is None  # only prepared copies carry it


def test_project_manifest_carries_preprocessing_anchors_and_template(project: Manifest) -> None:
    detector, embedder = project.get("retinaface-mnet025"), project.get("mobilefacenet")
    assert detector.preprocess.channel_order == "BGR"
    assert detector.preprocess.mean == (104.0, 117.0, 123.0)
    assert detector.detector is not None and detector.embedder is None
    assert detector.detector.min_sizes == ((10, 20), (32, 64), (128, 256))
    assert detector.detector.steps == (8, 16, 32)
    assert detector.detector.variances == (0.1, 0.2)
    assert embedder.preprocess.channel_order == "RGB"
    assert embedder.preprocess.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    assert embedder.preprocess.std == pytest.approx((0.229 * 255, 0.224 * 255, 0.225 * 255))
    assert embedder.embedder is not None and embedder.detector is None
    assert embedder.embedder.input_size == (112, 112)
    assert embedder.embedder.dim == 128
    assert len(embedder.embedder.template) == 5


def test_every_model_card_exists(project: Manifest) -> None:
    for entry in project:
        assert (PROJECT_MANIFEST.parent / entry.card).is_file(), entry.card


def test_tag_is_name_at_version(project: Manifest) -> None:
    assert project.get("mobilefacenet").tag == "mobilefacenet@1"
    assert replace(project.get("retinaface-mnet025"), version="2b").tag == "retinaface-mnet025@2b"


def test_unknown_model_name_lists_the_known_ones(project: Manifest) -> None:
    with pytest.raises(ManifestError, match=r"no model 'arcface'.*retinaface-mnet025, mobilefacenet"):
        project.get("arcface")


def test_round_trip_through_write_manifest_keeps_every_field(project: Manifest, tmp_path: Path) -> None:
    prepared = Manifest(
        models=tuple(entry.prepared(onnx_sha256=SHA_A, export_version="7") for entry in project)
    )
    path = write_manifest(prepared, tmp_path / "manifest.toml", header="written by a test\nsecond line")
    again = load_manifest(path)
    assert again.models == prepared.models
    assert again.get("mobilefacenet").onnx_sha256 == SHA_A
    assert again.get("mobilefacenet").export_version == "7"
    assert path.read_text(encoding="utf-8").startswith("# written by a test\n# second line\n")
    assert not list(tmp_path.glob(".*.tmp"))


def test_written_manifest_is_plain_toml_with_awkward_strings(project: Manifest) -> None:
    entry = replace(project.get("mobilefacenet"), provenance='quotes " and \\ backslash\nnewline, ünïcode')
    text = dumps_manifest(Manifest(models=(entry,)))
    table = tomllib.loads(text)["models"]["mobilefacenet"]
    assert table["provenance"] == entry.provenance
    assert "onnx_sha256" not in table  # None fields are left out


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('kind = "detector"', 'kind = "tracker"', "models.retinaface-mnet025.kind"),
        ('version = "1"', "version = 1", "models.retinaface-mnet025.version"),
        (
            'channel_order = "BGR"',
            'channel_order = "BRG"',
            "models.retinaface-mnet025.preprocess.channel_order",
        ),
        ("std = [1.0, 1.0, 1.0]", "std = [1.0, 0.0, 1.0]", "models.retinaface-mnet025.preprocess.std"),
        (
            "mean = [104.0, 117.0, 123.0]",
            "mean = [104.0, 117.0]",
            "models.retinaface-mnet025.preprocess.mean",
        ),
        ("steps = [8, 16, 32]", "steps = [8, 16]", "models.retinaface-mnet025.detector.min_sizes"),
        ("variances = [0.1, 0.2]", "variances = [0.1]", "models.retinaface-mnet025.detector.variances"),
        ("nms_threshold = 0.4", "nms_threshold = 4", "models.retinaface-mnet025.detector.nms_threshold"),
        ("max_side = 640", "max_side = -1", "models.retinaface-mnet025.detector.max_side"),
        ("max_side = 640", "max_side = 640\nmax_sid = 1", "models.retinaface-mnet025.detector.max_sid"),
        ("dim = 128", "dim = true", "models.mobilefacenet.embedder.dim"),
        ("threshold = 0.35", "threshold = 1.5", "models.mobilefacenet.embedder.threshold"),
        ("[70.7299, 92.2041]]", "]", "models.mobilefacenet.embedder.template"),
        ('source_sha256 = "90a0', 'source_sha256 = "XYZ', "models.mobilefacenet.source_sha256"),
        ('onnx_file = "mobilefacenet.onnx"', 'onnx_file = "../x.onnx"', "models.mobilefacenet.onnx_file"),
        ('source_url = "https://github.com/foamliu', 'source_url = "http://github.com/foamliu', "source_url"),
        ('licence = "MIT"\n', "", "models.retinaface-mnet025.licence: missing"),
        (
            "[models.mobilefacenet.embedder]",
            "[models.mobilefacenet.detector]",
            "models.mobilefacenet.detector",
        ),
    ],
)
def test_invalid_field_raises_manifest_error_naming_it(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    path = _rewrite(tmp_path, old, new)
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path)
    assert field in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_broken_toml_and_missing_file_raise_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[models.x\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(broken)


def test_manifest_without_models_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="models"):
        load_manifest(empty)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"facebank" * 300_000)
    import hashlib

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path, chunk_size=7) == sha256_file(path)


def test_reading_the_manifest_does_not_import_torch() -> None:
    code = "import sys, service.runtime.manifest as m; m.load_manifest(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------ trained models (origin)

TRAINED = "mobilefacenet-celeba-csoftmax"
# Trained artefacts stay beside the code that made them; their fragment's card path is relative to models/.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
TRAINED_FRAGMENT = MODELS_DIR / "trained" / f"{TRAINED}.toml"


def _trained_table(**changes: object) -> dict[str, object]:
    """The committed C-Softmax fragment as parsed TOML, with some fields changed (None removes one)."""
    table = dict(tomllib.loads(TRAINED_FRAGMENT.read_text(encoding="utf-8"))["models"][TRAINED])
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return {"models": {TRAINED: table}}


def test_the_committed_trained_fragment_is_a_trained_entry_without_an_upstream_url() -> None:
    entry = load_manifest(TRAINED_FRAGMENT).get(TRAINED)
    assert entry.trained and entry.origin == "trained"
    assert entry.source_url is None
    assert "trained.invalid" not in TRAINED_FRAGMENT.read_text(encoding="utf-8")
    assert entry.base_model == "mobilefacenet@1"
    assert entry.trained_by is not None and entry.trained_by.startswith("facebank train")
    # The card exists and records the same ONNX.
    card = MODELS_DIR / entry.card
    assert entry.onnx_sha256 is not None and entry.onnx_sha256 in card.read_text(encoding="utf-8")


def test_upstream_entries_default_to_origin_upstream(project: Manifest) -> None:
    assert {entry.origin for entry in project} == {"upstream"}
    assert not any(entry.trained for entry in project)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source_url": "https://trained.invalid/x.pt"}, f"models.{TRAINED}.source_url: a trained model"),
        ({"onnx_sha256": None}, f"models.{TRAINED}.onnx_sha256: missing; a trained model must carry"),
        ({"base_model": None}, f"models.{TRAINED}.base_model: missing"),
        ({"trained_by": None}, f"models.{TRAINED}.trained_by: missing"),
        ({"base_model": "mobilefacenet"}, f"models.{TRAINED}.base_model: expected a model tag name@version"),
        ({"onnx_sha256": "72fe"}, f"models.{TRAINED}.onnx_sha256: expected 64 lower-case hex"),
        ({"source_sha256": None}, f"models.{TRAINED}.source_file: give source_file and source_sha256"),
        ({"card": None}, f"models.{TRAINED}.card: missing"),
        ({"origin": "downloaded"}, f"models.{TRAINED}.origin: expected 'upstream' or 'trained'"),
    ],
)
def test_a_trained_entry_is_validated_with_messages_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ManifestError) as excinfo:
        parse_manifest(_trained_table(**changes))
    assert message in str(excinfo.value)


def test_a_trained_entry_needs_no_source_files_at_all() -> None:
    entry = parse_manifest(_trained_table(source_file=None, source_sha256=None)).get(TRAINED)
    assert entry.source_file is None and entry.source_sha256 is None and entry.onnx_sha256 is not None


def test_an_upstream_entry_is_refused_trained_only_fields(tmp_path: Path) -> None:
    path = _rewrite(tmp_path, 'kind = "embedder"\n', 'kind = "embedder"\nbase_model = "x@1"\n')
    with pytest.raises(ManifestError, match=r"models.mobilefacenet.base_model: only models with origin"):
        load_manifest(path)
    text = _rewrite(tmp_path, "x", "x").read_text(encoding="utf-8")
    without_url = "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith('source_url = "https://github.com/foam')
    )
    (tmp_path / "manifest.toml").write_text(without_url, encoding="utf-8")
    with pytest.raises(ManifestError, match=r"models.mobilefacenet.source_url: missing"):
        load_manifest(tmp_path / "manifest.toml")


def test_a_trained_entry_round_trips_through_write_manifest(project: Manifest, tmp_path: Path) -> None:
    trained = load_manifest(TRAINED_FRAGMENT).get(TRAINED)
    both = Manifest(models=(*project.models, trained))
    again = load_manifest(write_manifest(both, tmp_path / "manifest.toml"))
    assert again.models == both.models
    table = tomllib.loads((tmp_path / "manifest.toml").read_text(encoding="utf-8"))["models"]
    assert table[TRAINED]["origin"] == "trained" and "source_url" not in table[TRAINED]
    assert "origin" not in table["mobilefacenet"]  # upstream stays the implicit default


# ------------------------------------------------------------------------------ fp16 export of an embedder

SHA_B = "b" * 64


def test_an_embedders_fp16_hash_round_trips_through_write_manifest(project: Manifest, tmp_path: Path) -> None:
    detector, embedder = project.get("retinaface-mnet025"), project.get("mobilefacenet")
    prepared = Manifest(
        models=(
            detector.prepared(onnx_sha256=SHA_A, export_version="1"),
            embedder.prepared(onnx_sha256=SHA_A, export_version="1", fp16_onnx_sha256=SHA_B),
        )
    )
    path = write_manifest(prepared, tmp_path / "manifest.toml")
    again = load_manifest(path)
    assert again.models == prepared.models
    assert again.get("mobilefacenet").fp16_onnx_sha256 == SHA_B
    assert again.get("retinaface-mnet025").fp16_onnx_sha256 is None
    table = tomllib.loads(path.read_text(encoding="utf-8"))["models"]
    assert table["mobilefacenet"]["fp16_onnx_sha256"] == SHA_B
    assert "fp16_onnx_sha256" not in table["retinaface-mnet025"]


def test_preparing_again_without_an_fp16_export_drops_the_old_fp16_hash(project: Manifest) -> None:
    with_fp16 = project.get("mobilefacenet").prepared(
        onnx_sha256=SHA_A, export_version="1", fp16_onnx_sha256=SHA_B
    )
    assert with_fp16.prepared(onnx_sha256=SHA_A, export_version="1").fp16_onnx_sha256 is None


def test_a_detector_has_no_fp16_export(project: Manifest, tmp_path: Path) -> None:
    detector = project.get("retinaface-mnet025")
    with pytest.raises(ManifestError, match=r"retinaface-mnet025\.fp16_onnx_sha256: only embedders"):
        detector.prepared(onnx_sha256=SHA_A, export_version="1", fp16_onnx_sha256=SHA_B)
    path = _rewrite(
        tmp_path,
        'onnx_file = "retinaface-mnet025.onnx"',
        f'onnx_file = "retinaface-mnet025.onnx"\nfp16_onnx_sha256 = "{SHA_B}"',
    )
    with pytest.raises(ManifestError, match=r"models\.retinaface-mnet025\.fp16_onnx_sha256: only embedders"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('fp16_onnx_sha256 = "72fe"', "models.mobilefacenet.fp16_onnx_sha256: expected 64 lower-case hex"),
        (f'fp16_onnx_sha256 = "{SHA_B.upper()}"', "models.mobilefacenet.fp16_onnx_sha256: expected 64"),
        (f'fp16_sha256 = "{SHA_B}"', "models.mobilefacenet.fp16_sha256: unknown field"),
    ],
)
def test_a_bad_fp16_hash_is_refused_naming_the_field(tmp_path: Path, line: str, message: str) -> None:
    onnx_line = 'onnx_file = "mobilefacenet.onnx"'
    path = _rewrite(tmp_path, onnx_line, f"{onnx_line}\n{line}")
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path)
    assert message in str(excinfo.value)


def test_a_prepared_embedder_reads_its_fp16_hash(tmp_path: Path) -> None:
    onnx_line = 'onnx_file = "mobilefacenet.onnx"'
    path = _rewrite(tmp_path, onnx_line, f'{onnx_line}\nfp16_onnx_sha256 = "{SHA_B}"')
    assert load_manifest(path).get("mobilefacenet").fp16_onnx_sha256 == SHA_B
