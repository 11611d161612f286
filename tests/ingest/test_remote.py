"""--url mode, always through a real `facebank serve`; the failures a server does not produce on demand
(answers lost after a commit, outages in the middle of a run) are made on the way to it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import Client
from service.config import Settings
from service.ingest.gates import Gates
from service.ingest.progress import StopFlag
from service.ingest.remote import RemoteError, RemoteOptions, run_remote
from service.ingest.report import Status, Tally
from service.ingest.scan import IngestItem
from service.security import Scope
from tests._live import Person, issue_test_key, lfw_people, sqlite_server, sqlite_url
from tests.ingest._helpers import identity_names, run_ingest, stored_faces
from tests.reliability._server import free_port

# --- a real server ------------------------------------------------------------------------------------


@pytest.fixture
def server(model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """`facebank serve` on a free port of 127.0.0.1, with its own SQLite database."""
    settings = Settings(data_dir=tmp_path / "server", model_dir=model_dir)
    with sqlite_server(settings.data_dir, model_dir) as running:
        yield running.url, settings


@pytest.mark.shared
@pytest.mark.slow
def test_url_mode_ingests_through_a_running_server_which_sees_the_faces_at_once(
    server: tuple[str, Settings], small_gallery: Path, tmp_path: Path
) -> None:
    url, server_settings = server
    local = Settings(data_dir=tmp_path / "client", model_dir=server_settings.model_dir)
    report = tmp_path / "report.json"

    assert run_ingest([str(small_gallery), "--url", url, "--report", str(report)], local) == 0

    # The gates run on the server's detections exactly as in embedded mode: the same LFW photo is too blurred.
    blurred = small_gallery / "Abdoulaye_Wade" / "Abdoulaye_Wade_0003.jpg"
    photos = [p for p in sorted(small_gallery.glob("*/*.jpg")) if p != blurred]
    document = json.loads(report.read_text())
    assert document["meta"]["mode"] == "url"
    assert document["totals"] == {"ingested": len(photos), "skipped": 0, "rejected": 1, "error": 0}
    assert [(Path(r["path"]), r["reason"]) for r in document["rows"]] == [(blurred, "blurry")]
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["checks"]["faces"] == len(photos) and ready["checks"]["index_in_step"]
    expected = {(p.parent.name, None, hashlib.sha256(p.read_bytes()).hexdigest()) for p in photos}
    faces = stored_faces(server_settings.resolved_database_url)
    assert set(faces) == expected and set(faces.values()) == {1}

    # The server knows them now: a gallery photo is identified as its person.
    probe = photos[0]
    answer = httpx.post(f"{url}/v1/identify", files={"image": probe.read_bytes()}).json()
    assert answer["faces"][0]["identity"]["name"] == probe.parent.name

    # Run again: the server has no image hash in its Face bodies; the detection fingerprint finds them.
    again = tmp_path / "again.json"
    assert run_ingest([str(small_gallery), "--url", url, "--report", str(again)], local) == 0
    assert json.loads(again.read_text())["reasons"]["skipped"] == {"already_ingested": len(photos)}
    assert json.loads(again.read_text())["totals"]["ingested"] == 0
    assert stored_faces(server_settings.resolved_database_url) == faces


@pytest.mark.shared
@pytest.mark.slow
def test_identities_past_the_first_page_are_found_not_duplicated(
    server: tuple[str, Settings], small_gallery: Path, tmp_path: Path
) -> None:
    url, server_settings = server
    people = sorted(p.name for p in small_gallery.iterdir())
    with Client(url) as facebank:
        for number in range(5):
            facebank.create_identity(f"someone else {number}")
        # Made last, so with pages of 2 it is on the third page.
        existing = facebank.create_identity(people[-1])
    items = [IngestItem(p, p.parent.name) for p in sorted(small_gallery.glob("*/*.jpg"))]
    tally = Tally()

    info = run_remote(
        items,
        base_url=url,
        settings=Settings(data_dir=tmp_path / "client", model_dir=server_settings.model_dir),
        options=RemoteOptions(gates=Gates(), page_size=2),
        tally=tally,
        stop=StopFlag(),
    )

    # One LFW photo of this gallery is too blurred (see the test above).
    assert tally.totals() == {"ingested": len(items) - 1, "skipped": 0, "rejected": 1, "error": 0}
    names = identity_names(server_settings.resolved_database_url)
    assert names[people[-1]] == 1, "the identity on page 3 was used, not created again"
    assert set(names) == set(people) | {f"someone else {n}" for n in range(5)}
    with Client(url) as facebank:
        assert facebank.get_identity(existing.id).face_count == len(
            list((small_gallery / people[-1]).glob("*"))
        )
    assert info.requests > len(items)


def test_url_mode_exits_1_when_the_server_cannot_be_reached(tmp_path: Path, small_gallery: Path) -> None:
    settings = Settings(data_dir=tmp_path, model_dir=tmp_path / "none")
    argv = [str(small_gallery), "--url", f"http://127.0.0.1:{free_port()}"]

    assert run_ingest(argv, settings) == 1


# --- failures on the way to a real server: lost answers, outages, a refusing server ---------------------


class FaultyLink(httpx.AsyncHTTPTransport):
    """The network between ingest and a real server, failing as scripted per route.

    Actions for a route's next calls: "busy" (a 503 busy answered on the server's behalf, nothing sent),
    "drop" (the connection fails before sending), "commit-drop" (the server gets and commits the request,
    then the answer is lost), "ok".
    """

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self.before: dict[str, Callable[[httpx.Request], Awaitable[None]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        route = f"{method} {'/v1/identities/{id}/faces' if path.endswith('/faces') else path}"
        self.calls.append(route)
        script = self.script.get(route, [])
        action = script.pop(0) if script else "ok"
        if action == "busy":
            return httpx.Response(503, json={"error": {"code": "busy", "message": "try again"}})
        if action == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        if route in self.before:
            await self.before.pop(route)(request)
        response = await super().handle_async_request(request)
        if action == "commit-drop":
            await response.aread()
            raise httpx.ReadError("connection reset after the server committed", request=request)
        return response


def _items(*people: tuple[Person, int]) -> list[IngestItem]:
    """The first `count` LFW photos of each person, as ingest items named after them."""
    return [IngestItem(photo, person.name) for person, count in people for photo in person.photos[:count]]


def _run(
    url: str, link: FaultyLink, items: list[IngestItem], model_dir: Path, tmp_path: Path, **options: Any
) -> Tally:
    options.setdefault("backoff_s", 0.001)
    tally = Tally()
    run_remote(
        items,
        base_url=url,
        settings=Settings(data_dir=tmp_path / "client", model_dir=model_dir),
        options=RemoteOptions(gates=Gates(min_blur=0), **options),
        tally=tally,
        stop=StopFlag(),
        transport=link,
    )
    return tally


@pytest.fixture(scope="module")
def two_people() -> tuple[Person, Person]:
    ada, alan = lfw_people(2, min_photos=3, skip=40)
    return ada, alan


@pytest.mark.shared
def test_busy_answers_and_connection_errors_are_retried_with_back_off(
    server: tuple[str, Settings], two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    url, settings = server
    link = FaultyLink()
    link.script = {
        "GET /v1/identities": ["busy"],
        "POST /v1/detect": ["drop", "busy", "busy"],
        "POST /v1/identities": ["busy", "drop"],
    }
    ada, alan = two_people

    tally = _run(url, link, _items((ada, 2), (alan, 1)), settings.model_dir, tmp_path, concurrency=1)

    assert tally.totals() == {"ingested": 3, "skipped": 0, "rejected": 0, "error": 0}
    assert not any(link.script.values()), "every scripted failure happened"
    assert identity_names(settings.resolved_database_url) == {ada.name: 1, alan.name: 1}
    assert sum(stored_faces(settings.resolved_database_url).values()) == 3


@pytest.mark.shared
def test_an_enroll_whose_answer_is_lost_is_not_repeated(
    server: tuple[str, Settings], two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    url, settings = server
    link = FaultyLink()
    link.script = {"POST /v1/identities/{id}/faces": ["commit-drop", "ok", "commit-drop"]}
    ada, alan = two_people

    tally = _run(url, link, _items((ada, 2), (alan, 1)), settings.model_dir, tmp_path, concurrency=1)

    assert tally.totals()["ingested"] == 3 and not any(link.script.values())
    faces = stored_faces(settings.resolved_database_url)
    assert sum(faces.values()) == 3 and set(faces.values()) == {1}, "each photo enrolled once"
    assert link.calls.count("POST /v1/identities/{id}/faces") == 3, "lost answers were found, not resent"


@pytest.mark.shared
def test_a_photo_listed_twice_and_a_second_run_are_skipped_by_the_detection_fingerprint(
    server: tuple[str, Settings], two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    url, settings = server
    ada, alan = two_people
    items = _items((ada, 3), (alan, 2))
    assert _run(url, FaultyLink(), items + items[:1], settings.model_dir, tmp_path).totals() == {
        "ingested": 5,
        "skipped": 1,
        "rejected": 0,
        "error": 0,
    }

    again = _run(url, FaultyLink(), items, settings.model_dir, tmp_path)

    assert again.totals() == {"ingested": 0, "skipped": 5, "rejected": 0, "error": 0}
    assert sum(stored_faces(settings.resolved_database_url).values()) == 5


@pytest.mark.shared
def test_an_external_id_made_by_someone_else_meanwhile_is_used_not_duplicated(
    server: tuple[str, Settings], two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    url, settings = server
    ada, _alan = two_people
    link = FaultyLink()

    async def someone_else_first(request: httpx.Request) -> None:
        async with httpx.AsyncClient() as other:
            made = await other.post(f"{url}/v1/identities", json={"name": "Ada (HR)", "external_id": "emp-1"})
            assert made.status_code == 201

    link.before["POST /v1/identities"] = someone_else_first
    items = [IngestItem(p, ada.name, "emp-1") for p in ada.photos[:1]]

    assert _run(url, link, items, settings.model_dir, tmp_path).totals()["ingested"] == 1
    assert identity_names(settings.resolved_database_url) == {"Ada (HR)": 1}, "theirs was used"


@pytest.mark.shared
def test_the_run_stops_with_an_error_when_the_server_stays_unavailable(
    server: tuple[str, Settings], two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    url, settings = server
    link = FaultyLink()
    link.script = {"POST /v1/detect": ["busy"] * 100}
    ada, alan = two_people
    items = _items((ada, 3), (alan, 3)) * 2
    tally = Tally()

    with pytest.raises(RemoteError, match="server unavailable"):
        run_remote(
            items,
            base_url=url,
            settings=Settings(data_dir=tmp_path / "client", model_dir=settings.model_dir),
            options=RemoteOptions(gates=Gates(), backoff_s=0.001, attempts=3, concurrency=2),
            tally=tally,
            stop=StopFlag(),
            transport=link,
        )
    assert tally.by_status[Status.ERROR] >= 1 and tally.processed < len(items), (
        "it stopped instead of trying all"
    )


@pytest.mark.shared
def test_the_api_key_is_sent_and_a_refusal_stops_the_run_with_a_hint(
    model_dir: Path, two_people: tuple[Person, Person], tmp_path: Path
) -> None:
    folder = tmp_path / "keyed"
    folder.mkdir()
    key = issue_test_key(sqlite_url(folder), Scope.ENROLL, Scope.IDENTIFY)
    ada, alan = two_people
    items = _items((ada, 1), (alan, 1))
    with sqlite_server(folder, model_dir) as keyed:
        with pytest.raises(RemoteError, match=r"refused.*401.*missing_api_key.*FACEBANK_API_KEY"):
            _run(keyed.url, FaultyLink(), items, model_dir, tmp_path)
        assert (
            _run(keyed.url, FaultyLink(), items, model_dir, tmp_path, api_key=key).totals()["ingested"] == 2
        )
