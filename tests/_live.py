"""For tests of what users touch: a real `facebank serve`, LFW people, group photos composed from them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from service.security import Scope, cli_principal, issue_key
from service.storage import make_engine, make_session_factory, upgrade_to_head
from tests.conftest import LFW, require_shared
from tests.reliability._server import Server, start_server


@dataclass(frozen=True)
class Person:
    name: str  # the LFW folder name, e.g. Aaron_Peirsol
    photos: list[Path]


def lfw_people(count: int, *, min_photos: int = 2, skip: int = 0) -> list[Person]:
    """The first `count` LFW people (by name, after `skip`) with at least `min_photos` photos."""
    require_shared()
    people: list[Person] = []
    seen = 0
    for folder in sorted(p for p in LFW.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) < min_photos:
            continue
        seen += 1
        if seen > skip:
            people.append(Person(folder.name, photos))
        if len(people) == count:
            break
    return people


# LFW photos are 250 px squares with their person's face in the middle; a tile is that middle, which
# leaves out most of the other people some of them show at their edges.
TILE = (45, 45, 205, 205)


def group_photo(photos: list[Path], target: Path) -> Path:
    """The middles of LFW photos side by side in one JPEG, left to right in the order given."""
    tiles = [Image.open(p).convert("RGB").crop(TILE) for p in photos]
    width = sum(t.width for t in tiles)
    canvas = Image.new("RGB", (width, max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width
    canvas.save(target, quality=95)
    return target


def issue_test_key(database_url: str, *scopes: Scope, name: str = "test") -> str:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            issued = issue_key(session, name=name, scopes=scopes, actor=cli_principal())
            session.commit()
            return issued.token
    finally:
        engine.dispose()


@contextmanager
def sqlite_server(folder: Path, model_dir: Path) -> Iterator[Server]:
    """`facebank serve` on loopback over a new SQLite database in `folder`; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    server = start_server(
        data_dir=folder,
        model_dir=model_dir,
        database_url=sqlite_url(folder),
        log=folder / "server.log",
    )
    try:
        yield server
    finally:
        server.stop()


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'facebank.db'}"
