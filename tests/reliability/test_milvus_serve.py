"""`facebank serve` with FACEBANK_VECTOR_STORE=milvus: two real replicas on PostgreSQL share one Milvus (a
`milvus-lite server` process; milvus-lite's embedded mode locks its data to one process). One replica is
elected the writer; what either takes is found on both, deletions reach Milvus, and when Milvus dies
identify answers 503 vector_store_unavailable while enrolment still commits; when it returns the writer
catches up. A Milvus that cannot serve refuses the start in one line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.security import Scope
from tests._db import postgres_or_skip
from tests._live import issue_test_key
from tests._milvus import MilvusServer, milvus_server, new_prefix, require_pymilvus, skip_unless_embedded
from tests._ports import free_port
from tests.reliability._server import ROOT, start_server
from tests.reliability.test_replicas import Replica, _photo

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BOUND_S = 15.0
UNREACHABLE = "Fail connecting to server on"


def _within(bound_s: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    skip_unless_embedded()  # these tests kill the engine
    yield from milvus_server(tmp_path_factory.mktemp("milvus"))


@pytest.fixture(scope="module")
def milvus_env(milvus: MilvusServer) -> dict[str, str]:
    return {
        "FACEBANK_VECTOR_STORE": "milvus",
        "FACEBANK_MILVUS_URI": milvus.uri,
        "FACEBANK_MILVUS_COLLECTION_PREFIX": new_prefix(),
        "FACEBANK_MILVUS_TIMEOUT_S": "15",
        "FACEBANK_FOLLOW_POLL_MS": "100",
    }


@pytest.fixture(scope="module")
def postgres_of_this_module() -> Iterator[str]:
    """A PostgreSQL database of its own (it holds an API key, which would change other modules' rules)."""
    yield from postgres_or_skip()


@pytest.fixture(scope="module")
def replicas(
    postgres_of_this_module: str,
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    milvus_env: dict[str, str],
) -> Iterator[tuple[Replica, Replica]]:
    """(writer, reader): the first replica to start takes the writer lock."""
    postgres_url = postgres_of_this_module
    key = issue_test_key(postgres_url, Scope.ADMIN, name="milvus-replicas")
    servers = []
    for name in ("writer", "reader"):
        data_dir = tmp_path_factory.mktemp(f"milvus-replica-{name}")
        servers.append(
            start_server(
                data_dir=data_dir,
                model_dir=model_dir,
                database_url=postgres_url,
                log=data_dir / "log",
                env=milvus_env,
            )
        )
    pair = Replica(servers[0], key), Replica(servers[1], key)
    yield pair
    for replica in pair:
        replica.server.stop()


def _writer_flag(replica: Replica) -> object:
    return replica.http.get("/readyz").json()["checks"]["changes"]["writer"]


def test_one_replica_writes_and_what_the_reader_takes_it_finds_at_once_and_the_writer_too(
    replicas: tuple[Replica, Replica],
) -> None:
    writer, reader = replicas
    assert (_writer_flag(writer), _writer_flag(reader)) == (True, False)
    tony, _ = reader.enroll("Tony_Blair", 1)
    assert reader.top(_photo("Tony_Blair", 2))[0] == tony  # the reader waited for the writer's apply
    assert writer.top(_photo("Tony_Blair", 2))[0] == tony
    assert reader.index_in_step() and writer.index_in_step()


def test_an_identity_erased_through_the_reader_is_gone_from_milvus_for_both(
    replicas: tuple[Replica, Replica],
) -> None:
    writer, reader = replicas
    colin, _ = writer.enroll("Colin_Powell", 1, 3)
    assert reader.top(_photo("Colin_Powell", 1))[0] == colin
    assert reader.http.delete(f"/v1/identities/{colin}").status_code == 204
    assert reader.top(_photo("Colin_Powell", 1))[0] != colin
    assert writer.top(_photo("Colin_Powell", 1))[0] != colin
    assert writer.index_in_step()


def test_milvus_down_answers_503_with_a_code_enrolment_still_commits_and_is_found_when_it_is_back(
    replicas: tuple[Replica, Replica], milvus: MilvusServer
) -> None:
    writer, reader = replicas
    milvus.kill()
    try:
        for replica in (writer, reader):
            answer = replica.http.post(
                "/v1/identify", files={"image": ("p.jpg", _photo("George_W_Bush", 1), "image/jpeg")}
            )
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "vector_store_unavailable"
            ready = replica.http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["vector_store"]["error"]
        george, _ = reader.enroll("George_W_Bush", 1)  # committed to SQL: 201 although Milvus is away
    finally:
        milvus.start()
    _within(BOUND_S, lambda: reader.http.get("/readyz").status_code == 200)
    _within(BOUND_S, lambda: reader.top(_photo("George_W_Bush", 2))[0] == george)
    assert writer.top(_photo("George_W_Bush", 2))[0] == george
    assert writer.index_in_step()


def _serve_once(env: dict[str, str], tmp_path: Path, model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={
            **os.environ,
            "FACEBANK_DATA_DIR": str(tmp_path),
            "FACEBANK_MODEL_DIR": str(model_dir),
            "PYTHONPATH": str(ROOT),
            "FACEBANK_LOG_LEVEL": "warning",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
    )


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The refusal's lines; and no traceback anywhere."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_a_milvus_that_cannot_be_reached_refuses_the_start_in_one_line(
    tmp_path: Path, model_dir: Path
) -> None:
    require_pymilvus()
    unreachable = f"http://127.0.0.1:{free_port()}"
    done = _serve_once(
        {"FACEBANK_VECTOR_STORE": "milvus", "FACEBANK_MILVUS_URI": unreachable}, tmp_path, model_dir
    )
    assert done.returncode == 2, done.stderr
    (line,) = _error_lines(done)
    assert line.startswith(f"error: refusing to serve: cannot use Milvus at {unreachable}: {UNREACHABLE}")


def test_a_collection_of_another_dimension_refuses_the_start_in_one_line(
    tmp_path: Path, model_dir: Path, milvus: MilvusServer
) -> None:
    from service.config import DEFAULT_EMBEDDER
    from service.index.milvus import MilvusStore
    from service.runtime.manifest import load_manifest

    prefix = new_prefix()
    tag = load_manifest(model_dir / "manifest.toml").get(DEFAULT_EMBEDDER).tag  # what a fresh database runs
    MilvusStore.connect(milvus.uri, model_tag=tag, dim=64, prefix=prefix)  # made by something else
    done = _serve_once(
        {
            "FACEBANK_VECTOR_STORE": "milvus",
            "FACEBANK_MILVUS_URI": milvus.uri,
            "FACEBANK_MILVUS_COLLECTION_PREFIX": prefix,
        },
        tmp_path,
        model_dir,
    )
    assert done.returncode == 2, done.stderr
    (line,) = _error_lines(done)
    assert "holds 64-dimensional vectors" in line, done.stderr
