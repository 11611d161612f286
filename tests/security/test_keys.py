"""Tokens, hashing, scopes, the loopback rule and the `facebank keys` / `serve` commands."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from service.api.auth import AuthFailure, resolve
from service.cli import main
from service.security import Scope, authenticate, cli_principal, is_loopback, issue_key, parse_scopes
from service.security.keys import looks_like_token, new_token, token_hash
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage.tables import ApiKey, AuditEvent


@pytest.fixture
def sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_tokens_are_long_random_and_recognisable() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(t.startswith("fbk_") and len(t) == 47 and looks_like_token(t) for t in tokens)
    assert not looks_like_token("fbk_" + "A" * 42) and not looks_like_token("x" * 47)


def test_only_a_sha256_of_the_token_is_stored(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        issued = issue_key(session, name="ops", scopes=[Scope.ADMIN], actor=cli_principal())
        session.commit()
    with sessions() as session:
        row = session.scalars(select(ApiKey)).one()
        stored = " ".join(str(getattr(row, c.key)) for c in ApiKey.__table__.columns)
        assert issued.token not in stored and issued.token[12:] not in stored
        assert row.secret_sha256 == hashlib.sha256(issued.token.encode()).hexdigest()
        assert row.prefix == issued.token[:12]
        assert token_hash(issued.token) == row.secret_sha256


def test_authenticate_finds_the_key_and_its_scopes(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        issued = issue_key(session, name="kiosk", scopes=[Scope.IDENTIFY], actor=cli_principal())
        session.commit()
        principal = authenticate(session, issued.token)
        assert principal is not None and principal.key_id == issued.key.id
        assert principal.allows(Scope.IDENTIFY) and not principal.allows(Scope.ENROLL)
        assert authenticate(session, issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")) is None
        event = session.scalars(select(AuditEvent)).one()
        assert (event.action, event.target_id) == ("key.create", str(issued.key.id))
        assert event.actor.startswith("cli ")


def test_admin_implies_every_scope() -> None:
    from service.security import Principal

    admin = Principal(label="a", scopes=frozenset({Scope.ADMIN}))
    assert all(admin.allows(scope) for scope in Scope)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["admin"], {Scope.ADMIN}),
        (["enroll,identify"], {Scope.ENROLL, Scope.IDENTIFY}),
        (["enroll", " identify "], {Scope.ENROLL, Scope.IDENTIFY}),
    ],
)
def test_scopes_parse_from_names(values: list[str], expected: set[Scope]) -> None:
    assert parse_scopes(values) == expected


@pytest.mark.parametrize("values", [[], [""], ["root"], ["admin,superuser"]])
def test_unknown_or_missing_scopes_are_refused(values: list[str]) -> None:
    with pytest.raises(ValueError, match="scope"):
        parse_scopes(values)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_which_bind_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_keys_a_loopback_server_still_refuses_callers_from_other_addresses(
    sessions,  # type: ignore[no-untyped-def]
) -> None:
    state = SimpleNamespace(sessions=sessions, open_without_keys=True)
    local = {"host": "127.0.0.1:8000"}
    assert not isinstance(resolve(state, local, "127.0.0.1"), AuthFailure)  # type: ignore[arg-type]
    assert not isinstance(resolve(state, {"host": "localhost"}, "::1"), AuthFailure)  # type: ignore[arg-type]
    refused = [
        (local, "10.1.2.3"),  # another machine
        (local, None),  # no peer address: a UNIX socket
        (local, "x"),  # not an address: what a proxy header rewrite can leave
        ({"host": "evil.example"}, "127.0.0.1"),  # DNS rebinding: a page's own name
        ({}, "127.0.0.1"),  # no Host at all
        (local | {"x-forwarded-for": "127.0.0.1"}, "127.0.0.1"),  # a same-host proxy or tunnel
        (local | {"forwarded": "for=127.0.0.1"}, "127.0.0.1"),
        (local | {"x-real-ip": "127.0.0.1"}, "127.0.0.1"),
    ]
    for headers, peer in refused:
        answer = resolve(state, headers, peer)  # type: ignore[arg-type]
        assert isinstance(answer, AuthFailure) and answer.code == "missing_api_key", (headers, peer)
    public = SimpleNamespace(sessions=sessions, open_without_keys=False)
    assert isinstance(resolve(public, local, "127.0.0.1"), AuthFailure)  # type: ignore[arg-type]


def test_keys_commands_create_list_and_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    assert main(["keys", "create", "--name", "ops", "--scope", "admin", "--scope", "enroll"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert looks_like_token(token) and "shown this once" in captured.err

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert token[:12] in listing and "admin,enroll" in listing and token not in listing

    assert main(["keys", "create", "--name", "x", "--scope", "root"]) == 2
    assert "unknown scope" in capsys.readouterr().err
    assert main(["keys", "revoke", "fbk_"]) == 1  # too short to pick a key
    assert main(["keys", "revoke", token[:12]]) == 0
    assert "is now revoked" in capsys.readouterr().out
    assert main(["keys", "list"]) == 0
    assert token[:12] not in capsys.readouterr().out
    assert main(["keys", "list", "--all"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_serve_refuses_a_public_address_while_no_key_exists(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    started = threading.Event()
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.set())
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))  # serve loads the models before uvicorn starts
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "facebank keys create" in capsys.readouterr().err and not started.is_set()
    assert main(["serve", "--host", "127.0.0.1", "--port", "8123"]) == 0 and started.is_set()
    started.clear()
    assert main(["keys", "create", "--name", "ops", "--scope", "admin"]) == 0
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0 and started.is_set()


def test_keys_list_neither_creates_nor_migrates_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic import command

    from service.storage import current_revision, head_revision
    from service.storage.migrate import alembic_config

    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FACEBANK_DATABASE_URL", raising=False)
    assert main(["keys", "list"]) == 0
    assert "none yet" in capsys.readouterr().err and not (tmp_path / "facebank.db").exists()

    # A database another (older) version left: listing must not upgrade it behind that version's back.
    engine = make_engine(f"sqlite:///{tmp_path / 'facebank.db'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0002")
    older = current_revision(engine)
    assert older is not None and older != head_revision()
    assert main(["keys", "list"]) == 1
    assert "not migrated" in capsys.readouterr().err
    assert current_revision(engine) == older
    engine.dispose()
