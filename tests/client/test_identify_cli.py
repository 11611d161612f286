"""`facebank identify PHOTO --url`: a table of who is in a photo, from a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import Client
from service.security import Scope
from tests._live import Person, group_photo, issue_test_key, lfw_people, sqlite_server, sqlite_url
from tests.reliability._server import Server, free_port

pytestmark = [pytest.mark.shared, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def people() -> list[Person]:
    return lfw_people(3, skip=20)


@pytest.fixture(scope="module")
def keyed_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, people: list[Person]
) -> Iterator[tuple[Server, str]]:
    """A server whose database holds a key, with the first two people enrolled."""
    folder = tmp_path_factory.mktemp("identify-cli")
    key = issue_test_key(sqlite_url(folder), Scope.ENROLL, Scope.IDENTIFY)
    with sqlite_server(folder, model_dir) as server, Client(server.url, api_key=key) as facebank:
        for person in people[:2]:
            facebank.enroll_face(facebank.create_identity(person.name).id, person.photos[0])
        yield server, key


def _identify(*argv: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("FACEBANK_API_KEY", None)
    if key:
        env["FACEBANK_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "identify", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prints_who_is_in_a_group_photo_left_to_right(
    keyed_server: tuple[Server, str], people: list[Person], tmp_path: Path
) -> None:
    server, key = keyed_server
    photo = group_photo([p.photos[1] for p in people], tmp_path / "group.jpg")

    done = _identify(str(photo), "--url", server.url, key=key)

    assert done.returncode == 0, done.stderr + done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3, done.stdout  # one per face (the header row is drawn with ┃)
    who = [row.split("│")[3].strip() for row in rows]
    assert who == [people[0].name, people[1].name, "unknown"], done.stdout
    assert "3 face(s)" in done.stdout and "threshold" in done.stdout
    assert "httpx" not in done.stderr, done.stderr  # the library's line per request only with -v


def test_without_the_key_it_says_why_and_exits_1(
    keyed_server: tuple[Server, str], people: list[Person]
) -> None:
    server, _key = keyed_server
    done = _identify(str(people[0].photos[1]), "--url", server.url)
    assert done.returncode == 1
    assert "missing_api_key" in done.stderr and "FACEBANK_API_KEY" in done.stderr, done.stderr


def test_an_unreachable_server_and_an_unreadable_photo(people: list[Person], tmp_path: Path) -> None:
    done = _identify(str(people[0].photos[1]), "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "unreachable" in done.stderr, done.stderr
    missing = _identify(str(tmp_path / "nothing.jpg"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
