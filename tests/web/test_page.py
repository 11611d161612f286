"""The page at `/`, used in a real browser the way a person uses it, against a real `facebank serve`.

Each step saves a screenshot under the test's tmp folder (…/screenshots/NN-step.png).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.client import Client
from service.config import DEFAULT_EMBEDDER
from service.runtime.manifest import load_manifest
from service.security import Scope
from tests._live import Person, group_photo, issue_test_key, lfw_people, sqlite_server, sqlite_url
from tests.reliability._server import Server
from tests.web.conftest import require_browser

pytestmark = [pytest.mark.shared, pytest.mark.slow]

WAIT_S = 60.0
ENTER = "\ue007"  # the Enter key in WebDriver's keyboard actions (selenium's Keys.ENTER)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_browser()
    with sqlite_server(tmp_path_factory.mktemp("web-server"), model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def people() -> list[Person]:
    return lfw_people(4, min_photos=4, skip=30)


class Page:
    """The page in the browser, with the few moves a test makes, and a screenshot per step."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.shots, self.by = driver, url, shots, By
        self.wait = WebDriverWait(driver, WAIT_S)
        self.steps = 0

    def open(self, path: str = "/") -> None:
        self.driver.get(self.url + path)
        self.until(lambda: self.driver.execute_script("return document.readyState") == "complete")

    def until(self, condition: Callable[[], Any], what: str = "") -> Any:
        return self.wait.until(lambda _driver: condition(), message=what)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements(self.by.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The first match's visible text, read in one go (the page may replace the element meanwhile)."""
        found = self.driver.execute_script(
            "const node = document.querySelector(arguments[0]); return node ? node.innerText : '';", css
        )
        return str(found)

    def texts(self, css: str) -> list[str]:
        found = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((node) => node.innerText);", css
        )
        return [str(t) for t in found]

    def shot(self, name: str) -> Path:
        self.steps += 1
        path = self.shots / f"{self.steps:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def names_on_boxes(self) -> list[str]:
        """The names on the face boxes, left to right ("unknown" for a face not recognised)."""
        names = []
        for label in self.texts(".box .label"):
            words = label.split(" ")[1:]  # "2 Ada_Lovelace 0.731" → the name and its score
            names.append("unknown" if words == ["unknown"] else " ".join(words[:-1]))
        return names

    def drop(self, zone_css: str, photo: Path) -> None:
        """Drop a file on a drop zone as a person dragging it from their desktop would."""
        self.driver.execute_script(
            """
            const [selector, name, data] = arguments;
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            const zone = document.querySelector(selector);
            for (const type of ["dragover", "drop"]) {
              const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
              zone.dispatchEvent(new DragEvent(type, init));
            }
            """,
            zone_css,
            photo.name,
            base64.b64encode(photo.read_bytes()).decode(),
        )

    def identified(self, faces: int) -> list[str]:
        self.until(lambda: f"{faces} face(s)" in self.text("#identify-status"), f"{faces} faces identified")
        return self.names_on_boxes()


def _blank(path: Path) -> Path:
    Image.new("RGB", (240, 240), "lightgray").save(path)
    return path


def test_enrol_identify_add_a_face_to_someone_and_delete(
    server: Server, model_dir: Path, people: list[Person], browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    ada, bob, cyd, dan = people
    # A fresh database runs the default embedder, with its manifest threshold.
    default = load_manifest(model_dir / "manifest.toml").get(DEFAULT_EMBEDDER)
    assert default.embedder is not None
    page = Page(browser, server.url, screenshots)
    page.open()
    page.shot("empty")
    assert "No one is enrolled yet." in page.text("#people tbody")

    # Enrol from a single photo.
    page.find("#enrol-name").send_keys(ada.name)
    page.find("#enrol-form button[type=submit]").click()
    page.until(lambda: "at least one photo" in page.text("#enrol-progress"), "asks for a photo")
    page.drop("#enrol-drop", ada.photos[0])
    page.find("#enrol-form button[type=submit]").click()
    page.until(lambda: f"Enrolled {ada.name} with 1 face(s)." in page.text("#enrol-progress"), "enrolled")
    page.until(lambda: ada.name in page.text("#people tbody"), "listed")
    page.shot("enrolled-one-photo")
    # Several photos at once, one of them without a face: per-photo outcome.
    page.find("#enrol-name").send_keys(bob.name)
    photos = [bob.photos[0], bob.photos[1], _blank(tmp_path / "blank.png")]
    page.find("#enrol-files").send_keys("\n".join(str(p) for p in photos))
    page.find("#enrol-form button[type=submit]").click()
    page.until(lambda: f"Enrolled {bob.name} with 2 face(s)." in page.text("#enrol-progress"), "enrolled two")
    outcomes = page.texts("#enrol-progress li")
    assert [o.split(":")[0] for o in outcomes] == [p.name for p in photos]
    assert "added" in outcomes[0] and "No face was found in the photo. (no_face" in outcomes[2]
    page.shot("enrolled-several-photos")
    # Someone known to the system by name only (e.g. imported), with no face yet.
    with Client(server.url) as facebank:
        cyd_id = facebank.create_identity(cyd.name).id

    # Identify a group photo, dropped on the page.
    group = group_photo([ada.photos[2], bob.photos[2], cyd.photos[1], dan.photos[1]], tmp_path / "group.jpg")
    page.drop("#identify-drop", group)
    assert page.identified(4) == [ada.name, bob.name, "unknown", "unknown"]
    assert f"threshold {default.embedder.threshold:.3f}, model {default.tag}" in page.text("#identify-status")
    first_card = page.text('.faces > li[data-face="0"]')
    assert ada.name in first_card and "above the threshold" in first_card
    page.shot("identified-group")

    # The third face belongs to someone who exists: choose it by keyboard, find them by name, add it.
    page.find('.box[data-face="2"]').send_keys(ENTER)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("aria-label") == "new person's name"
    card = '.faces > li[data-face="2"]'
    search = page.find(f"{card} .add-existing input[type=search]")
    search.send_keys(cyd.name.split("_")[0][:4].lower(), ENTER)
    page.until(lambda: f"Add to {cyd.name}" in page.text(f"{card} .choices"), "found by name")
    page.shot("add-to-existing-person")
    [choose] = [b for b in page.all(f"{card} .choices button") if str(b.text) == f"Add to {cyd.name}"]
    choose.click()
    page.until(lambda: f"Added the face to {cyd.name}" in page.text("#identify-status"), "added")
    assert page.identified(4) == [ada.name, bob.name, cyd.name, "unknown"]
    page.shot("recognised-after-adding")
    with Client(server.url) as facebank:
        assert facebank.get_identity(cyd_id).face_count == 1
        # Recognised in another photo of them too, not only in the one their face came from.
        elsewhere = facebank.identify(cyd.photos[2], k=1).faces[0].identity
        assert elsewhere is not None and elsewhere.id == cyd_id

    # The fourth is new: enrol them on the spot.
    page.find('.box[data-face="3"]').click()
    page.find('.faces > li[data-face="3"] .enrol-new input').send_keys(dan.name, ENTER)
    page.until(lambda: f"Enrolled {dan.name}" in page.text("#identify-status"), "enrolled new")
    assert page.identified(4) == [ada.name, bob.name, cyd.name, dan.name]
    page.shot("enrolled-from-the-group")

    # People: search by name, open their page.
    page.find("#people-query").send_keys(dan.name.lower()[1:])  # any part of the name, in any case
    page.until(lambda: len(page.all("#people tbody tr[data-id]")) == 1, "one match")
    page.find("#people tbody a").click()
    page.until(lambda: page.text("#person-name") == dan.name, "person page")
    assert len(page.all("#person-faces tbody tr[data-face-id]")) == 1
    assert default.tag in page.text("#person-faces tbody")
    page.shot("person-page")

    # Add several photos at once: progress and each photo's outcome.
    photos = [dan.photos[2], dan.photos[3], tmp_path / "blank.png"]
    page.find("#add-files").send_keys("\n".join(str(p) for p in photos))
    page.until(lambda: "3 of 3, 2 added" in page.text("#add-progress"), "uploaded")
    page.until(lambda: len(page.all("#person-faces tbody tr[data-face-id]")) == 3, "three faces")
    failed = page.text("#add-progress li.failed")
    assert failed.startswith("blank.png: No face was found in the photo."), failed
    page.shot("added-several-photos")

    # Rename; delete one face (asked twice, no dialog).
    page.find("#rename-name").clear()
    page.find("#rename-name").send_keys("Dan renamed", ENTER)
    page.until(lambda: page.text("#person-name") == "Dan renamed", "renamed")
    first_face = page.find("#person-faces tbody tr[data-face-id] button")
    first_face.click()
    assert "Really" in str(first_face.text)
    first_face.click()
    page.until(lambda: len(page.all("#person-faces tbody tr[data-face-id]")) == 2, "face deleted")
    page.shot("renamed-and-one-face-deleted")

    # Delete the person: back to the list, gone from it and from recognition.
    delete = page.find("#delete-person")
    delete.click()
    delete.click()
    page.until(lambda: not page.find("#home-view").get_attribute("hidden"), "back home")
    page.find("#people-query").clear()
    page.find("#people-search button").click()
    page.until(lambda: cyd.name in page.text("#people tbody"), "list reloaded")
    assert "Dan renamed" not in page.text("#people tbody")
    page.drop("#identify-drop", group)
    assert page.identified(4) == [ada.name, bob.name, cyd.name, "unknown"]
    page.shot("deleted")


def test_people_are_paged_through_the_cursor(server: Server, browser: Any, screenshots: Path) -> None:
    with Client(server.url) as facebank:
        for number in range(23):
            facebank.create_identity(f"pager {number:02d}")
    page = Page(browser, server.url, screenshots)
    page.open()
    page.find("#people-query").send_keys("pager", ENTER)
    page.until(lambda: page.text("#people tbody tr[data-id]").startswith("pager 00"), "first page")
    assert len(page.all("#people tbody tr[data-id]")) == 20
    page.shot("people-page-1")
    page.find("#people-next").click()
    page.until(lambda: page.text("#people tbody tr[data-id]").startswith("pager 20"), "second page")
    assert [row.split()[1] for row in page.texts("#people tbody tr[data-id]")] == ["20", "21", "22"]
    assert page.find("#people-next").get_attribute("disabled") is not None
    page.shot("people-page-2")
    page.find("#people-prev").click()
    page.until(lambda: page.text("#people tbody tr[data-id]").startswith("pager 00"), "back to the first")


def test_a_keyed_server_without_and_with_the_key(
    model_dir: Path, people: list[Person], browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "keyed"
    folder.mkdir()
    key = issue_test_key(sqlite_url(folder), Scope.ENROLL, Scope.IDENTIFY)
    with sqlite_server(folder, model_dir) as keyed:
        page = Page(browser, keyed.url, screenshots)
        page.open()
        page.until(lambda: "needs an API key" in page.text("#people tbody"), "asks for a key")
        page.find("#identify-file").send_keys(str(people[0].photos[0]))
        page.until(lambda: "needs an API key" in page.text("#identify-status"), "identify refused")
        assert "missing_api_key" in page.text("#identify-status")
        page.shot("keyed-without-key")

        page.find("#api-key").send_keys("fbk_not_a_real_key", ENTER)
        page.until(lambda: "API key was refused" in page.text("#people tbody"), "wrong key")
        page.shot("keyed-wrong-key")

        page.find("#api-key").clear()
        page.find("#api-key").send_keys(key, ENTER)
        page.until(lambda: "No one is enrolled yet." in page.text("#people tbody"), "listed with the key")
        page.find("#identify-file").send_keys(str(people[0].photos[1]))
        assert page.identified(1) == ["unknown"]
        page.shot("keyed-with-key")
