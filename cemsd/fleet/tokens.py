"""Registry tokens of the fleet API, each scoped to plants (or every plant: `*`). Like the
edge's tokens (cemsd/api/tokens.py: 32 random bytes, only the SHA-256 stored)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from cemsd.api.tokens import NAME_PATTERN, TOKEN_BYTES, TokenError, token_hash
from cemsd.fleet import schema
from cemsd.store.database import Database

EVERY_PLANT = "*"


@dataclass(frozen=True)
class Scope:
    name: str
    plants: frozenset[str]  # {"*"}: every plant
    revoked: bool

    def allows(self, plant: str) -> bool:
        return EVERY_PLANT in self.plants or plant in self.plants


def create_token(db: Database, name: str, plants: list[str]) -> str:
    """A new token for `plants`; returned once, only its hash is stored."""
    if not NAME_PATTERN.match(name):
        raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if not plants:
        raise TokenError(f"token {name}: name the plants it may read (--plant ID, or '*')")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with db.transaction() as conn:
            conn.execute(insert(schema.tokens).values(
                name=name, token_sha256=token_hash(token), plants=json.dumps(sorted(plants)),
                created_at=datetime.now(UTC)))
    except Exception as exc:
        if isinstance(exc.__cause__, IntegrityError):
            raise TokenError(f"a token named {name!r} exists already") from None
        raise
    return token


def revoke_token(db: Database, name: str) -> int:
    t = schema.tokens.c
    with db.transaction() as conn:
        return conn.execute(update(schema.tokens).where(t.name == name, t.revoked_at.is_(None))
                            .values(revoked_at=datetime.now(UTC))).rowcount


def scope_of(db: Database, presented: str | None) -> Scope | None:
    """The presented token's scope, or None if it is not one we issued."""
    if not presented:
        return None
    t = schema.tokens.c
    rows = db.fetch(select(t.name, t.plants, t.revoked_at)
                    .where(t.token_sha256 == token_hash(presented)))
    if not rows:
        return None
    row = rows[0]
    return Scope(row.name, frozenset(json.loads(row.plants)), row.revoked_at is not None)
