from __future__ import annotations

from pathlib import Path

import pytest

from service.ingest.scan import IngestItem, ScanError, scan


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_gives_one_item_per_image_named_by_its_sub_folder(tmp_path: Path) -> None:
    _touch(tmp_path / "Ada Lovelace" / "1.jpg")
    _touch(tmp_path / "Ada Lovelace" / "more" / "2.PNG")
    _touch(tmp_path / "Alan Turing" / "a.jpeg")

    result = scan(tmp_path)

    assert result.items == [
        IngestItem(tmp_path / "Ada Lovelace" / "1.jpg", "Ada Lovelace"),
        IngestItem(tmp_path / "Ada Lovelace" / "more" / "2.PNG", "Ada Lovelace"),
        IngestItem(tmp_path / "Alan Turing" / "a.jpeg", "Alan Turing"),
    ]
    assert result.ignored == []


def test_with_match_external_id_the_folder_name_is_the_external_id(tmp_path: Path) -> None:
    _touch(tmp_path / "emp-001" / "1.jpg")

    (item,) = scan(tmp_path, match_external_id=True).items

    assert item.external_id == "emp-001" and item.identity_key == ("external_id", "emp-001")


def test_files_outside_identity_folders_and_non_images_are_ignored_with_a_reason(tmp_path: Path) -> None:
    _touch(tmp_path / "stray.jpg")
    _touch(tmp_path / "Ada" / "notes.txt")
    _touch(tmp_path / "Ada" / ".hidden.jpg")
    _touch(tmp_path / ".cache" / "x.jpg")
    _touch(tmp_path / "Ada" / "1.jpg")

    result = scan(tmp_path)

    assert [item.path.name for item in result.items] == ["1.jpg"]
    assert {(i.path.name, i.reason) for i in result.ignored} == {
        ("stray.jpg", "outside_identity_folder"),
        ("notes.txt", "not_an_image"),
    }


def test_a_manifest_reads_paths_relative_to_itself_with_an_optional_header_and_external_id(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "lists" / "gallery.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,identity,external_id\n"
        "photos/a.jpg, Ada Lovelace ,emp-001\n"
        "\n"
        "# a comment\n"
        "/abs/b.jpg,Alan Turing\n"
        "c.jpg,Grace Hopper,\n",
        encoding="utf-8",
    )

    items = scan(manifest, allow_outside=True).items  # the absolute path needs it

    assert items == [
        IngestItem(tmp_path / "lists" / "photos" / "a.jpg", "Ada Lovelace", "emp-001"),
        IngestItem(Path("/abs/b.jpg"), "Alan Turing"),
        IngestItem(tmp_path / "lists" / "c.jpg", "Grace Hopper"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.jpg\n", "expected path,identity"),
        ("a.jpg,Ada,e1,extra\n", "4 columns"),
        (",Ada\n", "path is empty"),
        ("a.jpg,  \n", "identity is empty"),
        ("a.jpg," + "x" * 257 + "\n", "longer than 256"),
    ],
)
def test_a_bad_manifest_row_fails_before_anything_is_ingested_naming_its_line(
    tmp_path: Path, line: str, message: str
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("ok.jpg,Ada\n" + line, encoding="utf-8")

    with pytest.raises(ScanError, match=rf"m\.csv:2: .*{message}"):
        scan(manifest)


def test_scan_refuses_a_missing_path_a_plain_file_and_external_id_matching_on_a_manifest(
    tmp_path: Path,
) -> None:
    with pytest.raises(ScanError, match="does not exist"):
        scan(tmp_path / "nope")
    with pytest.raises(ScanError, match="neither a folder nor"):
        scan(_touch(tmp_path / "photo.jpg"))
    with pytest.raises(ScanError, match="applies to folders"):
        scan(_touch(tmp_path / "m.csv", b"a.jpg,Ada\n"), match_external_id=True)


@pytest.mark.parametrize(
    "row",
    [
        "/etc/passwd.jpg,Eve",
        "../secret.jpg,Eve",
        "photos/../../secret.jpg,Eve",
        "~/x.jpg,Eve",
        "link.jpg,Eve",
    ],
    ids=["absolute", "dot-dot", "nested-dot-dot", "home", "symlink-out"],
)
def test_a_manifest_row_leading_outside_its_folder_is_refused_unless_allowed(
    tmp_path: Path, row: str
) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    _touch(tmp_path / "secret.jpg")
    (folder / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    manifest = _touch(folder / "m.csv", f"ok.jpg,Ada\n{row}\n".encode())
    with pytest.raises(ScanError, match=r"m\.csv:2: .*--allow-outside-paths"):
        scan(manifest)
    assert len(scan(manifest, allow_outside=True).items) == 2


def test_links_out_of_a_gallery_folder_are_ignored_unless_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    (outside / "someone").mkdir(parents=True)
    _touch(outside / "id-card.jpg")
    _touch(outside / "someone" / "x.jpg")
    gallery = tmp_path / "gallery"
    (gallery / "Ada").mkdir(parents=True)
    _touch(gallery / "Ada" / "a.jpg")
    (gallery / "Ada" / "b.jpg").symlink_to(gallery / "Ada" / "a.jpg")  # a link that stays inside is fine
    (gallery / "Ada" / "card.jpg").symlink_to(outside / "id-card.jpg")
    (gallery / "Eve").symlink_to(outside / "someone", target_is_directory=True)

    result = scan(gallery)
    assert [item.path.name for item in result.items] == ["a.jpg", "b.jpg"]
    assert {(i.path.name, i.reason) for i in result.ignored} == {
        ("card.jpg", "outside_gallery"),
        ("Eve", "outside_gallery"),
    }
    allowed = scan(gallery, allow_outside=True)
    assert sorted(item.path.name for item in allowed.items) == ["a.jpg", "b.jpg", "card.jpg", "x.jpg"]
