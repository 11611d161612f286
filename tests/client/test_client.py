"""The Python client against a real `facebank serve` on loopback with the real models."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from service.client import AsyncClient, Client, FacebankConnectionError, FacebankError, RetryPolicy
from service.security import Scope
from tests._live import Person, group_photo, issue_test_key, lfw_people, sqlite_server, sqlite_url
from tests.reliability._server import Server, free_port

pytestmark = [pytest.mark.shared, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_server(tmp_path_factory.mktemp("client-server"), model_dir) as running:
        yield running


@pytest.fixture(autouse=True)
def empty_gallery(server: Server) -> Iterator[None]:
    """Each test starts from a server without identities, whatever the one before left."""
    with Client(server.url) as facebank:
        for identity in list(facebank.iter_identities()):
            facebank.delete_identity(identity.id)
    yield


@pytest.fixture(scope="module")
def people() -> list[Person]:
    return lfw_people(3, min_photos=3)


def test_identities_faces_and_recognition_round_trip(
    server: Server, people: list[Person], tmp_path: Path
) -> None:
    first, second, third = people
    group = group_photo([first.photos[1], second.photos[1], third.photos[1]], tmp_path / "group.jpg")
    with Client(server.url) as facebank:
        ada = facebank.create_identity(first.name, external_id="emp-1", metadata={"team": "a"})
        alan = facebank.create_identity(second.name)
        # A path, bytes and a PIL image are all images.
        by_path = facebank.enroll_face(ada.id, first.photos[0])
        facebank.enroll_face(alan.id, second.photos[0].read_bytes())
        facebank.enroll_face(alan.id, Image.open(second.photos[2]))

        answer = facebank.identify(group, k=2)
        assert answer.model == by_path.model
        names = [
            f.identity.name if f.identity else None for f in sorted(answer.faces, key=lambda f: f.bbox[0])
        ]
        assert names == [first.name, second.name, None], "the third person was never enrolled"
        assert all(len(f.matches) == 2 for f in answer.faces)

        assert facebank.verify(first.photos[2], identity_id=ada.id).match
        assert not facebank.verify(first.photos[2], image2=second.photos[2]).match
        assert len(facebank.detect(group).faces) == 3

        detail = facebank.get_identity(alan.id)
        assert detail.face_count == 2 and {f.model for f in detail.faces} == {by_path.model}
        renamed = facebank.update_identity(ada.id, name="Ada L.")
        assert (renamed.name, renamed.external_id, renamed.metadata) == ("Ada L.", "emp-1", {"team": "a"})

        facebank.delete_face(alan.id, detail.faces[0].id)
        assert facebank.get_identity(alan.id).face_count == 1
        facebank.delete_identity(ada.id)
        with pytest.raises(FacebankError) as gone:
            facebank.get_identity(ada.id)
        assert (gone.value.status, gone.value.code) == (404, "not_found")

        report = facebank.index_report()
        assert report.in_step and report.sql_faces == report.index_faces == 1  # Alan's one face left
        assert facebank.rebuild_index().in_step
        actions = [e.action for e in facebank.audit(limit=20).items]
        assert {"identity.delete", "face.delete", "face.enroll"} <= set(actions), actions
        facebank.delete_identity(alan.id)


def test_iter_identities_pages_through_every_identity(server: Server) -> None:
    with Client(server.url) as facebank:
        made = [facebank.create_identity(f"pager-{i}").id for i in range(7)]
        requests_before = facebank.stats.requests

        seen = [i.id for i in facebank.iter_identities(page_size=3)]

        assert [i for i in seen if i in made] == made, "every identity once, oldest first"
        assert facebank.stats.requests - requests_before >= 3, "more than one page was read"
        for identity_id in made:
            facebank.delete_identity(identity_id)


def test_enrolling_a_chosen_face_of_a_group_photo(
    server: Server, people: list[Person], tmp_path: Path
) -> None:
    first, second, third = people
    group = group_photo([first.photos[1], second.photos[1], third.photos[1]], tmp_path / "group.jpg")
    with Client(server.url) as facebank:
        faces = sorted(facebank.detect(group).faces, key=lambda f: f.bbox[0])
        middle = facebank.create_identity(second.name)
        enrolled = facebank.enroll_face(middle.id, group, box=faces[1].bbox)

        assert enrolled.bbox == pytest.approx(faces[1].bbox, abs=0.01)
        found = facebank.identify(second.photos[0], k=1).faces[0]
        assert found.identity is not None and found.identity.id == middle.id
        facebank.delete_identity(middle.id)


def test_errors_carry_the_api_code_and_message(server: Server, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "gray").save(blank)
    with Client(server.url) as facebank:
        person = facebank.create_identity("nobody")
        with pytest.raises(FacebankError) as no_face:
            facebank.enroll_face(person.id, blank)
        assert (no_face.value.status, no_face.value.code) == (422, "no_face")
        assert "no face" in no_face.value.message
        with pytest.raises(FacebankError) as bad_cursor:
            facebank.list_identities(cursor="not-a-cursor")
        assert bad_cursor.value.code == "invalid_cursor"
        with pytest.raises(FacebankError) as not_an_image:
            facebank.identify(b"plain text")
        assert not_an_image.value.code == "invalid_image"
        facebank.delete_identity(person.id)


def test_the_async_client_does_the_same(server: Server, people: list[Person]) -> None:
    person = people[0]

    async def scenario() -> tuple[str | None, int]:
        async with AsyncClient(server.url) as facebank:
            created = await facebank.create_identity(person.name)
            await facebank.enroll_face(created.id, person.photos[0])
            found = (await facebank.identify(person.photos[1], k=1)).faces[0]
            listed = [i.id async for i in facebank.iter_identities(page_size=1)]
            await facebank.delete_identity(created.id)
            return (found.identity.name if found.identity else None), listed.count(created.id)

    assert asyncio.run(scenario()) == (person.name, 1)


def test_the_readme_example_runs(server: Server, people: list[Person], tmp_path: Path) -> None:
    """The README's Python example, exactly as written, with its server URL pointed at the test server."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(from service\.client import Client\n.*?)```", readme, re.S)
    assert example is not None, "README has a ```python block using service.client"
    code = example.group(1)
    assert len(code.strip().splitlines()) <= 8
    first, second, _ = people
    (tmp_path / "ada.jpg").write_bytes(first.photos[0].read_bytes())
    group_photo([first.photos[1], second.photos[1]], tmp_path / "group.jpg")

    done = subprocess.run(
        [sys.executable, "-c", code.replace("http://127.0.0.1:8000", server.url)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and "Ada Lovelace" in lines[0] and "unknown" in lines[1], done.stdout


def test_a_keyed_server_refuses_without_the_key(model_dir: Path, tmp_path: Path) -> None:
    key = issue_test_key(sqlite_url(tmp_path), Scope.ENROLL, Scope.IDENTIFY)
    with sqlite_server(tmp_path, model_dir) as keyed:
        with Client(keyed.url) as anonymous, pytest.raises(FacebankError) as refused:
            anonymous.list_identities()
        assert (refused.value.status, refused.value.code) == (401, "missing_api_key")
        with Client(keyed.url, api_key="fbk_wrong") as wrong, pytest.raises(FacebankError) as refused:
            wrong.list_identities()
        assert refused.value.code == "invalid_api_key"
        with Client(keyed.url, api_key=key) as allowed:
            assert allowed.create_identity("keyed").name == "keyed"
            with pytest.raises(FacebankError) as no_scope:
                allowed.audit()
            assert (no_scope.value.status, no_scope.value.code) == (403, "insufficient_scope")


def test_an_unreachable_server_is_a_connection_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retry=RetryPolicy(attempts=3, backoff_s=0.01)) as facebank:
        with pytest.raises(FacebankConnectionError) as unreachable:
            facebank.list_identities()
        assert unreachable.value.code == "unreachable" and facebank.stats.requests == 3
        # Creating is not repeated after a connection error: its answer may have been lost after a commit.
        with pytest.raises(FacebankConnectionError):
            facebank.create_identity("x")
        assert facebank.stats.requests == 4
