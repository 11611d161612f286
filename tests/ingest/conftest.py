"""Ingest fixtures: models prepared once from ../shared, and small LFW galleries copied into tmp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import LFW, require_shared


def copy_lfw_gallery(target: Path, *, identities: int, singles: int = 0, per_identity: int = 4) -> Path:
    """`identities` LFW people with 2..per_identity photos each, plus `singles` people with one."""
    require_shared()
    several: list[Path] = []
    one: list[Path] = []
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        count = sum(1 for _ in person.glob("*.jpg"))
        if count >= 2 and len(several) < identities:
            several.append(person)
        elif count == 1 and len(one) < singles:
            one.append(person)
        if len(several) == identities and len(one) == singles:
            break
    for person in several + one:
        (target / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:per_identity]:
            shutil.copyfile(photo, target / person.name / photo.name)
    return target


@pytest.fixture(scope="session")
def small_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five people, 2-3 photos each, plus two with one photo (about 15 photos)."""
    return copy_lfw_gallery(tmp_path_factory.mktemp("gallery"), identities=5, singles=2, per_identity=3)
