"""The witness: every plant's chain heads and links, checked as they arrive.

A sealing pass at the edge publishes the links it added (`chain.links`), then its head
(`chain/head`, docs/MQTT.md). For each link the witness recomputes what it can with the
chain's own formulas (cemsd/chain.py): chain_hash = link_hash(prev_hash, record_hash); the
prev_hash is the chain_hash of the link before, as received earlier; an hour's
record_hash is the canonical hash of the hour the collector received (any revision).
A head must be the link of its seq as received. So a chain rebuilt at the edge from some
point (a link received before comes again with another hash), a head whose seq is lower
than an earlier head's (a cut tail) or a sealed hour that differs from the hour published
is raised at once: an alarm row (API), an ERROR log line and a metric (the caller).

Links and heads are never overwritten: the first received stays, the witness of what the
plant's chain was."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from cemsd import chain
from cemsd.fleet import schema
from cemsd.fleet.bulk import copy_in
from cemsd.fleet.messages import Head

HOURS = chain.KINDS["hours"]
REWRITTEN = "chain rewritten"
PENDING = "pending"  # an hour link whose record is not recomputed yet (audit_records)


@dataclass(frozen=True)
class Alarm:
    plant: str
    problem: str
    seq: int | None
    detail: str


def witness_links(conn: Connection, plant: str, links: list[dict[str, Any]],
                  now: datetime) -> list[Alarm]:
    """Check and keep the links of one `chain.links` message (typed by messages.parse);
    the alarms newly raised."""
    links = sorted(links, key=lambda ln: ln["seq"])
    if not links:
        return []
    known = _stored_links(conn, plant, links[0]["seq"] - 1, links[-1]["seq"])
    earliest = conn.execute(select(schema.links.c.seq).where(schema.links.c.plant == plant)
                            .order_by(schema.links.c.seq).limit(1)).scalar()
    found: list[Alarm] = []
    new: list[dict[str, Any]] = []
    for link in links:
        problems, checked = _check_link(plant, link, known, earliest)
        # the links after a rewritten one differ too: the first names where it starts
        found.extend(p for p in problems if p.problem != REWRITTEN
                     or not any(f.problem == REWRITTEN for f in found))
        if link["seq"] in known:
            continue
        new.append({**link, "plant": plant, "checked": checked, "received_at": now})
        known[link["seq"]] = link["chain_hash"]
        earliest = link["seq"] if earliest is None else min(earliest, link["seq"])
    if new:
        incoming = copy_in(conn, schema.links, new)
        conn.execute(text(f"INSERT INTO {schema.links.name} SELECT * FROM {incoming} "
                          "ON CONFLICT DO NOTHING"))
    found.extend(_settle_pending_heads(conn, plant))
    return raise_alarms(conn, found, now)


def _check_link(plant: str, link: dict[str, Any], known: dict[int, str],
                earliest: int | None) -> tuple[list[Alarm], str]:
    seq, out = link["seq"], []
    stored = known.get(seq)
    if stored is not None:
        if stored != link["chain_hash"]:
            out.append(Alarm(plant, REWRITTEN, seq,
                             f"link {seq} was received as {stored[:16]}..., now as "
                             f"{link['chain_hash'][:16]}...: the chain was rebuilt from here"))
        return out, "record"
    if chain.link_hash(link["prev_hash"], link["record_hash"]) != link["chain_hash"]:
        out.append(Alarm(plant, "chain link altered", seq,
                         "chain_hash is not SHA-256(prev_hash + record_hash)"))
    before = known.get(seq - 1, chain.GENESIS if seq == 1 else None)
    if before is not None and before != link["prev_hash"]:
        out.append(Alarm(plant, REWRITTEN, seq,
                         f"prev_hash {link['prev_hash'][:16]}... is not link {seq - 1} as "
                         f"received ({before[:16]}...)"))
    elif before is None and earliest is not None and earliest < seq:
        out.append(Alarm(plant, "chain links missing", seq,
                         f"link {seq - 1} was never received (links {earliest}.. known)"))
    return out, PENDING if link["record_table"] == "hours" else "unchecked"


def audit_records(conn: Connection, now: datetime, limit: int) -> tuple[int, list[Alarm]]:
    """Recompute the record hash of up to `limit` hour links not checked yet from the hours
    received: (links checked, alarms newly raised). Behind ingest, so a backlog of links
    costs no ingest time (the canonical hash takes ~1 ms per record)."""
    c = schema.links.c
    pending = [dict(r._mapping) for r in conn.execute(
        select(schema.links).where(c.checked == PENDING).order_by(c.plant, c.seq)
        .limit(limit))]
    found, verdicts = [], []
    for plant in sorted({ln["plant"] for ln in pending}):
        links = [ln for ln in pending if ln["plant"] == plant]
        hours = _hours_for(conn, plant, links)
        for link in links:
            problem, checked = _check_record(link, hours)
            verdicts.append({"p": plant, "s": link["seq"], "c": checked})
            if problem is not None:
                found.append(Alarm(plant, "sealed record differs", link["seq"], problem))
    if verdicts:
        conn.execute(update(schema.links).where(c.plant == bindparam("p"),
                                                c.seq == bindparam("s"))
                     .values(checked=bindparam("c")), verdicts)
    return len(verdicts), raise_alarms(conn, found, now)


def _check_record(link: dict[str, Any], hours: dict[tuple[str, datetime], list[Any]]
                  ) -> tuple[str | None, str]:
    """An hour link against the hours received for its channel and hour (any revision)."""
    received = hours.get((link["channel"], link["ts"]), [])
    if not received:
        return None, "unchecked"  # the hour never came (its alarm is the gap)
    for row in received:
        try:
            if chain.record_hash(HOURS, row, link["form"], link["minutes_sha256"]) \
                    == link["record_hash"]:
                return None, "record"
        except chain.Malformed:
            continue
    return (f"the hour {link['channel']} {chain.utc_text(link['ts'])} sealed as "
            f"{link['record_hash'][:16]}... is not any revision received "
            f"({len(received)})", "record")


def witness_head(conn: Connection, head: Head, now: datetime) -> list[Alarm]:
    """Keep a head and judge it against the links received and the heads before it."""
    c = schema.heads.c
    found: list[Alarm] = []
    if head.seq and head.message_id is not None:  # published after a longer head
        longer = conn.execute(select(c.seq, c.message_id).where(
            c.plant == head.plant, c.message_id < head.message_id, c.seq > head.seq)
            .order_by(c.seq.desc()).limit(1)).first()
        if longer is not None:
            found.append(Alarm(head.plant, "chain shortened", head.seq,
                               f"head {head.seq} (message {head.message_id}) came after head "
                               f"{longer.seq} (message {longer.message_id}): the chain's "
                               "tail was cut"))
    verdict, problem = _head_verdict(conn, head.plant, head.seq, head.hash)
    if problem is not None:
        found.append(problem)
    conn.execute(insert(schema.heads).on_conflict_do_nothing(), {
        "plant": head.plant, "seq": head.seq, "hash": head.hash, "time": head.time,
        "message_id": head.message_id,
        "verdict": "shortened" if found and verdict == "extends" else verdict,
        "received_at": now})
    return raise_alarms(conn, found, now)


def _head_verdict(conn: Connection, plant: str, seq: int, value: str
                  ) -> tuple[str, Alarm | None]:
    if seq == 0:
        return "extends", None
    c = schema.links.c
    stored = conn.execute(select(c.chain_hash).where(c.plant == plant, c.seq == seq)).scalar()
    if stored is None:
        return "pending", None  # its links are still on their way
    if stored == value:
        return "extends", None
    return "rewritten", Alarm(plant, REWRITTEN, seq,
                              f"head {seq} {value[:16]}... is not link {seq} as received "
                              f"({stored[:16]}...)")


def _settle_pending_heads(conn: Connection, plant: str) -> list[Alarm]:
    c = schema.heads.c
    found = []
    for head in conn.execute(select(c.id, c.seq, c.hash).where(
            c.plant == plant, c.verdict == "pending")).all():
        verdict, problem = _head_verdict(conn, plant, head.seq, head.hash)
        if verdict != "pending":
            conn.execute(update(schema.heads).where(c.id == head.id).values(verdict=verdict))
        if problem is not None:
            found.append(problem)
    return found


def raise_alarms(conn: Connection, alarms: list[Alarm], now: datetime) -> list[Alarm]:
    """Keep each finding once (by digest); the ones not raised before."""
    new = []
    for alarm in alarms:
        digest = hashlib.sha256(repr((alarm.plant, alarm.problem, alarm.seq, alarm.detail))
                                .encode()).hexdigest()
        inserted = conn.execute(insert(schema.alarms).on_conflict_do_nothing().returning(
            schema.alarms.c.id), {"plant": alarm.plant, "problem": alarm.problem,
                                  "seq": alarm.seq, "detail": alarm.detail, "digest": digest,
                                  "raised_at": now}).first()
        if inserted is not None:
            new.append(alarm)
    return new


def _stored_links(conn: Connection, plant: str, first: int, last: int) -> dict[int, str]:
    c = schema.links.c
    return {int(r.seq): r.chain_hash for r in conn.execute(
        select(c.seq, c.chain_hash).where(c.plant == plant, c.seq.between(first, last)))}


def _hours_for(conn: Connection, plant: str, links: list[dict[str, Any]]
               ) -> dict[tuple[str, datetime], list[Any]]:
    if not links:
        return {}
    c = schema.hours.c
    wanted = {(ln["channel"], ln["ts"]) for ln in links}
    out: dict[tuple[str, datetime], list[Any]] = {}
    rows = conn.execute(select(schema.hours).where(
        c.plant == plant, c.ts.between(min(t for _, t in wanted), max(t for _, t in wanted)),
        tuple_(c.channel, c.ts).in_(list(wanted)))).all()
    for row in rows:
        out.setdefault((row.channel, row.ts), []).append(SimpleNamespace(**row._mapping))
    return out
