"""`cemsd verify-bundle`: everything a verifier can check offline, each check named.

- files: every file against manifest.json (changed, missing, not listed);
- signature: manifest.sig against the plant's public key (given, or the one the manifest
  names, whose fingerprint must then be compared with the plant's);
- chain: chain/links.csv unbroken (no seq missing, each prev_hash the previous chain_hash,
  each chain_hash = SHA-256(prev_hash + record_hash));
- rows: each row of data/hours.csv (with its minutes, data/minutes.csv),
  data/substitutions.csv, data/production_days.csv and data/audit.jsonl with a link hashes
  to it in the link's canonical form (1 or 2, cemsd/chain.py), and every link of the
  period has its row; a changed minute names its hour ("minutes changed");
- a bundle whose manifest names a `scope` (a central bundle, cemsd/fleet/reports.py) holds
  less than the edge's: the links of tables it names `rows_absent` need no row (they still
  chain), and with `minutes: bypass` an hour without any minute in the bundle is checked
  against the minute digest its link sealed (the minutes stay at the edge);
- pinned: chain heads pinned earlier (and chain/head.json) agree with the links;
- recompute: the report again from inputs/ alone equals report.json.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cemsd import chain, signing
from cemsd.reduction.bundle import (
    LINKS,
    MANIFEST,
    MINUTES_FILE,
    SIGNATURE,
    Bundle,
    file_problems,
    period_days,
    read_bundle,
    recompute,
)
from cemsd.store import schema

HEAD_FILE = "chain/head.json"


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(path: Path, public_key: str | None = None, pinned: str | None = None
                  ) -> list[Check]:
    bundle = read_bundle(path)
    links = _links(bundle)
    return [Check("files", file_problems(bundle)), _signature(bundle, public_key),
            _chain(bundle, links), _rows(bundle, links), _pinned(bundle, links, pinned),
            _recompute(bundle)]


def _signature(bundle: Bundle, public_key: str | None) -> Check:
    check = Check("signature")
    named = bundle.manifest.get("signing", {})
    if SIGNATURE not in bundle.files:
        check.problems.append(f"{SIGNATURE}: missing (the manifest is not signed)")
        return check
    try:
        signature = base64.b64decode(bundle.files[SIGNATURE].strip(), validate=True)
        key = signing.load_public(public_key or named.get("public_key_hex", ""))
    except (binascii.Error, signing.SigningKeyError) as exc:
        check.problems.append(f"{SIGNATURE}: {exc}")
        return check
    given = signing.fingerprint(key)
    made_by = (bundle.manifest.get("scope") or {}).get("made_by")
    if made_by is not None:
        check.notes.append(f"signed by the {made_by}: its attestation of what it received; "
                           "the rows rest on the plant's chain (pin chain/head.json against "
                           "a head seen at the plant)")
    if public_key is None:
        check.notes.append(f"checked with the key the manifest names ({given}): compare it "
                           "with the plant's published fingerprint, or pass --public-key")
    elif named.get("fingerprint") not in (None, given):
        check.problems.append(f"wrong key: the bundle was signed by {named['fingerprint']}, "
                              f"the key given is {given}")
    if not signing.verifies(key, signature, bundle.files[MANIFEST]) and not check.problems:
        check.problems.append(f"{MANIFEST}: changed after signing (the signature of "
                              f"{given} does not match it)")
    return check


def _links(bundle: Bundle) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(bundle.files.get(LINKS, b"").decode())))


def _chain(bundle: Bundle, links: list[dict[str, str]]) -> Check:
    check = Check("chain")
    expected = bundle.manifest.get("chain", {})
    seqs = [int(link["seq"]) for link in links]
    if [expected.get("first_seq"), expected.get("last_seq")] != \
            [seqs[0] if seqs else None, seqs[-1] if seqs else None]:
        check.problems.append(f"{LINKS}: links {seqs[:1]}..{seqs[-1:]} but the manifest names "
                              f"{expected.get('first_seq')}..{expected.get('last_seq')}")
    for before, link in itertools.pairwise(links):
        seq, prev = int(link["seq"]), int(before["seq"])
        if seq != prev + 1:
            missing = f"{prev + 1}" if seq == prev + 2 else f"{prev + 1}-{seq - 1}"
            check.problems.append(f"chain link {missing} missing (the links jump from {prev} "
                                  f"to {seq})")
        elif link["prev_hash"] != before["chain_hash"]:
            check.problems.append(f"chain link {seq}: prev_hash is not link {prev}'s chain_hash")
    for link in links:
        if link["chain_hash"] != chain.link_hash(link["prev_hash"], link["record_hash"]):
            check.problems.append(f"chain link {link['seq']}: chain_hash is not "
                                  "SHA-256(prev_hash + record_hash)")
    if not links:
        check.notes.append("no sealed record in the period (sealed after "
                           "[storage] finalise_after_hours)")
    return check


SEALED_FILES = {"hours": "data/hours.csv", "substitutions": "data/substitutions.csv",
                "production_days": "data/production_days.csv", "audit_log": "data/audit.jsonl"}


@dataclass
class Sealed:
    """A row of the bundle a link may seal: where it is written, and the row typed."""

    table: str
    label: str  # file, line, id and what the row is (channel and hour, day, action)
    row: Any


def _rows(bundle: Bundle, links: list[dict[str, str]]) -> Check:
    """Every sealed row of the bundle recomputed (chain.check_record, the canonical forms
    of cemsd/chain.py) and compared with its link; every link of the period has its row.
    Hours are checked as their minutes are read, one hour at a time."""
    check = Check("rows")
    parsed = _parsed_links(links, check)
    records = _sealed_rows(bundle, check)
    last = parsed[max(parsed)] if parsed else None
    by_record = {(ln.record_table, ln.record_id): ln for ln in parsed.values()}
    checked: dict[str, int] = defaultdict(int)
    unlinked: dict[str, int] = defaultdict(int)
    waiting: dict[tuple[str, datetime], list[tuple[Sealed, Any]]] = defaultdict(list)
    for record in records:
        link = by_record.get((record.table, record.row.id))
        if link is None:
            if _sealed_by(record, last):
                check.problems.append(f"{record.label}: no chain link, though link "
                                      f"{last.seq} sealed a later hour after it was stored "  # type: ignore[union-attr]
                                      "(a link removed?)")
            else:
                unlinked[record.table] += 1
            continue
        checked[record.table] += 1
        if record.table == "hours":
            waiting[(record.row.channel, record.row.ts)].append((record, link))
        else:
            _compare(check, record, link, {})
    minutes = 0
    for key, under in _minutes_by_hour(bundle, [r.row for r in records if r.table == "hours"],
                                       check):
        minutes += len(under)
        for record, link in waiting.pop(key, []):
            _compare(check, record, link, {key: under})
    scope = bundle.manifest.get("scope") or {}
    sealed_digest = 0
    for record, link in itertools.chain.from_iterable(waiting.values()):  # no minutes
        if scope.get("minutes") == "bypass" and _fields_sealed(record, link):
            sealed_digest += 1
        else:
            _compare(check, record, link, {})
    check.problems += _rows_missing(bundle, by_record, {(r.table, r.row.id) for r in records},
                                    check)
    check.notes.append("checked against their links: " + ", ".join(
        f"{checked[t]} {t}" for t in SEALED_FILES) + f" ({minutes} minutes under the hours)")
    if sealed_digest:
        check.notes.append(f"{sealed_digest} hours without their minutes in this bundle "
                           f"(made by the {scope.get('made_by')}): checked against the "
                           "minute digest their links sealed")
    form1 = sum(by_record[("hours", r.row.id)].form == 1 for r in records
                if r.table == "hours" and ("hours", r.row.id) in by_record)
    if form1:
        check.notes.append(f"{form1} hours sealed in canonical form 1: their seal does not "
                           "cover their minutes")
    if unlinked:
        check.notes.append("without a link in the bundle (not sealed yet, or sealed before "
                           "its first link): " + ", ".join(f"{n} {t}" for t, n in
                                                           unlinked.items()))
    return check


def _compare(check: Check, record: Sealed, link: Any,
             under: dict[tuple[str, datetime], list[Any]]) -> None:
    finding = chain.check_record(chain.KINDS[record.table], record.row, link, under)
    if finding is not None:
        check.problems.append(_finding(record, link, *finding))


def _minutes_by_hour(bundle: Bundle, hours: list[Any], check: Check
                     ) -> Iterator[tuple[tuple[str, datetime], list[Any]]]:
    """The minutes of data/minutes.csv under each of the hours, read one hour at a time
    (the file is in (channel, ts) order); a malformed minute, or one apart from the rest of
    its hour, is named (its hour then fails its digest)."""
    offsets, wanted = chain.hour_offsets(hours), {(h.channel, h.ts) for h in hours}
    done: set[tuple[str, datetime]] = set()
    key, run = None, list[Any]()
    text = io.TextIOWrapper(io.BytesIO(bundle.files.get(MINUTES_FILE, b"")), encoding="utf-8")
    for line, values in enumerate(csv.DictReader(text), start=2):
        where = f"{MINUTES_FILE} line {line}"
        try:
            minute = chain.parse_text(schema.minutes, values, where)
        except chain.Malformed as exc:
            check.problems.append(str(exc))
            continue
        here = chain.hour_key(minute, offsets)
        if here not in wanted or here is None:
            continue
        if here != key:
            if key is not None:
                yield key, run
                done.add(key)
            if here in done:
                check.problems.append(f"{where}: a minute of {here[0]} "
                                      f"{chain.utc_text(here[1])} apart from the hour's other "
                                      "minutes (the file is not in (channel, ts) order)")
            key, run = here, []
        run.append(minute)
    if key is not None:
        yield key, run


def _fields_sealed(record: Sealed, link: Any) -> bool:
    """The hour hashes to its form 2 link with the minute digest the link sealed."""
    kind, row = chain.KINDS[record.table], record.row
    return link.form == 2 and link.minutes_sha256 is not None and \
        chain.record_hash(kind, row, 2, link.minutes_sha256) == link.record_hash and \
        (kind.link_channel(row), kind.link_time(row)) == (link.channel, link.ts)


def _finding(record: Sealed, link: Any, problem: str, detail: str) -> str:
    if problem == "record changed":
        return f"{record.label}: changed, does not hash to chain link {link.seq}"
    if problem == "minutes changed":
        return (f"{record.label}: minutes changed ({MINUTES_FILE}), does not hash to chain "
                f"link {link.seq}: {detail}")
    return f"{record.label}: {problem} (chain link {link.seq}): {detail}"


def _parsed_links(links: list[dict[str, str]], check: Check) -> dict[int, Any]:
    out = {}
    for line, link in enumerate(links, start=2):
        try:
            parsed = chain.parse_text(schema.chain, link, f"{LINKS} line {line}")
        except chain.Malformed as exc:
            check.problems.append(str(exc))
            continue
        out[parsed.seq] = parsed
    return out


def _sealed_rows(bundle: Bundle, check: Check) -> list[Sealed]:
    out = []
    for table, name in SEALED_FILES.items():
        kind = chain.KINDS[table]
        for line, values in _lines(bundle, name, check):
            where = f"{name} line {line} (id {values.get('id')}, {_what(table, values)})"
            try:
                out.append(Sealed(table, where, chain.parse_text(kind.table, values, where)))
            except chain.Malformed as exc:
                check.problems.append(str(exc))
    return out


def _lines(bundle: Bundle, name: str, check: Check) -> list[tuple[int, dict[str, Any]]]:
    """(line number, values) of a CSV file, or of JSON lines (data/audit.jsonl)."""
    text = bundle.files.get(name, b"").decode()
    if not name.endswith(".jsonl"):
        return list(enumerate(csv.DictReader(io.StringIO(text)), start=2))
    out = []
    for line, entry in enumerate(text.splitlines(), start=1):
        try:
            out.append((line, dict(json.loads(entry))))
        except (ValueError, TypeError):
            check.problems.append(f"{name} line {line}: not a JSON object")
    return out


def _what(table: str, values: dict[str, Any]) -> str:
    if table == "production_days":
        return f"day {values.get('day')}"
    if table == "audit_log":
        return f"{values.get('action')} at {values.get('at')}"
    return f"{values.get('channel')} {values.get('ts')}"


def _sealed_by(record: Sealed, last: Any) -> bool:
    """Sealing takes every record of an hour at once, in hour order: an hour or a
    substitution stored before the last link was sealed, of an hour not after that link's,
    must have a link. (Production days and audit entries are sealed when written: a row
    sealed before the bundle's first link has no link here.)"""
    row = record.row
    return last is not None and chain.KINDS[record.table].periodic and \
        row.ts <= last.ts and row.created_at <= last.sealed_at


def _rows_missing(bundle: Bundle, by_record: dict[tuple[str, int], Any],
                  seen: set[tuple[str, int]], check: Check) -> list[str]:
    """Links of the bundle's scope whose row is not in the bundle (but of the tables whose
    rows the manifest's scope leaves out: noted)."""
    period, plant = bundle.manifest.get("period", {}), bundle.manifest.get("plant", {})
    absent = set((bundle.manifest.get("scope") or {}).get("rows_absent", []))
    try:
        t0, t1 = _utc(period["from_utc"]), _utc(period["to_utc"])
        first, last = period_days(t0.timestamp(), t1.timestamp(), ZoneInfo(plant["timezone"]))
    except (KeyError, TypeError, ValueError, AttributeError, ZoneInfoNotFoundError):
        return [f"{MANIFEST}: no readable period (from_utc, to_utc) and plant timezone to "
                "check the rows' links against"]
    out, left_out = [], defaultdict(int)
    for (table, record), link in by_record.items():
        if table == "production_days":
            inside = first <= link.ts.date() <= last
        else:
            inside = table in SEALED_FILES and t0 <= link.ts < t1
        if inside and table in absent:
            left_out[table] += (table, record) not in seen
        elif inside and (table, record) not in seen:
            out.append(f"{SEALED_FILES[table]}: row id {record} ({link.channel} "
                       f"{chain.utc_text(link.ts)}) of chain link {link.seq} is missing")
    for table, count in left_out.items():
        check.notes.append(f"{count} links of {table} without their rows: the manifest's "
                           "scope leaves these rows out (they stay at the plant); the links "
                           "still chain")
    return out


def _utc(text: str) -> Any:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _pinned(bundle: Bundle, links: list[dict[str, str]], pinned: str | None) -> Check:
    check = Check("pinned")
    heads = _heads(Path(pinned).read_text(encoding="utf-8")) if pinned else []
    if HEAD_FILE in bundle.files:
        heads += [(f"{HEAD_FILE} ", h) for _, h in _heads(bundle.files[HEAD_FILE].decode())]
    by_seq = {int(link["seq"]): link for link in links}
    for source, head in heads:
        link = by_seq.get(int(head["seq"]))
        if link is None:
            check.notes.append(f"{source}head {head['seq']}: outside the bundle's links")
        elif link["chain_hash"] != head["chain_hash"]:
            check.problems.append(f"{source}head {head['seq']}: pinned chain_hash "
                                  f"{head['chain_hash'][:16]}... differs from link "
                                  f"{link['chain_hash'][:16]}...")
        else:
            check.notes.append(f"{source}head {head['seq']}: matches")
    if not heads:
        check.notes.append("no pinned heads given (--pinned)")
    return check


def _heads(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Chain heads as GET /v1/chain/head answers them, or as pins {seq, hash, time} are
    written (chain/head.json, the head file, MQTT): one object, a list, or JSON lines;
    entries without seq and chain_hash (or hash) are skipped."""
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except ValueError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    heads = [{**h, "chain_hash": h.get("chain_hash", h.get("hash"))} for h in items
             if isinstance(h, dict)]
    return [("pinned ", h) for h in heads if "seq" in h and h["chain_hash"] is not None]


def _recompute(bundle: Bundle) -> Check:
    check = Check("recompute")
    report = json.loads(bundle.files["report.json"])
    again = recompute(bundle)
    if again["inputs_sha256"] != report["inputs_sha256"]:
        check.problems.append("inputs/ do not hash to report.json's inputs_sha256")
    if again["result"] != report["result"]:
        differ = sorted(k for k in report["result"] if again["result"].get(k) !=
                        report["result"][k])
        check.problems.append(f"the recomputed report differs from report.json: {differ}")
    return check
