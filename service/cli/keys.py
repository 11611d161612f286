"""`facebank keys create|list|revoke`: API keys, shown once and stored hashed."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING, Any

from service.cli.common import EXIT_USAGE, database, fail
from service.config import Settings

if TYPE_CHECKING:
    from service.storage.tables import ApiKey


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="admin, enroll or identify; repeat or separate with commas",
    )
    create.set_defaults(handler=_keys_create)
    key_listing = keys_commands.add_parser("list", help="keys with their prefixes and scopes (never secrets)")
    key_listing.add_argument("--all", action="store_true", help="include revoked keys")
    key_listing.set_defaults(handler=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", help="the key's id, or its prefix as `keys list` shows it")
    revoke.set_defaults(handler=_keys_revoke)


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from service.security import cli_principal, issue_key, parse_scopes

    try:
        scopes = parse_scopes(args.scope)
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    with database(settings) as session:
        issued = issue_key(session, name=args.name, scopes=scopes, actor=cli_principal())
        session.commit()
    key = issued.key
    print(f"created key {key.id} {key.name!r} with scope(s) {', '.join(key.scopes)}", file=sys.stderr)
    print("the key is shown this once; store it now (only its hash is kept):", file=sys.stderr)
    print(issued.token)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from service.storage import keys as key_repo
    from service.storage.migrate import schema_problem

    # Listing is read-only: it must not create or migrate a database (say, another version's).
    if (problem := schema_problem(settings.resolved_database_url)) is not None:
        print(f"no API keys: the database is {problem}", file=sys.stderr)
        return 0 if problem.startswith("none yet") else 1
    with database(settings, migrate=False) as session:
        keys = key_repo.list_keys(session, include_revoked=args.all)
    if not keys:
        print("no API keys", file=sys.stderr)
        return 0
    print(f"{'id':36}  {'prefix':12}  {'scopes':22}  {'created':20}  {'state':8}  name")
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{key.id!s:36}  {key.prefix:12}  {','.join(key.scopes):22}  {created:20}  {state:8}  {key.name}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.security import cli_principal, revoke_key
    from service.storage import keys as key_repo

    with database(settings) as session:
        found: list[ApiKey] = []
        try:
            by_id = key_repo.get_key(session, key_id=uuid.UUID(args.key))
            found = [by_id] if by_id is not None else []
        except ValueError:  # not an id: a prefix as `keys list` shows it
            if len(args.key) >= 6:
                found = key_repo.find_keys_by_prefix(session, prefix=args.key)
        if len(found) != 1:
            what = "no key matches" if not found else f"{len(found)} keys match"
            return fail(f"{what} {args.key!r}; give the id or prefix from `facebank keys list`")
        key = found[0]
        already = key.revoked_at is not None
        revoke_key(session, key_id=key.id, actor=cli_principal())
        session.commit()
    print(f"key {key.id} ({key.prefix}, {key.name!r}) {'was already' if already else 'is now'} revoked")
    return 0
