"""Embedded mode end to end: real models, LFW photos, a SQLite (or PostgreSQL) database."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from service.config import DEFAULT_EMBEDDER, Settings
from service.storage import repository as repo
from service.storage.engine import make_engine, make_session_factory
from service.storage.migrate import upgrade_to_head
from tests.conftest import LFW
from tests.ingest._helpers import identities_without_faces, identity_names, run_ingest, stored_faces

pytestmark = pytest.mark.shared


def _settings(tmp_path: Path, model_dir: Path, database_url: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=model_dir, database_url=database_url)


def _lfw(name: str, index: int = 1) -> Image.Image:
    return Image.open(LFW / name / f"{name}_{index:04d}.jpg").convert("RGB")


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def gated_gallery(tmp_path_factory: pytest.TempPathFactory, small_gallery: Path) -> Path:
    """The small LFW gallery plus one made-up photo per reject reason, and a two-person photo."""
    root = tmp_path_factory.mktemp("gated") / "gallery"
    shutil.copytree(small_gallery, root)
    face = _lfw("Aaron_Peirsol")
    _save(face.filter(ImageFilter.GaussianBlur(3)), root / "Blurry Person" / "blurred.jpg")
    tiny = Image.new("RGB", (400, 400), (128, 128, 128))
    tiny.paste(face.resize((48, 48)), (100, 100))  # a face of about 19 px
    _save(tiny, root / "Tiny Face" / "far-away.png")
    _save(Image.new("RGB", (200, 200), (120, 120, 120)), root / "Nobody" / "wall.png")
    pair = Image.new("RGB", (500, 250))
    pair.paste(_lfw("Aaron_Eckhart"), (0, 0))
    pair.paste(_lfw("Aaron_Guiel"), (250, 0))
    _save(pair, root / "Two People" / "pair.jpg")
    (root / "Broken" / "truncated.jpg").parent.mkdir()
    (root / "Broken" / "truncated.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_a_folder_is_ingested_with_every_reject_recorded_with_its_reason(
    gated_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, model_dir)
    report = tmp_path / "report.json"

    code = run_ingest([str(gated_gallery), "--report", str(report)], settings)

    document = json.loads(report.read_text())
    rejected = {
        (Path(r["path"]).parent.name, r["reason"]) for r in document["rows"] if r["status"] == "rejected"
    }
    assert code == 0, "rejects are not errors"
    assert rejected == {
        ("Abdoulaye_Wade", "blurry"),  # Abdoulaye_Wade_0003.jpg, a genuinely out-of-focus LFW photo
        ("Blurry Person", "blurry"),
        ("Tiny Face", "face_too_small"),
        ("Nobody", "no_face"),
        ("Broken", "invalid_image"),
    }
    photos = sum(1 for p in gated_gallery.rglob("*") if p.is_file())
    assert document["totals"] == {"ingested": photos - 5, "skipped": 0, "rejected": 5, "error": 0}
    assert document["meta"]["model"] == f"{DEFAULT_EMBEDDER}@1" and document["meta"]["interrupted"] is False

    faces = stored_faces(settings.resolved_database_url)
    assert sum(faces.values()) == photos - 5 and set(faces.values()) == {1}
    pair_sha = hashlib.sha256((gated_gallery / "Two People" / "pair.jpg").read_bytes()).hexdigest()
    assert ("Two People", None, pair_sha) in faces, "the largest face of a group photo is enrolled"
    names = identity_names(settings.resolved_database_url)
    assert set(names) == {p.name for p in gated_gallery.iterdir()} - {
        "Blurry Person",
        "Tiny Face",
        "Nobody",
        "Broken",
    }
    assert set(names.values()) == {1}, "one identity per folder, none for folders with no accepted photo"


def test_a_second_run_skips_every_photo_already_ingested_and_changes_nothing(
    small_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, model_dir)
    assert run_ingest([str(small_gallery)], settings) == 0
    first = stored_faces(settings.resolved_database_url)
    report = tmp_path / "again.json"

    assert run_ingest([str(small_gallery), "--report", str(report)], settings) == 0

    document = json.loads(report.read_text())
    assert document["totals"]["ingested"] == 0
    assert document["reasons"]["skipped"] == {"already_ingested": sum(first.values())}
    assert stored_faces(settings.resolved_database_url) == first


def test_a_manifest_with_a_missing_file_reports_the_error_in_csv_and_exits_1(
    small_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    photo = next(small_gallery.glob("*/*.jpg"))
    pair = tmp_path / "pair.jpg"
    pair_image = Image.new("RGB", (500, 250))
    pair_image.paste(_lfw("Aaron_Eckhart"), (0, 0))
    pair_image.paste(_lfw("Aaron_Guiel"), (250, 0))
    pair_image.save(pair)
    manifest = tmp_path / "gallery.csv"
    manifest.write_text(
        "path,identity,external_id\n"
        f"{photo},Ada Lovelace,emp-001\n"
        "missing.jpg,Alan Turing,\n"
        f"{pair},Grace Hopper\n",
        encoding="utf-8",
    )
    report = tmp_path / "report.csv"
    settings = _settings(tmp_path, model_dir)

    argv = [str(manifest), "--multi-face", "skip", "--report", str(report), "--allow-outside-paths"]
    code = run_ingest(argv, settings)  # the manifest names absolute paths

    rows = list(csv.DictReader(report.open()))
    totals = {r["reason"]: int(r["detail"]) for r in rows if r["status"] == "total"}
    problems = {(r["status"], r["reason"], r["identity"]) for r in rows if r["status"] != "total"}
    assert code == 1, "an unreadable photo is an error"
    assert totals == {"ingested": 1, "skipped": 0, "rejected": 1, "error": 1}
    assert problems == {
        ("error", "read_error", "Alan Turing"),
        ("rejected", "multiple_faces", "Grace Hopper"),
    }
    sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    assert stored_faces(settings.resolved_database_url) == {("Ada Lovelace", "emp-001", sha): 1}


def test_photos_join_the_existing_identity_by_external_id_or_the_oldest_one_of_that_name(
    small_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, model_dir)
    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    first_person, second_person = sorted(p.name for p in small_gallery.iterdir())[:2]
    with make_session_factory(engine)() as session:
        oldest = repo.create_identity(session, name=first_person).id
        session.commit()
        repo.create_identity(session, name=first_person)  # a later namesake gets nothing
        by_external_id = repo.create_identity(session, name="Renamed Since", external_id=second_person).id
        session.commit()
    gallery = tmp_path / "two"
    for name in (first_person, second_person):
        shutil.copytree(small_gallery / name, gallery / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "".join(f"{p},{p.parent.name}\n" for p in sorted((gallery / first_person).glob("*.jpg")))
        + "".join(
            f"{p},ignored name,{p.parent.name}\n" for p in sorted((gallery / second_person).glob("*.jpg"))
        ),
        encoding="utf-8",
    )

    assert run_ingest([str(manifest), "--allow-outside-paths"], settings) == 0  # absolute paths

    with make_session_factory(engine)() as session:
        counts = repo.face_counts(session, identity_ids=[oldest, by_external_id])
        identities, _ = repo.list_identities(session, limit=10)
    assert counts == {
        oldest: len(list((gallery / first_person).glob("*.jpg"))),
        by_external_id: len(list((gallery / second_person).glob("*.jpg"))),
    }
    assert len(identities) == 3, "no identity was created"
    engine.dispose()


def test_match_external_id_on_a_folder_creates_identities_keyed_by_the_folder_name(
    small_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, model_dir)

    assert run_ingest([str(small_gallery), "--match-external-id"], settings) == 0

    faces = stored_faces(settings.resolved_database_url)
    assert {(name, external_id) for name, external_id, _ in faces} == {
        (p.name, p.name) for p in small_gallery.iterdir()
    }
    assert identities_without_faces(settings.resolved_database_url) == 0


def test_unusable_input_exits_2_and_a_run_that_cannot_start_exits_1(
    small_gallery: Path, model_dir: Path, tmp_path: Path
) -> None:
    assert run_ingest([str(tmp_path / "missing")], _settings(tmp_path, model_dir)) == 2
    assert run_ingest([str(small_gallery)], _settings(tmp_path, tmp_path / "no-models")) == 1
