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

    items = scan(manifest).items

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
