"""The change-log applier of a shared Milvus store: one writer elected among the processes on a database
(PostgreSQL advisory lock, or a file lock beside a SQLite file), readers that never write and wait for the
writer after their own writes, take-over from the recorded position, re-sync of a store that is behind, and
an engine that dies: nothing applied is lost, the applier resumes when it is back. Real milvus-lite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.follower import ChangeFollower
from service.gallery import SearchGallery, gallery_for
from service.index.milvus import VectorStoreUnavailable
from service.milvus_gallery import MilvusGallery
from service.storage import make_engine, make_session_factory, service_settings, upgrade_to_head
from service.storage import repository as repo
from service.storage.locks import writer_lock
from tests._milvus import MilvusServer, embedded_uri, milvus_server, new_prefix, skip_unless_embedded
from tests._stored import DIM, MODEL, new_person, store_face, unit


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'f.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("fresh_postgres_url")
    )
    engine = make_engine(url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    for uri in embedded_uri(tmp_path):
        yield Settings(
            vector_store="milvus",
            milvus_uri=uri,
            milvus_collection_prefix=new_prefix(),
            milvus_applied_wait_s=5,
        )


class Replica:
    """What one `facebank serve` process holds: its sessions, its follower and its writer lock."""

    def __init__(self, engine: Engine, settings: Settings, *, poll_s: float = 0.05) -> None:
        # An engine per replica: each holds its own connections, as separate processes do.
        self.engine = make_engine(engine.url.render_as_string(hide_password=False))
        self.sessions = make_session_factory(self.engine)
        gallery = gallery_for(settings, self.sessions, MODEL, DIM)
        self.follower = ChangeFollower(
            gallery, self.sessions, poll_s=poll_s, retention_s=3600, election=writer_lock(self.engine)
        )
        self.follower.start_up()

    @property
    def gallery(self) -> MilvusGallery:
        gallery = self.follower.gallery
        assert isinstance(gallery, MilvusGallery)
        return gallery

    def close(self) -> None:
        self.follower.close()
        self.engine.dispose()


@pytest.fixture
def replicas(engine: Engine, settings: Settings) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for replica in made:
        replica.close()


def test_one_writer_is_elected_and_a_reader_applies_nothing_itself(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    replicas += [Replica(engine, settings), Replica(engine, settings)]
    writer, reader = replicas
    assert (writer.follower.status().writer, reader.follower.status().writer) == (True, False)
    person = new_person(reader.sessions)
    store_face(reader.sessions, person, 1)
    reader.follower.catch_up()
    assert reader.gallery.face_count() == 0  # the reader read the log but wrote nothing
    assert (reader.gallery.applied_position() or 0) < reader.follower.position
    writer.follower.catch_up()
    assert reader.gallery.wait_applied(reader.follower.position)
    assert reader.gallery.identify(unit(1)[None, :], 1)[0][0].identity_id == person
    with reader.sessions() as session:
        repo.delete_identity(session, identity_id=person)
        session.commit()
    reader.follower.catch_up()
    assert reader.gallery.face_count() == 1  # nor does it delete: that is the writer's work too
    writer.follower.catch_up()
    assert reader.gallery.face_count() == 0


def test_a_write_on_a_reader_is_found_there_as_soon_as_its_answer_returns(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    # The writer polls the log slowly, so the reader's answer would come before it applied unless it waited.
    replicas += [Replica(engine, settings, poll_s=0.5), Replica(engine, settings)]
    writer, reader = replicas
    writer.follower.start()  # applies in the background, as in a server
    person = new_person(reader.sessions)
    store_face(reader.sessions, person, 7)
    reader.follower.after_write()  # what a request does after committing
    assert reader.gallery.identify(unit(7)[None, :], 1)[0][0].identity_id == person


def test_when_the_writer_stops_a_reader_takes_over_from_the_recorded_position(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    replicas += [Replica(engine, settings), Replica(engine, settings)]
    writer, reader = replicas
    person = new_person(writer.sessions)
    store_face(writer.sessions, person, 1)
    writer.follower.catch_up()
    writer.close()
    replicas.remove(writer)
    store_face(reader.sessions, person, 2)  # committed while no process is the writer
    reader.follower._elect()
    assert reader.follower.status().writer is True
    assert reader.gallery.face_count() == 2
    assert reader.gallery.audit().in_step


def test_a_store_that_lost_rows_or_its_position_is_resynced_from_sql_by_the_next_writer(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    skip_unless_embedded()
    replicas.append(Replica(engine, settings))
    first = replicas[0]
    person = new_person(first.sessions)
    keys = [store_face(first.sessions, person, seed)[0] for seed in range(3)]
    first.follower.catch_up()
    first.gallery.store.delete(keys[:1])  # rows lost behind the applier's back; the position still says "all"
    first.close()
    replicas.clear()
    replicas.append(Replica(engine, settings))
    assert replicas[0].gallery.audit().in_step  # the count differed: re-synced at take-over
    replicas[0].gallery.store.drop()  # a wiped Milvus: no collection, no position
    replicas[0].close()
    replicas.clear()
    replicas.append(Replica(engine, settings))
    audit = replicas[0].gallery.audit()
    assert audit.in_step and audit.index_faces == 3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MilvusServer]:
    skip_unless_embedded()
    yield from milvus_server(tmp_path)


def test_an_engine_that_dies_loses_nothing_and_the_applier_resumes_when_it_is_back(
    engine: Engine, server: MilvusServer
) -> None:
    settings = Settings(
        vector_store="milvus",
        milvus_uri=server.uri,
        milvus_collection_prefix=new_prefix(),
        milvus_timeout_s=15,
    )
    sessions: sessionmaker[Session] = make_session_factory(engine)
    follower = ChangeFollower(
        gallery_for(settings, sessions, MODEL, DIM),
        sessions,
        poll_s=0.05,
        retention_s=3600,
        election=writer_lock(engine),
    )
    follower.start_up()
    person = new_person(sessions)
    store_face(sessions, person, 1)
    follower.catch_up()
    server.kill()
    store_face(sessions, person, 2)
    position = follower.position
    with pytest.raises(VectorStoreUnavailable):
        follower.catch_up()
    assert follower.position == position  # not moved past what the store never got
    with pytest.raises(VectorStoreUnavailable):
        follower.gallery.identify(unit(1)[None, :], 1)
    assert follower.gallery.store_problem() is not None
    server.start()
    follower.catch_up()
    assert follower.gallery.face_count() == 2
    # The second face itself is in Milvus (identify would score the person by both faces, read from SQL).
    (((_, score),),) = follower.gallery.store.search_identities(unit(2)[None, :], 1)  # type: ignore[attr-defined]
    assert score == pytest.approx(1.0, abs=1e-5)
    follower.close()


def test_a_switch_of_embedder_fills_the_new_models_collection_from_sql_and_keeps_the_old_one_apart(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    replicas.append(Replica(engine, settings))
    (replica,) = replicas
    person = new_person(replica.sessions)
    store_face(replica.sessions, person, 1)
    store_face(replica.sessions, person, 2, model="next@2")
    store_face(replica.sessions, person, 3, model="next@2")
    replica.follower.catch_up()
    follower = replica.follower
    follower.on_switch = lambda tag: _rebuilt(gallery_for(settings, replica.sessions, tag, DIM, writer=True))
    with replica.sessions() as session:
        service_settings.set_active_embedder(session, tag="next@2")
        session.commit()
    follower.catch_up()
    assert follower.gallery.model_tag == "next@2" and follower.gallery.face_count() == 2
    assert follower.gallery.applied_position() == follower.position
    old = gallery_for(settings, replica.sessions, MODEL, DIM)
    assert old.face_count() == 1 and old.audit().in_step


def _rebuilt(gallery: SearchGallery) -> SearchGallery:
    gallery.rebuild()
    return gallery


def test_a_reader_keeps_its_model_until_the_writer_has_filled_the_new_collection(
    engine: Engine, settings: Settings, replicas: list[Replica]
) -> None:
    """A reader that switched to a collection still being filled would miss people: it waits for the writer,
    keeps serving its current model meanwhile (saying why), and switches once the writer is done."""
    replicas.append(Replica(engine, settings))
    replicas.append(Replica(engine, settings))
    writer, reader = replicas
    assert writer.follower.is_writer and not reader.follower.is_writer
    person = new_person(writer.sessions)
    store_face(writer.sessions, person, 1)
    store_face(writer.sessions, person, 2, model="next@2")
    impatient = settings.model_copy(update={"milvus_applied_wait_s": 0.3})
    reader.follower.on_switch = lambda tag: _rebuilt(gallery_for(impatient, reader.sessions, tag, DIM))
    writer.follower.on_switch = lambda tag: _rebuilt(
        gallery_for(settings, writer.sessions, tag, DIM, writer=True)
    )
    with writer.sessions() as session:
        service_settings.set_active_embedder(session, tag="next@2")
        session.commit()

    reader.follower.catch_up()  # the writer has not switched yet
    assert reader.follower.gallery.model_tag == MODEL
    assert "waits for the vector store" in (reader.follower.switch_problem or "")

    writer.follower.catch_up()  # fills next@2's collection and records the position
    assert writer.follower.gallery.model_tag == "next@2"
    reader.follower.catch_up()
    assert reader.follower.gallery.model_tag == "next@2" and reader.follower.switch_problem is None
    (match,) = reader.follower.gallery.identify(unit(2)[None, :], 1)[0]
    assert match.identity_id == person and match.score == pytest.approx(1.0, abs=1e-5)
