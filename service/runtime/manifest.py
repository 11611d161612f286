"""The model manifest: which networks exist, where their weights come from, and how to feed them.

``service/runtime/manifest.toml`` (:data:`PROJECT_MANIFEST`) is the source of truth, one
``[models.<name>]`` table per model. ``facebank models prepare`` writes a copy next to the exported ONNX
files that adds ``onnx_sha256`` and ``export_version``; the service reads that copy and checks each ONNX
file against its hash before loading it.

Two origins. ``origin = "upstream"`` (the default) is a network whose weights are published elsewhere:
``source_file``, an https ``source_url`` and ``source_sha256`` pin them. ``origin = "trained"`` is one made
here by ``facebank train``: it has no upstream URL (``source_url`` is refused), and instead must carry
``onnx_sha256`` (the ONNX file is the artefact), ``base_model`` (the ``name@version`` it was fine-tuned from)
and ``trained_by`` (the command that made it); ``source_file``/``source_sha256`` may name the PyTorch
weights it was exported from.

This module is imported by the service: it uses the standard library only (no torch, no pydantic).

Usage::

    manifest = load_manifest(PROJECT_MANIFEST)
    detector = manifest.get("retinaface-mnet025")
    detector.tag                     # "retinaface-mnet025@1"
    detector.detector.min_sizes      # ((10, 20), (32, 64), (128, 256))
    [e.name for e in manifest.embedders()]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

PROJECT_MANIFEST = Path(__file__).parent / "manifest.toml"

Kind = Literal["detector", "embedder"]
Origin = Literal["upstream", "trained"]
ChannelOrder = Literal["RGB", "BGR"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9._-]*@[^@\s]+$")
_T = TypeVar("_T")


class ManifestError(ValueError):
    """The manifest is unreadable or a field is missing or invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class Preprocess:
    """Pixel preprocessing: ``(pixel[channel_order] - mean) / std`` with pixels in 0..255."""

    channel_order: ChannelOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Anchor layout and post-processing defaults of a RetinaFace-style detector."""

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variances: tuple[float, float]
    score_threshold: float
    nms_threshold: float
    max_side: int


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    """Input size, embedding width, 5-point alignment template (pixels) and cosine match threshold."""

    input_size: tuple[int, int]
    dim: int
    template: tuple[tuple[float, float], ...]
    threshold: float


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One ``[models.<name>]`` table.

    Upstream entries: ``source_*`` set; ``onnx_sha256`` and ``export_version`` only in prepared copies.
    Trained entries: ``onnx_sha256``, ``base_model`` and ``trained_by`` set, ``source_url`` never.
    Embedders may carry ``fp16_onnx_sha256``: the hash of their half-precision export
    (``<onnx_file stem>.fp16.onnx``), which ``FACEBANK_EMBEDDER_PRECISION=fp16`` loads.
    """

    name: str
    kind: Kind
    version: str
    onnx_file: str
    source_file: str | None
    source_url: str | None
    source_sha256: str | None
    licence: str
    provenance: str
    card: str
    preprocess: Preprocess
    detector: DetectorSpec | None = None
    embedder: EmbedderSpec | None = None
    onnx_sha256: str | None = None
    export_version: str | None = None
    origin: Origin = "upstream"
    base_model: str | None = None
    trained_by: str | None = None
    fp16_onnx_sha256: str | None = None

    @property
    def tag(self) -> str:
        """``name@version``: what the service stores next to each embedding it makes."""
        return f"{self.name}@{self.version}"

    @property
    def trained(self) -> bool:
        """Made by ``facebank train`` here: its ONNX file is the artefact, there is nothing to download."""
        return self.origin == "trained"

    def prepared(
        self, *, onnx_sha256: str, export_version: str, fp16_onnx_sha256: str | None = None
    ) -> ModelEntry:
        """A copy carrying the hash of its exported ONNX file (and of its fp16 export, for an embedder that
        has one) and the export code version that made them."""
        if fp16_onnx_sha256 is not None and self.kind != "embedder":
            raise ManifestError(f"models.{self.name}.fp16_onnx_sha256: only embedders have an fp16 export")
        return replace(
            self, onnx_sha256=onnx_sha256, export_version=export_version, fp16_onnx_sha256=fp16_onnx_sha256
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """All model entries of one manifest file, in file order."""

    models: tuple[ModelEntry, ...]
    path: Path | None = None

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ManifestError(f"duplicate model names: {', '.join(duplicates)}")

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return any(entry.name == name for entry in self.models)

    def names(self) -> list[str]:
        return [entry.name for entry in self.models]

    def entries(self) -> list[ModelEntry]:
        return list(self.models)

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; :class:`ManifestError` listing the known names if there is none."""
        for entry in self.models:
            if entry.name == name:
                return entry
        where = f" in {self.path}" if self.path else ""
        raise ManifestError(f"no model {name!r}{where}; known: {', '.join(self.names()) or 'none'}")

    def detectors(self) -> list[ModelEntry]:
        return [entry for entry in self.models if entry.kind == "detector"]

    def embedders(self) -> list[ModelEntry]:
        return [entry for entry in self.models if entry.kind == "embedder"]

    @property
    def root(self) -> Path | None:
        """The folder relative paths (``onnx_file``, ``card``) are resolved against."""
        return self.path.parent if self.path else None


# ---------------------------------------------------------------------------------------------- reading


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: str | os.PathLike[str] = PROJECT_MANIFEST) -> Manifest:
    """Parse and validate a manifest file; :class:`ManifestError` names the file and the offending field."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no such manifest") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_manifest(data, path=path)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc


def parse_manifest(data: Mapping[str, Any], *, path: Path | None = None) -> Manifest:
    """Validate already-parsed TOML data (``{"models": {name: table}}``)."""
    _no_unknown_keys(data, {"models"}, "")
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise ManifestError("models: expected at least one [models.<name>] table")
    return Manifest(models=tuple(_entry(name, table) for name, table in models.items()), path=path)


def _entry(name: str, table: Any) -> ModelEntry:
    where = f"models.{name}"
    if not _NAME.match(name):
        raise ManifestError(f"{where}: model names are lower-case letters, digits, '.', '_' and '-'")
    if not isinstance(table, Mapping):
        raise ManifestError(f"{where}: expected a table")
    fields = _Fields(table, where)
    kind = fields.choice("kind", ("detector", "embedder"))
    other = "embedder" if kind == "detector" else "detector"
    _no_unknown_keys(table, _ENTRY_KEYS | {kind}, where)
    if other in table:
        raise ManifestError(f"{where}.{other}: a {kind} has no [{where}.{other}] table")
    if kind == "detector" and "fp16_onnx_sha256" in table:
        raise ManifestError(f"{where}.fp16_onnx_sha256: only embedders have an fp16 export")
    origin = fields.choice("origin", ("upstream", "trained")) if "origin" in table else "upstream"
    if origin == "trained":
        missing = [key for key in ("onnx_sha256", "base_model", "trained_by") if key not in table]
        if missing:
            raise ManifestError(
                f"{where}.{missing[0]}: missing; a trained model must carry onnx_sha256 (its ONNX file is "
                "the artefact), base_model (name@version it was trained from) and trained_by"
            )
    sources = _trained_sources(fields) if origin == "trained" else _upstream_sources(fields)
    entry = ModelEntry(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        version=fields.text("version"),
        onnx_file=fields.filename("onnx_file"),
        source_file=sources[0],
        source_url=sources[1],
        source_sha256=sources[2],
        licence=fields.text("licence"),
        provenance=fields.text("provenance"),
        card=fields.relative_path("card"),
        preprocess=_preprocess(fields.table("preprocess"), f"{where}.preprocess"),
        onnx_sha256=(fields.sha256 if origin == "trained" else fields.optional_sha256)("onnx_sha256"),
        export_version=fields.optional("export_version", fields.text),
        origin=origin,  # type: ignore[arg-type]
        base_model=fields.tag("base_model") if origin == "trained" else None,
        trained_by=fields.text("trained_by") if origin == "trained" else None,
        fp16_onnx_sha256=fields.optional_sha256("fp16_onnx_sha256"),
    )
    spec_table = fields.table(kind)
    if kind == "detector":
        return replace(entry, detector=_detector(spec_table, f"{where}.detector"))
    return replace(entry, embedder=_embedder(spec_table, f"{where}.embedder"))


def _upstream_sources(fields: _Fields) -> tuple[str, str, str]:
    """(source_file, source_url, source_sha256): all three pin the published weights."""
    for key in ("base_model", "trained_by"):
        if key in fields:
            raise ManifestError(f'{fields.where}.{key}: only models with origin = "trained" have one')
    return fields.filename("source_file"), fields.url("source_url"), fields.sha256("source_sha256")


def _trained_sources(fields: _Fields) -> tuple[str | None, None, str | None]:
    """(source_file, None, source_sha256): the PyTorch weights it was exported from, if recorded."""
    if "source_url" in fields:
        raise ManifestError(
            f"{fields.where}.source_url: a trained model has no upstream URL; its onnx_sha256 pins it "
            '(drop source_url, or use origin = "upstream" for published weights)'
        )
    source_file = fields.optional("source_file", fields.filename)
    source_sha256 = fields.optional("source_sha256", fields.sha256)
    if (source_file is None) != (source_sha256 is None):
        raise ManifestError(f"{fields.where}.source_file: give source_file and source_sha256 together")
    return source_file, None, source_sha256


_ENTRY_KEYS = {
    "kind",
    "origin",
    "base_model",
    "trained_by",
    "version",
    "onnx_file",
    "source_file",
    "source_url",
    "source_sha256",
    "licence",
    "provenance",
    "card",
    "preprocess",
    "onnx_sha256",
    "fp16_onnx_sha256",
    "export_version",
}


def _preprocess(table: Mapping[str, Any], where: str) -> Preprocess:
    _no_unknown_keys(table, {"channel_order", "mean", "std"}, where)
    fields = _Fields(table, where)
    std = fields.floats("std", 3)
    if any(value <= 0 for value in std):
        raise ManifestError(f"{where}.std: every value must be > 0, got {list(std)}")
    return Preprocess(
        channel_order=fields.choice("channel_order", ("RGB", "BGR")),  # type: ignore[arg-type]
        mean=fields.floats("mean", 3),  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


def _detector(table: Mapping[str, Any], where: str) -> DetectorSpec:
    keys = {"min_sizes", "steps", "variances", "score_threshold", "nms_threshold", "max_side"}
    _no_unknown_keys(table, keys, where)
    fields = _Fields(table, where)
    steps = fields.ints("steps")
    min_sizes = fields.nested_ints("min_sizes")
    if len(min_sizes) != len(steps):
        raise ManifestError(f"{where}.min_sizes: one list per step ({len(steps)}), got {len(min_sizes)}")
    return DetectorSpec(
        min_sizes=min_sizes,
        steps=steps,
        variances=fields.floats("variances", 2),  # type: ignore[arg-type]
        score_threshold=fields.fraction("score_threshold"),
        nms_threshold=fields.fraction("nms_threshold"),
        max_side=fields.positive_int("max_side"),
    )


def _embedder(table: Mapping[str, Any], where: str) -> EmbedderSpec:
    _no_unknown_keys(table, {"input_size", "dim", "template", "threshold"}, where)
    fields = _Fields(table, where)
    input_size = fields.ints("input_size", 2)
    template = fields.points("template", 5)
    threshold = fields.number("threshold")
    if not -1.0 <= threshold <= 1.0:
        raise ManifestError(f"{where}.threshold: a cosine threshold lies in [-1, 1], got {threshold}")
    return EmbedderSpec(
        input_size=input_size,  # type: ignore[arg-type]
        dim=fields.positive_int("dim"),
        template=template,
        threshold=threshold,
    )


def _no_unknown_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ManifestError(f"{prefix}{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


class _Fields:
    """Typed accessors for one TOML table; every error names ``<where>.<key>``."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self._data, self.where = table, where

    def _get(self, key: str) -> Any:
        if key not in self._data:
            raise ManifestError(f"{self.where}.{key}: missing")
        return self._data[key]

    def _fail(self, key: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(f"{self.where}.{key}: expected {expected}, got {value!r}")

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def optional(self, key: str, read: Callable[[str], _T]) -> _T | None:
        return read(key) if key in self._data else None

    def optional_sha256(self, key: str) -> str | None:
        return self.optional(key, self.sha256)

    def tag(self, key: str) -> str:
        value = self.text(key)
        if not _TAG.match(value):
            raise self._fail(key, "a model tag name@version, e.g. 'mobilefacenet@1'", value)
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string", value)
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self._get(key)
        if value not in options:
            raise self._fail(key, " or ".join(repr(o) for o in options), value)
        return str(value)

    def filename(self, key: str) -> str:
        value = self.text(key)
        if "/" in value or "\\" in value or value in {".", ".."}:
            raise self._fail(key, "a plain file name (no folders)", value)
        return value

    def relative_path(self, key: str) -> str:
        value = self.text(key)
        if value.startswith(("/", "\\")) or ".." in Path(value).parts:
            raise self._fail(key, "a path relative to the manifest's folder", value)
        return value

    def url(self, key: str) -> str:
        value = self.text(key)
        if not value.startswith("https://"):
            raise self._fail(key, "an https:// URL", value)
        return value

    def sha256(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not _SHA256.match(value):
            raise self._fail(key, "64 lower-case hex digits (sha256)", value)
        return value

    def table(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._fail(key, f"a [{self.where}.{key}] table", value)
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if not _is_number(value):
            raise self._fail(key, "a finite number", value)
        return float(value)

    def fraction(self, key: str) -> float:
        value = self.number(key)
        if not 0.0 <= value <= 1.0:
            raise self._fail(key, "a number in [0, 1]", value)
        return value

    def positive_int(self, key: str) -> int:
        value = self._get(key)
        if not _is_int(value) or value <= 0:
            raise self._fail(key, "a positive integer", value)
        return int(value)

    def floats(self, key: str, length: int) -> tuple[float, ...]:
        value = self._get(key)
        if not isinstance(value, list) or len(value) != length or not all(map(_is_number, value)):
            raise self._fail(key, f"a list of {length} finite numbers", value)
        return tuple(float(v) for v in value)

    def ints(self, key: str, length: int | None = None) -> tuple[int, ...]:
        value = self._get(key)
        ok = isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value)
        if not ok or (length is not None and len(value) != length):
            count = f"{length} " if length is not None else ""
            raise self._fail(key, f"a list of {count}positive integers", value)
        return tuple(int(v) for v in value)

    def nested_ints(self, key: str) -> tuple[tuple[int, ...], ...]:
        value = self._get(key)
        ok = isinstance(value, list) and value and all(isinstance(row, list) and row for row in value)
        if not ok or not all(_is_int(v) and v > 0 for row in value for v in row):
            raise self._fail(key, "a list of non-empty lists of positive integers", value)
        return tuple(tuple(int(v) for v in row) for row in value)

    def points(self, key: str, count: int) -> tuple[tuple[float, float], ...]:
        value = self._get(key)
        ok = isinstance(value, list) and len(value) == count
        if not ok or not all(isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in value):
            raise self._fail(key, f"{count} [x, y] points", value)
        return tuple((float(p[0]), float(p[1])) for p in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- writing


def write_manifest(manifest: Manifest, path: str | os.PathLike[str], *, header: str | None = None) -> Path:
    """Write ``manifest`` as TOML that :func:`load_manifest` reads back to an equal manifest.

    The file is written to a temporary name and renamed into place, so readers never see half a file.
    ``header`` becomes a comment block at the top.
    """
    path = Path(path)
    text = dumps_manifest(manifest, header=header)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def dumps_manifest(manifest: Manifest, *, header: str | None = None) -> str:
    """The TOML text :func:`write_manifest` writes."""
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]
        lines.append("")
    for entry in manifest:
        where = f"models.{entry.name}"
        spec_name, spec = (
            ("detector", entry.detector) if entry.kind == "detector" else ("embedder", entry.embedder)
        )
        top: dict[str, Any] = {
            "kind": entry.kind,
            "version": entry.version,
            # Why only when trained: upstream is the default, and prepared copies stay as they were.
            "origin": entry.origin if entry.trained else None,
            "onnx_file": entry.onnx_file,
            "source_file": entry.source_file,
            "source_url": entry.source_url,
            "source_sha256": entry.source_sha256,
            "licence": entry.licence,
            "provenance": entry.provenance,
            "card": entry.card,
            "base_model": entry.base_model,
            "trained_by": entry.trained_by,
            "onnx_sha256": entry.onnx_sha256,
            "fp16_onnx_sha256": entry.fp16_onnx_sha256,
            "export_version": entry.export_version,
        }
        lines += _table(where, top)
        lines += _table(f"{where}.preprocess", _as_dict(entry.preprocess))
        if spec is None:
            raise ManifestError(f"{where}.{spec_name}: missing")
        lines += _table(f"{where}.{spec_name}", _as_dict(spec))
    return "\n".join(lines).rstrip("\n") + "\n"


def _as_dict(obj: Preprocess | DetectorSpec | EmbedderSpec) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[union-attr]


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    body = [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return [f"[{header}]", *body, ""]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ManifestError(f"cannot write non-finite number {value!r}")
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ManifestError(f"cannot write {type(value).__name__} values to TOML")
