"""`cemsd verify-bundle`: everything a verifier can check offline, each check named.

- files: every file against manifest.json (changed, missing, not listed);
- signature: manifest.sig against the plant's public key (given, or the one the manifest
  names, whose fingerprint must then be compared with the plant's);
- chain: chain/links.csv unbroken (no seq missing, each prev_hash the previous chain_hash,
  each chain_hash = SHA-256(prev_hash + record_hash));
- rows: each row of data/hours.csv and data/substitutions.csv with a link hashes to it,
  and every link of the period has its row;
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cemsd import chain, signing
from cemsd.reduction.bundle import (
    LINKS,
    MANIFEST,
    SIGNATURE,
    Bundle,
    file_problems,
    read_bundle,
    recompute,
)
from cemsd.store.schema import UTCDateTime

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


def _rows(bundle: Bundle, links: list[dict[str, str]]) -> Check:
    check = Check("rows")
    by_record = {(link["record_table"], link["record_id"]): link for link in links}
    period = bundle.manifest.get("period", {})
    t0, t1 = (_utc(period.get("from_utc", "")), _utc(period.get("to_utc", "")))
    seen: set[tuple[str, str]] = set()
    unsealed = 0
    last = links[-1] if links else None
    for name, kind in chain.KINDS.items():
        rows = csv.DictReader(io.StringIO(bundle.files.get(f"data/{name}.csv", b"").decode()))
        for line, row in enumerate(rows, start=2):
            link = by_record.get((name, row["id"]))
            if link is None:
                if _sealed_by(row, last):
                    check.problems.append(
                        f"data/{name}.csv line {line} (id {row['id']}, {row['channel']} "
                        f"{row['ts']}): no chain link, though link {last['seq']} "  # type: ignore[index]
                        "sealed a later hour after it was stored (a link removed?)")
                else:
                    unsealed += 1
                continue
            seen.add((name, row["id"]))
            if chain.record_hash(kind, _record(kind, row)) != link["record_hash"]:
                check.problems.append(f"data/{name}.csv line {line} (id {row['id']}, "
                                      f"{row['channel']} {row['ts']}): changed, does not hash "
                                      f"to chain link {link['seq']}")
    for (table, record), link in by_record.items():
        inside = t0 is not None and t1 is not None and t0 <= _utc(link["ts"]) < t1
        if table in chain.KINDS and inside and (table, record) not in seen:
            check.problems.append(f"data/{table}.csv: row id {record} ({link['channel']} "
                                  f"{link['ts']}) of chain link {link['seq']} is missing")
    if unsealed:
        check.notes.append(f"{unsealed} row(s) not sealed yet (no link to check them against)")
    return check


def _sealed_by(row: dict[str, str], last: dict[str, str] | None) -> bool:
    """Sealing takes every record of an hour at once, in hour order: a row stored before
    the last link was sealed, of an hour not after that link's, must have a link."""
    return last is not None and _utc(row["ts"]) <= _utc(last["ts"]) and \
        _utc(row["created_at"]) <= _utc(last["sealed_at"])


def _record(kind: chain.SealedKind, row: dict[str, str]) -> SimpleNamespace:
    values: dict[str, Any] = {}
    for name in kind.fields:
        text = row.get(name, "")
        if text == "":
            values[name] = None
        elif isinstance(kind.table.c[name].type, UTCDateTime):
            values[name] = _utc(text)
        else:
            values[name] = text
    return SimpleNamespace(**values)


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
    """Chain heads as GET /v1/chain/head answers them: one object, a list, or JSON lines;
    entries without seq and chain_hash are skipped."""
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except ValueError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [("pinned ", h) for h in items
            if isinstance(h, dict) and "seq" in h and "chain_hash" in h]


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
