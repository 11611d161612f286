"""``facebank models prepare``: verify the upstream weights, export them to ONNX, write the prepared manifest.

For each model of the project manifest (:data:`service.runtime.manifest.PROJECT_MANIFEST`):

1. find its ``source_file`` in ``source_dir``, else in ``model_dir/sources/``, else (with ``download=True``)
   fetch ``source_url`` into ``model_dir/sources/``;
2. check the file's sha256 against ``source_sha256`` (:class:`ModelSourceError` on a mismatch or a missing
   file, saying how to fix it);
3. export it to ``model_dir/<onnx_file>`` unless the prepared manifest already records an ONNX file made from
   the same source sha256 by the same export code version (:data:`models.export.EXPORT_VERSION`) and the
   file on disk still has the recorded hash;
4. for an embedder, write its half-precision export ``<stem>.fp16.onnx`` next to it
   (:func:`models.export.fp16.export_fp16`, checked against the fp32 graph), again unless the recorded
   ``fp16_onnx_sha256`` still matches the file and the fp32 file was not exported again;
5. write ``model_dir/manifest.toml``: the project entries plus ``onnx_sha256``, ``fp16_onnx_sha256`` and
   ``export_version``, and copy the model cards next to it.

Trained models (``origin = "trained"``) have no upstream weights: their ONNX file is the artefact. One in the
project manifest is taken from ``model_dir`` or ``source_dir`` when a file there matches its ``onnx_sha256``.
One that ``facebank train --register`` added to ``model_dir/manifest.toml`` is kept in the rewritten manifest
while its ONNX file is present and matches its sha256 (and dropped, with a message, when it is not).
Trained models get no fp16 export here: ``python -m models.export.fp16 --embedder NAME`` writes one.

torch is imported only when something has to be exported.

Usage::

    from models.export.prepare import prepare_models

    prepare_models(model_dir=Path.home() / ".cache/facebank/models", source_dir=Path("../shared/models"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from models.export import EXPORT_VERSION
from models.licences import non_commercial
from service.runtime.manifest import (
    PROJECT_MANIFEST,
    Manifest,
    ManifestError,
    ModelEntry,
    load_manifest,
    sha256_file,
    write_manifest,
)

SOURCES_DIR = "sources"
FIX_HINT = (
    "re-download with `facebank models prepare --download` "
    "or point `--from` at a folder holding the upstream file"
)
TRAIN_EXTRA_HINT = "exporting needs the train extra: pip install 'facebank[train]'"
_HEADER = (
    "Prepared by `facebank models prepare` from the project's service/runtime/manifest.toml; do not edit.\n"
    "onnx_sha256 is checked before each ONNX file is loaded; export_version says which export code made it."
)

_REGISTERED_HEADER = (
    "\nAlso kept: trained models registered by `facebank train --register` whose ONNX file matches."
)

Progress = Callable[[str], None]


class PrepareError(RuntimeError):
    """Base class of everything :func:`prepare_models` raises on purpose."""


class ModelSourceError(PrepareError):
    """An upstream weight file is missing, cannot be downloaded, or does not match its pinned sha256."""


class ExportUnavailableError(PrepareError):
    """Exporting needs torch and onnx (the ``train`` extra), which are not installed."""


class ExportFailedError(PrepareError):
    """An export was written but failed its check (the fp16 graph's embeddings differ from the fp32 one's)."""


def prepare_models(
    *,
    model_dir: Path,
    source_dir: Path | None = None,
    download: bool = False,
    names: list[str] | None = None,
    progress: Progress = print,
    manifest_path: Path = PROJECT_MANIFEST,
) -> Path:
    """Prepare the models of ``manifest_path`` in ``model_dir``; returns the prepared manifest's path.

    ``names`` limits the work to some models; entries prepared earlier for the others are kept if still
    current. Raises :class:`ModelSourceError` or :class:`ExportUnavailableError` (both :class:`PrepareError`).
    """
    project = load_manifest(manifest_path)
    wanted = project.names() if names is None else list(names)
    unknown = [name for name in wanted if name not in project]
    if unknown:
        raise ManifestError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(project.names())}")
    model_dir = Path(model_dir).expanduser()
    model_dir.mkdir(parents=True, exist_ok=True)
    prepared_path = model_dir / "manifest.toml"
    previous = _previous_entries(prepared_path, progress)

    entries: list[ModelEntry] = []
    for entry in project:
        if entry.trained:
            trained = _trained_from_project(entry, model_dir, source_dir, wanted=entry.name in wanted)
            if trained is not None:
                progress(f"{entry.tag}: {entry.onnx_file} matches its onnx_sha256 (trained model)")
                entries.append(trained)
            continue
        old = previous.get(entry.name)
        current = _current_onnx_sha256(old, entry, model_dir)
        # The fp16 file is derived from the fp32 one: current only while that one is.
        current_fp16 = _current_fp16_sha256(old, entry, model_dir) if current is not None else None
        if entry.name not in wanted:
            if current is not None:  # prepared earlier and still valid: keep it in the prepared manifest
                entries.append(
                    entry.prepared(
                        onnx_sha256=current, export_version=EXPORT_VERSION, fp16_onnx_sha256=current_fp16
                    )
                )
            continue
        source = locate_source(
            entry, model_dir=model_dir, source_dir=source_dir, download=download, progress=progress
        )
        if non_commercial(entry.licence):
            progress(f"{entry.tag}: NON-COMMERCIAL weights, {entry.licence}; see its model card {entry.card}")
        onnx_path = model_dir / entry.onnx_file
        embedder = entry.kind == "embedder"
        if current is not None and (current_fp16 is not None or not embedder):
            pinned = (entry.source_sha256 or "")[:12]
            files = f"{onnx_path.name} and its fp16 export are" if embedder else f"{onnx_path.name} is"
            progress(f"{entry.tag}: {files} up to date (source sha256 {pinned})")
            entries.append(
                entry.prepared(
                    onnx_sha256=current, export_version=EXPORT_VERSION, fp16_onnx_sha256=current_fp16
                )
            )
            continue
        if current is None:
            started = time.perf_counter()
            report = _export(entry, source, onnx_path)
            seconds = time.perf_counter() - started
            progress(f"{entry.tag}: exported {onnx_path.name} in {seconds:.1f}s; {report}")
            current = sha256_file(onnx_path)
        if embedder:
            current_fp16 = _export_fp16(entry, onnx_path, progress)
        entries.append(
            entry.prepared(onnx_sha256=current, export_version=EXPORT_VERSION, fp16_onnx_sha256=current_fp16)
        )

    registered = _registered_trained(previous, project, model_dir, progress)
    _copy_cards(entries, source_root=project.root, model_dir=model_dir)
    header = _HEADER + (_REGISTERED_HEADER if registered else "")
    write_manifest(Manifest(models=(*entries, *registered)), prepared_path, header=header)
    progress(f"wrote {prepared_path}")
    return prepared_path


def _trained_from_project(
    entry: ModelEntry, model_dir: Path, source_dir: Path | None, *, wanted: bool
) -> ModelEntry | None:
    """A trained project entry whose ONNX file is in ``model_dir`` (or copied from ``source_dir``) and matches
    its ``onnx_sha256``; None when it is not asked for and not there; :class:`ModelSourceError` when asked."""
    target = model_dir / entry.onnx_file
    if target.is_file() and sha256_file(target) == entry.onnx_sha256:
        return entry
    candidate = Path(source_dir) / entry.onnx_file if source_dir is not None else None
    if candidate is not None and candidate.is_file():
        if sha256_file(candidate) != entry.onnx_sha256:
            raise ModelSourceError(
                f"{entry.name}: {candidate} does not match its onnx_sha256 ({entry.onnx_sha256}); "
                f"rebuild it with `facebank train ... --register` (see models/trained/README.md)"
            )
        shutil.copyfile(candidate, target)
        return entry
    if not wanted:
        return None
    raise ModelSourceError(
        f"{entry.name}: trained model, so there is nothing to download; put {entry.onnx_file} "
        f"(sha256 {entry.onnx_sha256}) in the --from folder or the model folder, or rebuild it with "
        "`facebank train ... --register` (see models/trained/README.md)"
    )


def _registered_trained(
    previous: dict[str, ModelEntry], project: Manifest, model_dir: Path, progress: Progress
) -> list[ModelEntry]:
    """Trained entries registered in the prepared manifest (not in the project's) whose ONNX still matches."""
    kept: list[ModelEntry] = []
    for entry in previous.values():
        if not entry.trained or entry.name in project:
            continue
        onnx_path = model_dir / entry.onnx_file
        if onnx_path.is_file() and sha256_file(onnx_path) == entry.onnx_sha256:
            progress(f"{entry.tag}: kept, a trained model registered here ({onnx_path.name} matches)")
            kept.append(entry)
        else:
            state = "does not match its sha256" if onnx_path.is_file() else "is missing"
            progress(
                f"{entry.tag}: dropped from the prepared manifest: {onnx_path.name} {state}; "
                "register it again with `facebank train ... --register`"
            )
    return kept


def locate_source(
    entry: ModelEntry,
    *,
    model_dir: Path,
    source_dir: Path | None = None,
    download: bool = False,
    progress: Progress = print,
) -> Path:
    """The verified upstream weight file of ``entry``: from ``source_dir``, the download cache, or the web."""
    if entry.source_file is None:
        raise ModelSourceError(f"{entry.name}: no source_file in the manifest (a trained model?)")
    candidates = [Path(source_dir) / entry.source_file] if source_dir is not None else []
    candidates.append(model_dir / SOURCES_DIR / entry.source_file)
    for candidate in candidates:
        if candidate.is_file():
            verify_source(candidate, entry)
            return candidate
    if download:
        return download_source(entry, model_dir / SOURCES_DIR, progress=progress)
    looked = " or ".join(str(c) for c in candidates)
    raise ModelSourceError(f"{entry.name}: {entry.source_file} not found (looked in {looked}); {FIX_HINT}")


def verify_source(path: Path, entry: ModelEntry) -> None:
    """Raise :class:`ModelSourceError` unless ``path`` hashes to ``entry.source_sha256``."""
    actual = sha256_file(path)
    if actual != entry.source_sha256:
        raise ModelSourceError(
            f"{entry.name}: {path} does not match the pinned sha256 "
            f"(expected {entry.source_sha256}, got {actual}); {FIX_HINT}"
        )


def download_source(entry: ModelEntry, directory: Path, *, progress: Progress = print) -> Path:
    """Stream ``entry.source_url`` to a temporary file, verify its sha256, then move it into ``directory``."""
    import httpx

    if entry.source_file is None or entry.source_url is None:
        raise ModelSourceError(f"{entry.name}: no source_url to download (a trained model?)")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / entry.source_file
    progress(f"{entry.name}: downloading {entry.source_url}")
    handle, tmp_name = tempfile.mkstemp(prefix=f".{entry.source_file}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(handle, "wb") as out,
            httpx.stream("GET", entry.source_url, follow_redirects=True, timeout=60.0) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
        verify_source(tmp, entry)
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise ModelSourceError(
            f"{entry.name}: cannot download {entry.source_url}: {exc}; {FIX_HINT}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _previous_entries(path: Path, progress: Progress) -> dict[str, ModelEntry]:
    if not path.is_file():
        return {}
    try:
        return {entry.name: entry for entry in load_manifest(path)}
    except ManifestError as exc:
        progress(f"ignoring the unreadable prepared manifest ({exc}); exporting again")
        return {}


def _current_onnx_sha256(old: ModelEntry | None, new: ModelEntry, model_dir: Path) -> str | None:
    """The recorded ONNX hash if ``old``'s file was made from ``new``'s source by this export code and is
    intact on disk; None if it has to be exported (again)."""
    if old is None or old.onnx_sha256 is None:
        return None
    onnx_path = model_dir / new.onnx_file
    same_origin = (
        old.export_version == EXPORT_VERSION
        and old.source_sha256 == new.source_sha256
        and old.onnx_file == new.onnx_file
        and old.kind == new.kind
    )
    if same_origin and onnx_path.is_file() and sha256_file(onnx_path) == old.onnx_sha256:
        return old.onnx_sha256
    return None


def _current_fp16_sha256(old: ModelEntry | None, new: ModelEntry, model_dir: Path) -> str | None:
    """The recorded fp16 hash if ``old`` has one and the fp16 file on disk still matches it, else None.
    Call only when ``old``'s fp32 file is current (the fp16 file was made from it)."""
    if old is None or old.fp16_onnx_sha256 is None or new.kind != "embedder":
        return None
    from service.runtime.sessions import fp16_onnx_file  # the service's naming rule; imports onnxruntime

    fp16_path = model_dir / fp16_onnx_file(new.onnx_file)
    if fp16_path.is_file() and sha256_file(fp16_path) == old.fp16_onnx_sha256:
        return old.fp16_onnx_sha256
    return None


def _export_fp16(entry: ModelEntry, onnx_path: Path, progress: Progress) -> str:
    """Write the embedder's fp16 export next to ``onnx_path`` and return its sha256.

    The parity check runs on :func:`~models.export.fp16.export_fp16`'s default inputs (smooth noise): prepare
    has no aligned faces at hand, and detecting and aligning some would cost more than the whole export.
    Noise proves the graph converts, runs and does not overflow; docs/accuracy.md has the check on all LFW
    faces, and ``python -m models.export.fp16 --faces-from LFW`` repeats it.
    """
    try:
        from models.export import fp16
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"onnx", "onnxruntime", "packaging"}:
            raise ExportUnavailableError(f"{TRAIN_EXTRA_HINT} (missing module {exc.name!r})") from exc
        raise
    fp16_path = onnx_path.with_name(fp16.fp16_onnx_file(onnx_path.name))
    started = time.perf_counter()
    try:
        report = fp16.export_fp16(onnx_path, fp16_path)
    except fp16.Fp16ParityError as exc:
        raise ExportFailedError(f"{entry.tag}: {exc}") from exc
    seconds = time.perf_counter() - started
    progress(
        f"{entry.tag}: exported {fp16_path.name} in {seconds:.1f}s, checked on smooth noise "
        f"(no aligned faces at hand; `python -m models.export.fp16 --faces-from LFW` checks real ones); "
        f"{report.summary()}"
    )
    return sha256_file(fp16_path)


def _export(entry: ModelEntry, source: Path, onnx_path: Path) -> str:
    try:
        from models.export import onnx_export
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "onnx", "onnxruntime"}:
            raise ExportUnavailableError(f"{TRAIN_EXTRA_HINT} (missing module {exc.name!r})") from exc
        raise
    from models.export import edgeface

    variant = edgeface.EDGEFACE_MODELS.get(entry.name)
    try:
        if entry.kind == "detector":
            return onnx_export.export_detector(source, onnx_path).summary()
        if variant is None:
            return onnx_export.export_embedder(source, onnx_path).summary()
        return edgeface.export_edgeface(source, onnx_path, variant=variant).summary()
    except onnx_export.WeightFileError as exc:  # the file matched its pin but holds the wrong thing
        raise ModelSourceError(f"{entry.name}: {exc}") from exc


def _copy_cards(entries: list[ModelEntry], *, source_root: Path | None, model_dir: Path) -> None:
    if source_root is None:
        return
    for entry in entries:
        card = source_root / entry.card
        if card.is_file() and card.resolve() != (model_dir / entry.card).resolve():
            (model_dir / entry.card).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(card, model_dir / entry.card)
