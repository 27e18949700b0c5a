"""The chain head kept where a database writer cannot reach back.

After every sealing pass the daemon writes the newest link (seq, hash, time) to
`<state_dir>/chain-head.json` (atomically: temporary file, fsync, rename) and logs it, so
the journal holds every head too; it also publishes it (MQTT, retained) and puts it in
every verification bundle. A registry keeps the heads it saw. `cemsd verify` checks the
chain against the head file and against pinned heads (`--pinned FILE`, a JSON list of
{seq, hash, time}): a head that is not on the chain, or a chain shorter than a head,
means the chain was rewritten or cut. The daemon refuses to start on a database whose
chain does not hold the recorded head (emptied, replaced), unless told to accept it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, make_url, select

from cemsd import chain
from cemsd.errors import CemsdError, StorageError
from cemsd.store import schema
from cemsd.store.database import Database, open_existing

log = logging.getLogger(__name__)

HEAD_FILE = "chain-head.json"


class PinError(CemsdError):
    """A head file or pinned-heads file that cannot be read."""


@dataclass(frozen=True)
class Pin:
    """A chain head recorded outside the database: link `seq` had chain_hash `hash`."""

    seq: int
    hash: str
    time: str | None  # when it was the head (UTC text), if known
    source: str  # where it was recorded, for the report

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "time": self.time}


def head_pin(link: Any | None, source: str = "database") -> Pin:
    """The head of the chain as a pin (seq 0 and the genesis value while nothing is sealed)."""
    if link is None:
        return Pin(0, chain.GENESIS, None, source)
    return Pin(int(link.seq), link.chain_hash, chain.utc_text(link.sealed_at), source)


def head_path(state_dir: Path) -> Path:
    return state_dir / HEAD_FILE


def write_head(state_dir: Path, pin: Pin, database: str) -> None:
    """Replace the head file atomically: a crash leaves the old head or the new one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({**pin.as_json(), "database": database}, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".chain-head.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, head_path(state_dir))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_head(state_dir: Path) -> Pin | None:
    """The head the daemon recorded last, or None if it never recorded one."""
    path = head_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PinError(f"{path}: cannot read: {exc.strerror}") from None
    return _pin(_json(text, path), f"head file {path}", path)


def load_pins(path: Path) -> list[Pin]:
    """Heads a registry recorded: a JSON list of {seq, hash, time} (or the API's
    `chain_hash` for `hash`); every problem names the file and the entry."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PinError(f"{path}: cannot read: {exc.strerror}") from None
    entries = _json(text, path)
    if not isinstance(entries, list):
        raise PinError(f"{path}: expected a JSON list of {{seq, hash, time}}")
    return [_pin(entry, f"pinned head {i + 1} of {path}", path)
            for i, entry in enumerate(entries)]


def _json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PinError(f"{path}: not JSON: {exc}") from None


def _pin(entry: Any, source: str, path: Path) -> Pin:
    if not isinstance(entry, dict):
        raise PinError(f"{source}: expected an object with seq and hash")
    seq, value = entry.get("seq"), entry.get("hash", entry.get("chain_hash"))
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PinError(f"{source}: seq must be a whole number >= 0, not {seq!r}")
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise PinError(f"{source}: hash must be 64 lower-case hex digits, not {value!r}")
    time = entry.get("time", entry.get("sealed_at"))  # sealed_at: as the API serves it
    if time is not None and not isinstance(time, str):
        raise PinError(f"{source}: time must be text, not {time!r}")
    return Pin(seq, value, time, source)


def check_pins(db: Database, pins: list[Pin]) -> list[chain.Break]:
    """Each pinned head must be on the chain: link `seq` present with that chain_hash."""
    wanted = sorted({p.seq for p in pins if p.seq > 0})
    c = schema.chain.c
    stored = {int(r.seq): r.chain_hash
              for r in db.fetch(select(c.seq, c.chain_hash).where(c.seq.in_(wanted)))}
    length = db.fetch(select(c.seq).order_by(c.seq.desc()).limit(1))
    last = int(length[0].seq) if length else 0
    out = []
    for pin in pins:
        if pin.seq == 0:
            continue
        found = stored.get(pin.seq)
        if found is None:
            problem, detail = (("chain shorter than a recorded head",
                                f"{pin.source} is link {pin.seq} ({pin.time}); the chain "
                                f"ends at link {last} (its tail was cut or it was emptied)")
                               if pin.seq > last else
                               ("recorded head missing", f"{pin.source}: link {pin.seq} "
                                                         "is not in the chain"))
        elif found != pin.hash:
            problem, detail = ("recorded head not on the chain",
                               f"{pin.source}: link {pin.seq} had chain_hash "
                               f"{pin.hash[:16]}... ({pin.time}), now {found[:16]}... "
                               "(the chain was rewritten)")
        else:
            continue
        out.append(chain.Break(pin.seq, "chain", None, "", None, problem, detail))
    return out


def pin_time(pin: Pin) -> float | None:
    try:
        return None if pin.time is None else datetime.fromisoformat(pin.time).timestamp()
    except ValueError:
        return None


# --- a database the daemon knew --------------------------------------------------------------


class UnknownDatabase(CemsdError):
    """The database does not hold the chain head this state directory recorded."""


def check_known_database(url: str, state_dir: Path, accept_new: bool) -> Pin | None:
    """Before anything is written: refuse a database whose chain lacks the recorded head
    (emptied or replaced, e.g. a zero-byte file recreated empty) unless `accept_new`.
    Returns the recorded head that was given up (accepted), else None."""
    recorded = read_head(state_dir)
    if recorded is None or recorded.seq == 0:
        return None
    try:
        probe = None if _empty_sqlite_file(url) else open_existing(url)
    except StorageError:  # the file is gone
        probe = None
    if probe is None:  # not even opened: a connection would write into an empty file
        known, location = False, url
    else:
        try:
            location = probe.location
            known = (inspect(probe.engine).has_table("chain")
                     and not check_pins(probe, [recorded]))
        finally:
            probe.close()
    if known:
        return None
    if accept_new:
        return recorded
    raise UnknownDatabase(
        f"{location} does not hold the chain head recorded in {head_path(state_dir)} "
        f"(link {recorded.seq}, {recorded.hash[:16]}..., {recorded.time}): the database was "
        "emptied or replaced. Nothing was started. If this is intended (a new database), "
        "start with --accept-new-database")


def _empty_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    path = Path(parsed.database or "")
    return (parsed.get_backend_name() == "sqlite" and path.is_file()
            and path.stat().st_size == 0)


def accept_new_database(db: Database, state_dir: Path, given_up: Pin, now: float) -> Path:
    """The operator accepted a database without the recorded head: say so loudly, audit
    it, and keep the old head file beside the new one (renamed) for whoever checks."""
    from cemsd.records import audit

    kept = state_dir / f"{HEAD_FILE}.given-up-{int(now)}"
    os.replace(head_path(state_dir), kept)
    log.warning("new database accepted: the chain head recorded before is not in it", extra={
        "database": db.location, "recorded_seq": given_up.seq, "recorded_hash": given_up.hash,
        "kept_as": str(kept)})
    audit(db, now, "operator", "chain.new_database", db.location,
          "started with --accept-new-database", given_up.as_json(), {"kept_as": str(kept)})
    return kept
