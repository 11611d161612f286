"""LFW on disk: the official ``pairs.txt``, the identification split, and ``--limit`` subsets.

Layout: ``lfw/<Name>/<Name>_<NNNN>.jpg``; ``pairs.txt`` starts with ``<folds> <pairs per kind>``, then per
fold that many matched lines ``name n1 n2`` followed by as many mismatched lines ``name1 n1 name2 n2``.

Usage::

    pairs = read_pairs(Path("../shared/data/lfw-pairs.txt"))
    split = identification_split(list_images(Path("../shared/data/lfw")))
    len(split.gallery), len(split.probes)   # 5749, 7484
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

_NUMBERED = re.compile(r"^(?P<name>.+)_(?P<number>\d{4})$")


class PairsFormatError(ValueError):
    """pairs.txt does not follow the official layout; the message names the line."""


@dataclass(frozen=True, slots=True, order=True)
class LfwImage:
    """Image ``number`` (1-based) of person ``name``."""

    name: str
    number: int

    def path(self, root: Path) -> Path:
        return root / self.name / f"{self.name}_{self.number:04d}.jpg"


@dataclass(frozen=True, slots=True)
class Pair:
    fold: int
    left: LfwImage
    right: LfwImage
    same: bool


@dataclass(frozen=True, slots=True)
class IdentificationSplit:
    """Gallery: the lowest-numbered image of each person; probes: every other image."""

    gallery: tuple[LfwImage, ...]
    probes: tuple[LfwImage, ...]


def parse_pairs(text: str) -> list[Pair]:
    """Parse the text of an official ``pairs.txt``; :class:`PairsFormatError` on any deviation.

    Example:
        >>> pairs = parse_pairs("2 1\\nA 1 2\\nA 1 B 1\\nC 1 3\\nC 2 D 4\\n")
        >>> [(p.fold, p.same) for p in pairs]
        [(0, True), (0, False), (1, True), (1, False)]
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) != 2 or not all(part.isdigit() for part in lines[0]):
        raise PairsFormatError("line 1: expected '<folds> <pairs per kind>'")
    folds, per_kind = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != folds * per_kind * 2:
        raise PairsFormatError(
            f"expected {folds}×{per_kind}×2 = {folds * per_kind * 2} pairs, got {len(body)}"
        )
    pairs = []
    for index, parts in enumerate(body):
        fold, within = divmod(index, 2 * per_kind)
        same = within < per_kind
        where = f"line {index + 2}"
        try:
            if same:
                if len(parts) != 3:
                    raise PairsFormatError(
                        f"{where}: a matched pair is 'name n1 n2', got {' '.join(parts)!r}"
                    )
                left, right = LfwImage(parts[0], int(parts[1])), LfwImage(parts[0], int(parts[2]))
            else:
                if len(parts) != 4:
                    raise PairsFormatError(
                        f"{where}: a mismatched pair is 'name1 n1 name2 n2', got {' '.join(parts)!r}"
                    )
                left, right = LfwImage(parts[0], int(parts[1])), LfwImage(parts[2], int(parts[3]))
        except ValueError as exc:
            if isinstance(exc, PairsFormatError):
                raise
            raise PairsFormatError(
                f"{where}: image numbers must be integers, got {' '.join(parts)!r}"
            ) from exc
        pairs.append(Pair(fold=fold, left=left, right=right, same=same))
    return pairs


def read_pairs(path: Path) -> list[Pair]:
    return parse_pairs(path.read_text(encoding="utf-8"))


def list_images(root: Path) -> list[LfwImage]:
    """Every ``<Name>/<Name>_<NNNN>.jpg`` under ``root``, sorted by name then number."""
    images = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in person.glob("*.jpg"):
            match = _NUMBERED.match(file.stem)
            if match and match["name"] == person.name:
                images.append(LfwImage(person.name, int(match["number"])))
    if not images:
        raise FileNotFoundError(f"no LFW images under {root}")
    return sorted(images)


def identification_split(images: Sequence[LfwImage]) -> IdentificationSplit:
    """Gallery = the lowest-numbered image of each person, probes = the rest (both sorted).

    Example:
        >>> split = identification_split([LfwImage("A", 2), LfwImage("A", 1), LfwImage("B", 3)])
        >>> [(i.name, i.number) for i in split.gallery], [(i.name, i.number) for i in split.probes]
        ([('A', 1), ('B', 3)], [('A', 2)])
    """
    first: dict[str, LfwImage] = {}
    for image in sorted(images):
        first.setdefault(image.name, image)
    gallery = set(first.values())
    return IdentificationSplit(
        gallery=tuple(sorted(gallery)), probes=tuple(sorted(i for i in images if i not in gallery))
    )


def limit_pairs(pairs: Sequence[Pair], limit: int) -> list[Pair]:
    """About ``limit`` pairs spread over every fold, half matched and half mismatched (at least one each).

    Example:
        >>> text = "2 2\\nA 1 2\\nA 1 3\\nA 1 B 1\\nA 2 B 1\\nC 1 3\\nC 1 2\\nC 2 D 4\\nC 1 D 4\\n"
        >>> pairs = parse_pairs(text)
        >>> [(p.fold, p.same, p.right.number) for p in limit_pairs(pairs, 4)]
        [(0, True, 2), (0, False, 1), (1, True, 3), (1, False, 4)]
    """
    folds = sorted({p.fold for p in pairs})
    per_kind = max(1, limit // (2 * len(folds)))
    kept = []
    for fold in folds:
        for same in (True, False):
            kept += [p for p in pairs if p.fold == fold and p.same is same][:per_kind]
    return kept


def limit_split(split: IdentificationSplit, people: Sequence[str], limit: int) -> IdentificationSplit:
    """The split restricted to ``people``, with at most ``limit`` probes taken round-robin over them."""
    wanted = set(people)
    gallery = tuple(i for i in split.gallery if i.name in wanted)
    by_person: dict[str, list[LfwImage]] = {}
    for probe in split.probes:
        if probe.name in wanted:
            by_person.setdefault(probe.name, []).append(probe)
    interleaved = [p for row in zip_longest(*by_person.values()) for p in row if p is not None]
    return IdentificationSplit(gallery=gallery, probes=tuple(sorted(interleaved[:limit])))


__all__ = [
    "IdentificationSplit",
    "LfwImage",
    "Pair",
    "PairsFormatError",
    "identification_split",
    "limit_pairs",
    "limit_split",
    "list_images",
    "parse_pairs",
    "read_pairs",
]
