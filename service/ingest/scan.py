"""Find the photos to ingest: a folder with one sub-folder per identity, or a CSV manifest.

Folder: ``ROOT/<identity>/**/<image>``; the sub-folder's name is the identity's name, or its external_id with
``match_external_id``. CSV: ``path,identity[,external_id]`` with an optional header row; a relative path is
relative to the manifest's folder. Everything is read up front so that the run knows its total (for the ETA)
and a malformed manifest fails before anything is written.

Photos stay inside the gallery: a file (or identity folder) that is a symbolic link leading out of the folder
is ignored (`outside_gallery`), and a manifest row naming an absolute path, a `..` path or a link out of the
manifest's folder fails the run, unless `allow_outside` (`--allow-outside-paths`) says the operator means it.
Why: a gallery or manifest often comes from someone else, and would otherwise read any file the operator can.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# Why by suffix: decoding every file just to find the images would double the reading of a large gallery.
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Why: the identities table's name and external_id columns are String(256).
MAX_NAME_LENGTH: Final = 256

OUTSIDE_GALLERY: Final = "outside_gallery"


class ScanError(ValueError):
    """The input cannot be read as a gallery; the message says where."""


@dataclass(frozen=True, slots=True)
class IngestItem:
    """One photo and the identity it belongs to."""

    path: Path
    name: str
    external_id: str | None = None

    @property
    def identity_key(self) -> tuple[str, str]:
        """How the identity is found: by external_id when there is one, else by exact name."""
        if self.external_id is not None:
            return ("external_id", self.external_id)
        return ("name", self.name)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A file found while scanning that is not ingested, and why."""

    path: Path
    reason: str


@dataclass(slots=True)
class ScanResult:
    items: list[IngestItem] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def scan(path: Path, *, match_external_id: bool = False, allow_outside: bool = False) -> ScanResult:
    """The items under a gallery folder or listed in a CSV manifest."""
    if path.is_dir():
        return scan_folder(path, match_external_id=match_external_id, allow_outside=allow_outside)
    if path.is_file() and path.suffix.lower() == ".csv":
        if match_external_id:
            raise ScanError(
                "--match-external-id applies to folders; a manifest has its own external_id column"
            )
        return scan_manifest(path, allow_outside=allow_outside)
    if path.exists():
        raise ScanError(f"{path} is neither a folder nor a .csv manifest")
    raise ScanError(f"{path} does not exist")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symbolic link followed, is `root` or lies under it (`root` resolved)."""
    return path.resolve().is_relative_to(root)


def scan_folder(root: Path, *, match_external_id: bool = False, allow_outside: bool = False) -> ScanResult:
    result = ScanResult()
    real_root = root.resolve()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            result.ignored.append(Ignored(entry, "outside_identity_folder"))
            continue
        if not allow_outside and not _inside(entry, real_root):
            result.ignored.append(Ignored(entry, OUTSIDE_GALLERY))
            continue
        label = _identity_text(entry.name, where=str(entry))
        for file in sorted(p for p in entry.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(entry).parts):
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                result.ignored.append(Ignored(file, "not_an_image"))
                continue
            if not allow_outside and not _inside(file, real_root):
                result.ignored.append(Ignored(file, OUTSIDE_GALLERY))
                continue
            result.items.append(IngestItem(file, label, label if match_external_id else None))
    return result


def scan_manifest(manifest: Path, *, allow_outside: bool = False) -> ScanResult:
    base = manifest.parent
    real_base = base.resolve()
    result = ScanResult()
    try:
        # Why utf-8-sig: spreadsheets often save CSV with a byte-order mark.
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScanError(f"{manifest}: cannot read the manifest: {exc}") from exc
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["path", "identity"]:
            continue
        where = f"{manifest}:{number}"
        if len(cells) not in (2, 3):
            raise ScanError(f"{where}: expected path,identity[,external_id], got {len(cells)} columns")
        if not cells[0]:
            raise ScanError(f"{where}: the path is empty")
        name = _identity_text(cells[1], where=where)
        external_id = _identity_text(cells[2], where=where) if len(cells) == 3 and cells[2] else None
        path = Path(cells[0]).expanduser()
        if not allow_outside:
            if path.is_absolute() or ".." in path.parts:
                raise ScanError(
                    f"{where}: {cells[0]!r} is absolute or climbs out with '..'; paths are relative to the "
                    "manifest's folder (--allow-outside-paths to accept it)"
                )
            if not _inside(base / path, real_base):
                raise ScanError(
                    f"{where}: {cells[0]!r} is a link out of the manifest's folder "
                    "(--allow-outside-paths to accept it)"
                )
        result.items.append(IngestItem(path if path.is_absolute() else base / path, name, external_id))
    return result


def _identity_text(value: str, *, where: str) -> str:
    value = value.strip()
    if not value:
        raise ScanError(f"{where}: the identity is empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ScanError(f"{where}: identity {value[:40]!r}… is longer than {MAX_NAME_LENGTH} characters")
    return value
