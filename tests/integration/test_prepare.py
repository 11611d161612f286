"""`prepare_models` on the real upstream files: export once, skip when current, refuse bad sources."""

from __future__ import annotations

import hashlib
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import models.export
from models.export import EXPORT_VERSION
from models.export.prepare import (
    FIX_HINT,
    ExportUnavailableError,
    ModelSourceError,
    download_source,
    prepare_models,
)
from service.runtime.manifest import PROJECT_MANIFEST, ManifestError, load_manifest, sha256_file
from tests.conftest import SHARED_MODELS, require_shared

DETECTOR, EMBEDDER = "retinaface-mnet025", "mobilefacenet"
EMBEDDERS = ("mobilefacenet", "edgeface-xs-q", "edgeface-xxs-q")


@dataclass(frozen=True)
class Prepared:
    model_dir: Path
    messages: list[str]
    seconds: float


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    require_shared()
    pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
    model_dir = tmp_path_factory.mktemp("models")
    messages: list[str] = []
    started = time.perf_counter()
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, progress=messages.append)
    return Prepared(model_dir, messages, time.perf_counter() - started)


def _copy_prepared(prepared: Prepared, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(prepared.model_dir, target)
    return target


@pytest.mark.shared
def test_prepare_writes_onnx_files_and_a_manifest_with_their_hashes(prepared: Prepared) -> None:
    manifest = load_manifest(prepared.model_dir / "manifest.toml")
    project = load_manifest(PROJECT_MANIFEST)
    assert manifest.names() == project.names()
    for entry in manifest:
        onnx_path = prepared.model_dir / entry.onnx_file
        assert onnx_path.is_file()
        assert entry.onnx_sha256 == sha256_file(onnx_path)
        assert entry.export_version == EXPORT_VERSION
        assert entry.source_sha256 == project.get(entry.name).source_sha256
        assert (prepared.model_dir / entry.card).is_file()
    exported = [m.split(" in ")[0] for m in prepared.messages if "exported" in m]
    assert exported == [
        f"{DETECTOR}@1: exported {DETECTOR}.onnx",
        *(f"{name}@1: exported {name}{suffix}.onnx" for name in EMBEDDERS for suffix in ("", ".fp16")),
    ], prepared.messages
    # Non-commercial weights are announced, the others are not.
    announced = [m.split(":")[0] for m in prepared.messages if "NON-COMMERCIAL" in m]
    assert announced == ["edgeface-xs-q@1", "edgeface-xxs-q@1"], prepared.messages


@pytest.mark.shared
def test_prepare_writes_the_embedders_fp16_export_and_records_its_hash(prepared: Prepared) -> None:
    manifest = load_manifest(prepared.model_dir / "manifest.toml")
    embedder, detector = manifest.get(EMBEDDER), manifest.get(DETECTOR)
    fp16_path = prepared.model_dir / f"{EMBEDDER}.fp16.onnx"
    assert embedder.fp16_onnx_sha256 == sha256_file(fp16_path)
    assert embedder.fp16_onnx_sha256 != embedder.onnx_sha256
    assert detector.fp16_onnx_sha256 is None
    assert sorted(p.name for p in prepared.model_dir.glob("*.onnx")) == sorted(
        [f"{DETECTOR}.onnx", *(f"{name}{suffix}.onnx" for name in EMBEDDERS for suffix in ("", ".fp16"))]
    )
    # Half the bytes: the weights really are fp16 (the graph keeps fp32 inputs and outputs).
    fp32_bytes = (prepared.model_dir / f"{EMBEDDER}.onnx").stat().st_size
    assert 0.4 < fp16_path.stat().st_size / fp32_bytes < 0.6
    (message,) = [m for m in prepared.messages if f"exported {EMBEDDER}.fp16.onnx" in m]
    assert "checked on smooth noise" in message and "emulated fp16 min 0.99" in message


@pytest.mark.shared
def test_prepared_graphs_open_in_onnxruntime_with_the_documented_names(prepared: Prepared) -> None:
    ort = pytest.importorskip("onnxruntime")
    manifest = load_manifest(prepared.model_dir / "manifest.toml")
    det = ort.InferenceSession(str(prepared.model_dir / manifest.get(DETECTOR).onnx_file))
    emb = ort.InferenceSession(str(prepared.model_dir / manifest.get(EMBEDDER).onnx_file))
    assert [i.name for i in det.get_inputs()] == ["input"]
    assert [o.name for o in det.get_outputs()] == ["loc", "conf", "landms"]
    assert [o.name for o in emb.get_outputs()] == ["embedding"]
    assert emb.get_inputs()[0].shape == ["batch", 3, 112, 112]


@pytest.mark.shared
def test_second_run_skips_export(prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _copy_prepared(prepared, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.glob("*.onnx")}

    def no_export(*args: object, **kwargs: object) -> str:
        raise AssertionError("exported although the prepared ONNX was current")

    monkeypatch.setattr("models.export.prepare._export", no_export)
    monkeypatch.setattr("models.export.prepare._export_fp16", no_export)
    messages: list[str] = []
    started = time.perf_counter()
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, progress=messages.append)
    assert time.perf_counter() - started < 2.0
    assert sum("up to date" in m for m in messages) == 1 + len(EMBEDDERS), messages
    assert f"{EMBEDDER}.onnx and its fp16 export are up to date" in "\n".join(messages)
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.glob("*.onnx")} == before
    assert (
        load_manifest(model_dir / "manifest.toml").models
        == load_manifest(prepared.model_dir / "manifest.toml").models
    )


@pytest.mark.shared
def test_tampered_onnx_is_exported_again(prepared: Prepared, tmp_path: Path) -> None:
    model_dir = _copy_prepared(prepared, tmp_path)
    onnx_path = model_dir / load_manifest(PROJECT_MANIFEST).get(DETECTOR).onnx_file
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    messages: list[str] = []
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, names=[DETECTOR], progress=messages.append)
    assert any(m.startswith(f"{DETECTOR}@1: exported") for m in messages), messages
    manifest = load_manifest(model_dir / "manifest.toml")
    assert manifest.get(DETECTOR).onnx_sha256 == sha256_file(onnx_path)
    assert manifest.get(EMBEDDER).onnx_sha256 is not None  # not asked for, still current: kept


@pytest.mark.shared
@pytest.mark.parametrize("damage", ["tampered", "deleted"])
def test_a_damaged_fp16_file_is_exported_again_from_the_current_fp32_file(
    prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    model_dir = _copy_prepared(prepared, tmp_path)
    fp16_path = model_dir / f"{EMBEDDER}.fp16.onnx"
    if damage == "tampered":
        fp16_path.write_bytes(fp16_path.read_bytes() + b"\0")
    else:
        fp16_path.unlink()

    def no_export(*args: object, **kwargs: object) -> str:
        raise AssertionError("exported the fp32 file although it was current")

    monkeypatch.setattr("models.export.prepare._export", no_export)
    messages: list[str] = []
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, progress=messages.append)
    assert sum(f"exported {EMBEDDER}.fp16.onnx" in m for m in messages) == 1, messages
    embedder = load_manifest(model_dir / "manifest.toml").get(EMBEDDER)
    assert embedder.fp16_onnx_sha256 == sha256_file(fp16_path)
    assert embedder == load_manifest(prepared.model_dir / "manifest.toml").get(EMBEDDER)  # same bytes again


@pytest.mark.shared
def test_an_embedder_not_asked_for_keeps_its_fp16_hash_only_while_the_file_matches(
    prepared: Prepared, tmp_path: Path
) -> None:
    model_dir = _copy_prepared(prepared, tmp_path)
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, names=[DETECTOR], progress=lambda _: None)
    assert load_manifest(model_dir / "manifest.toml").get(EMBEDDER).fp16_onnx_sha256 is not None
    fp16_path = model_dir / f"{EMBEDDER}.fp16.onnx"
    fp16_path.write_bytes(fp16_path.read_bytes() + b"\0")
    prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, names=[DETECTOR], progress=lambda _: None)
    embedder = load_manifest(model_dir / "manifest.toml").get(EMBEDDER)
    # fp32 still prepared; fp16 no longer vouched for, so loading it asks for `models prepare` again
    assert embedder.onnx_sha256 is not None and embedder.fp16_onnx_sha256 is None


@pytest.mark.shared
def test_the_fp16_export_without_onnx_asks_for_the_train_extra(
    prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = _copy_prepared(prepared, tmp_path)
    (model_dir / f"{EMBEDDER}.fp16.onnx").unlink()
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "models.export.fp16", raising=False)
    monkeypatch.delattr(models.export, "fp16", raising=False)
    with pytest.raises(ExportUnavailableError, match=r"pip install 'facebank\[train\]'.*'onnx'"):
        prepare_models(model_dir=model_dir, source_dir=SHARED_MODELS, progress=lambda _: None)


@pytest.mark.shared
def test_tampered_source_raises_model_source_error_with_the_fix(tmp_path: Path) -> None:
    require_shared()
    entry = load_manifest(PROJECT_MANIFEST).get(DETECTOR)
    sources = tmp_path / "sources"
    sources.mkdir()
    data = bytearray((SHARED_MODELS / entry.source_file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (sources / entry.source_file).write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ModelSourceError) as excinfo:
        prepare_models(
            model_dir=tmp_path / "out", source_dir=sources, names=[DETECTOR], progress=lambda _: None
        )
    message = str(excinfo.value)
    assert entry.source_file in message
    assert entry.source_sha256 in message and actual in message
    assert FIX_HINT in message
    assert "facebank models prepare --download" in message
    assert not (tmp_path / "out" / entry.onnx_file).exists()


def test_missing_source_raises_model_source_error_with_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError) as excinfo:
        prepare_models(model_dir=tmp_path / "out", source_dir=empty, progress=lambda _: None)
    message = str(excinfo.value)
    assert "retinaface-mobilenet0.25.pth not found" in message
    assert str(empty) in message
    assert FIX_HINT in message


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown model"):
        prepare_models(model_dir=tmp_path, names=["arcface"], progress=lambda _: None)


@pytest.mark.shared
def test_export_without_torch_asks_for_the_train_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_shared()
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "models.export.onnx_export", raising=False)
    monkeypatch.delattr(models.export, "onnx_export", raising=False)
    with pytest.raises(ExportUnavailableError, match=r"pip install 'facebank\[train\]'"):
        prepare_models(
            model_dir=tmp_path, source_dir=SHARED_MODELS, names=[DETECTOR], progress=lambda _: None
        )


# -------------------------------------------------------------------------- download, from a local server


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=partial(server.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_streams_verifies_and_renames(file_server: tuple[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    url, served = file_server
    payload = b"weights" * 100_000
    (served / "w.pth").write_bytes(payload)
    entry = replace(
        load_manifest(PROJECT_MANIFEST).get(DETECTOR),
        source_url=f"{url}/w.pth",
        source_file="w.pth",
        source_sha256=hashlib.sha256(payload).hexdigest(),
    )
    path = download_source(entry, tmp_path / "sources", progress=lambda _: None)
    assert path == tmp_path / "sources" / "w.pth"
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["w.pth"]  # no temp file left


def test_download_with_the_wrong_hash_keeps_nothing(file_server: tuple[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    url, served = file_server
    (served / "w.pth").write_bytes(b"not the weights")
    entry = replace(
        load_manifest(PROJECT_MANIFEST).get(DETECTOR), source_url=f"{url}/w.pth", source_file="w.pth"
    )
    with pytest.raises(ModelSourceError, match="does not match the pinned sha256"):
        download_source(entry, tmp_path / "sources", progress=lambda _: None)
    assert list((tmp_path / "sources").iterdir()) == []


def test_download_http_error_is_a_model_source_error(file_server: tuple[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    url, _ = file_server
    entry = replace(load_manifest(PROJECT_MANIFEST).get(DETECTOR), source_url=f"{url}/absent.pth")
    with pytest.raises(ModelSourceError, match="cannot download"):
        download_source(entry, tmp_path / "sources", progress=lambda _: None)
    assert list((tmp_path / "sources").iterdir()) == []
