"""API tokens: one per client, created and revoked from the CLI, stored only as a hash.

A token is 32 random bytes (URL-safe base64); the database keeps SHA-256 of it, so a
copy of the database does not give access. Tokens are high-entropy, so an unsalted hash
is enough. Every create and revoke goes to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import insert, select, update

from cemsd.errors import CemsdError, StorageError
from cemsd.store import schema
from cemsd.store.database import Database

log = logging.getLogger(__name__)
TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per token and minute


class TokenError(CemsdError):
    """A token command that cannot be carried out (duplicate name, no such token)."""


class Access(Enum):
    GRANTED = "granted"
    UNKNOWN = "unknown"  # no token, or one we never issued: 401
    REVOKED = "revoked"  # a token we issued and revoked: 403


@dataclass(frozen=True)
class Verdict:
    access: Access
    name: str | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Database, name: str, actor: str) -> str:
    """Store a new token's hash under `name`; return the token (shown once, never stored)."""
    if not NAME_PATTERN.match(name):
        raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    t = schema.api_tokens.c
    now = datetime.now(UTC)
    with db.transaction() as conn:
        active = conn.execute(select(t.id).where(t.name == name, t.revoked_at.is_(None)))
        if active.first() is not None:
            raise TokenError(f"an active token named {name!r} exists; revoke it first")
        new_id = conn.execute(insert(schema.api_tokens).values(
            name=name, token_hash=token_hash(token), created_at=now)).inserted_primary_key[0]
        _audit(conn, now, actor, "token.create", name, None, {"id": new_id, "name": name})
    return token


def revoke_token(db: Database, name: str, actor: str, reason: str | None = None) -> int:
    """Revoke the active token named `name`; returns its id."""
    t = schema.api_tokens.c
    now = datetime.now(UTC)
    with db.transaction() as conn:
        row = conn.execute(select(t.id, t.created_at)
                           .where(t.name == name, t.revoked_at.is_(None))).first()
        if row is None:
            raise TokenError(f"no active token named {name!r}")
        conn.execute(update(schema.api_tokens).where(t.id == row.id).values(revoked_at=now))
        _audit(conn, now, actor, "token.revoke", name, reason, {"id": row.id, "name": name})
    return int(row.id)


def list_tokens(db: Database) -> list[Any]:
    t = schema.api_tokens.c
    return db.fetch(select(t.id, t.name, t.created_at, t.revoked_at, t.last_used_at)
                    .order_by(t.created_at, t.id))


def check_token(db: Database, presented: str | None) -> Verdict:
    """Compare the presented token's hash with every stored one in constant time."""
    if not presented:
        return Verdict(Access.UNKNOWN)
    digest = token_hash(presented)
    t = schema.api_tokens.c
    match = None
    for row in db.fetch(select(t.id, t.name, t.token_hash, t.revoked_at, t.last_used_at)):
        if hmac.compare_digest(row.token_hash, digest):  # no early exit: constant work
            match = row
    if match is None:
        return Verdict(Access.UNKNOWN)
    if match.revoked_at is not None:
        return Verdict(Access.REVOKED, match.name)
    _note_use(db, match)
    return Verdict(Access.GRANTED, match.name)


def _note_use(db: Database, row: Any) -> None:
    now = datetime.now(UTC)
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return
    t = schema.api_tokens.c
    try:
        with db.transaction() as conn:
            conn.execute(update(schema.api_tokens).where(t.id == row.id)
                         .values(last_used_at=now))
    except StorageError as exc:  # bookkeeping only: the request still gets its answer
        log.warning("could not record token use", extra={"token": row.name, "error": str(exc)})


def _audit(conn: Any, at: datetime, actor: str, action: str, target: str,
           reason: str | None, after: dict[str, Any]) -> None:
    conn.execute(insert(schema.audit_log).values(
        at=at, actor=actor, action=action, target=target, reason=reason,
        before=None, after=json.dumps(after), host=socket.gethostname()))
