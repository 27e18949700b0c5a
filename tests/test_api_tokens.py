"""API tokens from the command line: printed once, stored only as a hash, one active token
per name, revocation, and an audit record for every change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cemsd.api.tokens import Access, check_token
from cemsd.cli import main
from cemsd.config import Config
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import write_config


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A plant whose database exists (`cemsd db-upgrade`, as at installation): token
    commands never create one."""
    config = write_config(tmp_path, {"plant": {"id": "tok", "timezone": "Asia/Shanghai"},
                                     "buses": [], "devices": []})
    db = Database(config.storage.database_url)
    db.upgrade()
    db.close()
    return config


def _cli(config: Config, *args: str):  # type: ignore[no-untyped-def]
    command, *rest = args
    return CliRunner().invoke(main, ["token", command, "--config", str(config.source), *rest])


def _db(config: Config) -> Database:
    return Database(config.storage.database_url)


def test_create_prints_the_token_once_and_stores_only_its_hash(config: Config) -> None:
    result = _cli(config, "create", "--name", "registry", "--actor", "alice")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 43 and "\n" not in token  # 32 random bytes, URL-safe base64
    assert "shown only this once" in result.stderr
    db = _db(config)
    rows = db.fetch(select(schema.api_tokens))
    assert [(r.name, r.token_hash) for r in rows] == [
        ("registry", hashlib.sha256(token.encode()).hexdigest())]
    audit = db.fetch(select(schema.audit_log))
    assert [(a.action, a.actor, a.target) for a in audit] == [("token.create", "alice",
                                                               "registry")]
    assert json.loads(audit[0].after) == {"id": rows[0].id, "name": "registry"}
    db.close()
    database_file = Path(config.storage.state_dir) / "cemsd.db"
    stored = b"".join(p.read_bytes() for p in database_file.parent.glob("cemsd.db*"))
    assert token.encode() not in stored
    listing = _cli(config, "list")
    assert listing.exit_code == 0
    assert "registry" in listing.output and "active" in listing.output
    assert token not in listing.output


def test_tokens_are_checked_and_revoked(config: Config) -> None:
    token = _cli(config, "create", "--name", "registry").stdout.strip()
    other = _cli(config, "create", "--name", "auditor").stdout.strip()
    db = _db(config)
    assert check_token(db, token).access is Access.GRANTED
    assert check_token(db, token + "x").access is Access.UNKNOWN
    assert check_token(db, "").access is Access.UNKNOWN
    revoked = _cli(config, "revoke", "--name", "registry", "--actor", "bob",
                   "--reason", "laptop lost")
    assert revoked.exit_code == 0, revoked.output
    assert check_token(db, token).access is Access.REVOKED
    assert check_token(db, other).access is Access.GRANTED
    audit = db.fetch(select(schema.audit_log).order_by(schema.audit_log.c.id))
    assert [(a.action, a.target) for a in audit] == [
        ("token.create", "registry"), ("token.create", "auditor"), ("token.revoke", "registry")]
    assert (audit[-1].actor, audit[-1].reason) == ("bob", "laptop lost")
    used = db.fetch(select(schema.api_tokens.c.name, schema.api_tokens.c.last_used_at))
    assert {r.name: r.last_used_at is not None for r in used} == {"registry": True,
                                                                  "auditor": True}
    db.close()
    assert "revoked" in _cli(config, "list").output


def test_one_active_token_per_name(config: Config) -> None:
    assert _cli(config, "create", "--name", "registry").exit_code == 0
    again = _cli(config, "create", "--name", "registry")
    assert again.exit_code == 1
    assert "an active token named 'registry' exists" in again.stderr
    assert _cli(config, "revoke", "--name", "registry").exit_code == 0
    assert _cli(config, "create", "--name", "registry").exit_code == 0  # a replacement


def test_bad_names_and_unknown_tokens_are_refused(config: Config) -> None:
    bad = _cli(config, "create", "--name", "no spaces please")
    assert bad.exit_code == 1 and "token name" in bad.stderr
    unknown = _cli(config, "revoke", "--name", "nobody")
    assert unknown.exit_code == 1 and "no active token named 'nobody'" in unknown.stderr
    db = _db(config)
    assert db.fetch(select(schema.api_tokens)) == []
    assert db.fetch(select(schema.audit_log)) == []
    db.close()
