"""face_policy=box: enrol the face of a group photo that a box from /v1/detect or /v1/identify points at."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests._live import group_photo, lfw_people

pytestmark = pytest.mark.shared


def _jpeg(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


def _person(client: TestClient, name: str) -> str:
    response = client.post("/v1/identities", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _boxes(client: TestClient, photo: bytes) -> list[list[float]]:
    faces = client.post("/v1/detect", files={"image": ("g.jpg", photo)}).json()["faces"]
    return sorted((f["bbox"] for f in faces), key=lambda b: b[0])


def _enroll(client: TestClient, identity: str, photo: bytes, box: list[float] | str | None) -> dict:
    params = {"face_policy": "box"}
    if box is not None:
        params["box"] = box if isinstance(box, str) else ",".join(str(v) for v in box)
    response = client.post(
        f"/v1/identities/{identity}/faces", params=params, files={"image": ("g.jpg", photo)}
    )
    return {"status": response.status_code, **response.json()}


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, bytes]:
    people = lfw_people(3, skip=10)
    path = group_photo([p.photos[0] for p in people], tmp_path_factory.mktemp("box") / "group.jpg")
    return people, path.read_bytes()


def test_the_box_of_a_face_enrols_that_face_not_the_largest(
    client: TestClient, trio: tuple[list, bytes]
) -> None:
    people, photo = trio
    boxes = _boxes(client, photo)
    assert len(boxes) == 3
    for person, box in zip(people, boxes, strict=True):
        identity = _person(client, person.name)
        enrolled = _enroll(client, identity, photo, box)
        assert enrolled["status"] == 201, enrolled
        assert enrolled["bbox"] == pytest.approx(box, abs=0.01)
    # Each one is recognised in another photo of them: the right face went to the right person.
    for person in people:
        found = client.post(
            "/v1/identify?k=1", files={"image": ("p.jpg", person.photos[1].read_bytes())}
        ).json()
        assert found["faces"][0]["matches"][0]["name"] == person.name, found


def test_a_loose_box_drawn_by_hand_and_one_reaching_off_the_image(
    client: TestClient, trio: tuple[list, bytes]
) -> None:
    _people, photo = trio
    left, _middle, right = _boxes(client, photo)
    identity = _person(client, "loose")
    loose = [left[0] - 15, left[1] - 20, left[2] + 10, left[3] + 15]
    assert _enroll(client, identity, photo, loose)["bbox"] == pytest.approx(left, abs=0.01)
    width = Image.open(io.BytesIO(photo)).width
    past_the_edge = [right[0], right[1], width + 40, right[3]]
    assert _enroll(client, identity, photo, past_the_edge)["bbox"] == pytest.approx(right, abs=0.01)


@pytest.mark.parametrize(
    ("box", "code"),
    [
        ("-400,-400,-300,-300", "no_face_in_box"),  # wholly off the image
        ("100000,0,100100,100", "no_face_in_box"),
        (None, "missing_box"),
        ("1,2,3", "invalid_box"),
        ("5,5,1,1", "invalid_box"),
    ],
)
def test_boxes_that_choose_no_face_are_refused_with_a_code(
    client: TestClient, trio: tuple[list, bytes], box: str | None, code: str
) -> None:
    _people, photo = trio
    identity = _person(client, "refused")
    answer = _enroll(client, identity, photo, box)
    assert (answer["status"], answer["error"]["code"]) == (422, code)
    assert client.get(f"/v1/identities/{identity}").json()["face_count"] == 0


def test_a_box_between_two_identical_faces_is_a_tie(client: TestClient, tmp_path: Path) -> None:
    (person,) = lfw_people(1, skip=10)
    photo = group_photo([person.photos[0], person.photos[0]], tmp_path / "twins.jpg").read_bytes()
    left, right = _boxes(client, photo)
    # Around both: each face is the same share of it, so neither is "the" face.
    both = [left[0], min(left[1], right[1]), right[2], max(left[3], right[3])]
    answer = _enroll(client, _person(client, "twin"), photo, both)
    assert (answer["status"], answer["error"]["code"]) == (422, "ambiguous_box")


def test_a_box_without_face_policy_box_is_refused(client: TestClient, trio: tuple[list, bytes]) -> None:
    _people, photo = trio
    identity = _person(client, "policy")
    response = client.post(
        f"/v1/identities/{identity}/faces", params={"box": "0,0,10,10"}, files={"image": ("g.jpg", photo)}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "bad_request"


def test_boxes_of_an_exif_rotated_photo_are_in_upright_coordinates(
    client: TestClient, trio: tuple[list, bytes]
) -> None:
    people, photo = trio
    upright = Image.open(io.BytesIO(photo))
    # Stored on its side with Orientation=6 ("rotate 90° clockwise to show"), as phones write them.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif)
    boxes = _boxes(client, rotated)
    assert len(boxes) == 3 and all(b[2] <= upright.width + 1 and b[3] <= upright.height + 1 for b in boxes)
    identity = _person(client, people[2].name + " (rotated)")
    enrolled = _enroll(client, identity, rotated, boxes[2])
    assert enrolled["status"] == 201 and enrolled["bbox"] == pytest.approx(boxes[2], abs=0.01)
    found = client.post("/v1/identify?k=1", files={"image": ("p.jpg", people[2].photos[1].read_bytes())})
    assert found.json()["faces"][0]["identity"]["id"] == identity
