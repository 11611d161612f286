"""Access control: API keys with scopes, the loopback rule for a server without keys, and the audit log.

Imports only `service.storage` of the rest of `service/`; the API and the CLI compose it.
"""

from service.security.audit import Actions, record
from service.security.keys import (
    IssuedKey,
    Scope,
    authenticate,
    issue_key,
    looks_like_token,
    parse_scopes,
    revoke_key,
    token_hash,
)
from service.security.principal import Principal, anonymous_loopback, cli_principal, is_loopback

NO_KEYS_HINT = (
    "create one with `facebank keys create --name NAME --scope admin` (it prints the key once), "
    "or bind to 127.0.0.1"
)

__all__ = [
    "NO_KEYS_HINT",
    "Actions",
    "IssuedKey",
    "Principal",
    "Scope",
    "anonymous_loopback",
    "authenticate",
    "cli_principal",
    "is_loopback",
    "issue_key",
    "looks_like_token",
    "parse_scopes",
    "record",
    "revoke_key",
    "token_hash",
]
