"""The verification bundle: one archive a third-party verifier checks offline.

    README.md                what is here and how to check it (`cemsd verify-bundle`)
    DATA-DICTIONARY.md       every file and column, units, flags, methods, the time zone
    manifest.json            SHA-256 of every other file, the plant, the period, the
                             version, the chain range and the signing key's public half
    manifest.sig             Ed25519 signature of manifest.json (base64), plant key
    report.json/.html/.csv   the report
    inputs/hours.csv         the hourly inputs of the calculation (what is recomputed)
    inputs/production.csv    daily production
    inputs/parameters.json   the parameters
    data/*.csv               the period's stored hours and minutes (every channel, every
                             revision), substitutions, production days, calibrations,
                             control periods, maintenance windows, bypass events; each
                             time in UTC with its plant-time column (`<name>_local`) beside
                             it, every field the canonical forms hash
    data/audit.jsonl         the audit log of the period, and every configuration record
                             (a null is a JSON null)
    chain/links.csv          the hash-chain links from the first to the last link sealing
                             a record of the bundle, unbroken: every sealed row of
                             data/hours.csv (with its minutes from data/minutes.csv),
                             data/substitutions.csv, data/production_days.csv and
                             data/audit.jsonl (entries of the period) hashes to its link
    config/cemsd.toml        the configuration in force at the end of the period
    chain/head.json          the hash chain's head when the bundle was made {seq, hash, time}
                             (a pin for `cemsd verify --pinned`, docs/TAMPER-EVIDENCE.md)

`cemsd report --from-bundle FILE` checks every file against the manifest (a changed,
missing or extra file is named and refused), then recomputes the report from inputs/ alone
and compares it with report.json; `cemsd verify-bundle` (verify.py) also checks the
signature, the rows against the chain and pinned chain heads.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, func, select

from cemsd import __version__, signing
from cemsd.chain import head as chain_head
from cemsd.chainhead import head_pin
from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.periods import local_label
from cemsd.records import CONFIG_ACTIONS
from cemsd.reduction.dictionary import data_dictionary, readme
from cemsd.reduction.html import to_html
from cemsd.reduction.report import build_report, calculation, hours_from_rows, to_csv, to_json
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LINKS = "chain/links.csv"
MINUTES_FILE = "data/minutes.csv"
DAY_S = 86400.0
LOCAL = "_local"  # suffix of the plant-time column beside each UTC time


class BundleError(CemsdError):
    """A bundle that cannot be trusted or read."""


@dataclass
class Bundle:
    files: dict[str, bytes]
    manifest: dict[str, Any]

    def text(self, name: str) -> str:
        return self.files[name].decode()

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.text("report.json"))


def export_bundle(db: Database, config: Config, t0: float, t1: float, now: float,
                  path: Path, scope: dict[str, Any] | None = None) -> dict[str, Any]:
    """`scope`: what the bundle holds of the plant's records when not all (the manifest's
    `scope`, a central bundle: cemsd/fleet/reports.py); None: everything, as at the edge."""
    report = build_report(db, config, t0, t1, now)
    key = signing.load_or_create(config.storage.state_dir)
    tz = config.plant.tz
    files = {
        "report.json": to_json(report), "report.html": to_html(report),
        "report.csv": to_csv(report),
        "inputs/hours.csv": to_csv(report),
        "inputs/production.csv": _production_csv(report),
        "inputs/parameters.json": json.dumps(report["parameters"], indent=1, sort_keys=True),
        "config/cemsd.toml": _config_in_force(db, config, t1),
        "data/audit.jsonl": _audit(db, t0, t1),
        "chain/head.json": json.dumps(head_pin(chain_head(db)).as_json(), sort_keys=True),
    }
    for table in (schema.hours, schema.substitutions, schema.calibrations,
                  schema.control_periods, schema.maintenance, schema.bypass_events):
        files[f"data/{table.name}.csv"] = _table_csv(db, table, t0, t1, tz)
    days = _production_days(db, t0, t1, tz)
    files["data/production_days.csv"] = _rows_csv(schema.production_days, days, tz)
    links = chain_links(db, t0, t1, [int(d.id) for d in days])
    files[LINKS] = _rows_csv(schema.chain, links, tz)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent) as minutes:
        minutes_sha256 = _write_minutes(db, t0, t1, tz, minutes)
        files.update(_explained({**files, MINUTES_FILE: _rows_csv(schema.minutes, [], tz)},
                                report, key, scope))
        encoded = {name: text.encode() for name, text in files.items()}
        manifest = _manifest(report, links, key, encoded, {MINUTES_FILE: minutes_sha256})
        if scope is not None:
            manifest["scope"] = scope
        encoded[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
        encoded[SIGNATURE] = base64.b64encode(key.sign(encoded[MANIFEST])) + b"\n"
        with tarfile.open(path, "w:gz") as archive:
            for name, data in sorted(encoded.items()):
                _add(archive, name, len(data), io.BytesIO(data))
            _add(archive, MINUTES_FILE, minutes.tell(), minutes)
    return manifest


def _manifest(report: dict[str, Any], links: list[Any], key: Any, encoded: dict[str, bytes],
              digests: dict[str, str]) -> dict[str, Any]:
    public = key.public_key()
    return {
        "format": 2, "cemsd": __version__, "plant": report["plant"], "period": report["period"],
        "inputs_sha256": report["inputs_sha256"],
        "chain": {"first_seq": int(links[0].seq) if links else None,
                  "last_seq": int(links[-1].seq) if links else None,
                  "last_chain_hash": links[-1].chain_hash if links else None},
        "signing": {k: v for k, v in signing.public_info(public).items()
                    if k != "public_key_pem"},
        "files": dict(sorted({**{name: hashlib.sha256(data).hexdigest()
                                 for name, data in encoded.items()}, **digests}.items())),
    }


def _add(archive: tarfile.TarFile, name: str, size: int, data: IO[bytes]) -> None:
    data.seek(0)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    archive.addfile(info, data)


def _write_minutes(db: Database, t0: float, t1: float, tz: Any, out: IO[bytes]) -> str:
    """data/minutes.csv, every minute of [t0, t1) (every revision), written to `out` a
    channel and a day at a time in (channel, ts, revision, id) order, so that neither the
    writer nor a verifier holds a period's minutes in memory; returns its SHA-256."""
    m = schema.minutes.c
    in_period = (m.ts >= t0) & (m.ts < t1)
    channels = [r[0] for r in db.fetch(select(m.channel).where(in_period).distinct()
                                       .order_by(m.channel))]
    digest = hashlib.sha256()
    chunks = itertools.chain([_rows_csv(schema.minutes, [], tz)], (
        _rows_csv(schema.minutes, db.fetch(
            select(schema.minutes).where(m.channel == channel, m.ts >= start,
                                         m.ts < min(start + DAY_S, t1))
            .order_by(m.ts, m.revision, m.id)), tz, header=False)
        for channel in channels for start in _steps(t0, t1, DAY_S)))
    for text in chunks:
        data = text.encode()
        digest.update(data)
        out.write(data)
    return digest.hexdigest()


def _steps(t0: float, t1: float, step: float) -> Iterator[float]:
    start = t0
    while start < t1:
        yield start
        start += step


def read_bundle(path: Path) -> Bundle:
    """A bundle's files, unchecked."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            files = {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                     for m in archive.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from None
    if MANIFEST not in files:
        raise BundleError(f"{path}: no {MANIFEST}")
    try:
        manifest = json.loads(files[MANIFEST])
    except ValueError as exc:
        raise BundleError(f"{path}: {MANIFEST} is not JSON: {exc}") from None
    return Bundle(files, manifest)


def file_problems(bundle: Bundle) -> list[str]:
    """Files that differ from the manifest: changed, missing, or not listed."""
    files, listed = bundle.files, bundle.manifest.get("files", {})
    problems = [f"{name}: changed (SHA-256 differs from the manifest)"
                for name, digest in listed.items()
                if name in files and hashlib.sha256(files[name]).hexdigest() != digest]
    problems += [f"{name}: missing" for name in listed if name not in files]
    problems += [f"{name}: not in the manifest" for name in files
                 if name not in listed and name not in (MANIFEST, SIGNATURE)]
    return sorted(problems)


def open_bundle(path: Path) -> Bundle:
    """Read a bundle and check it: every file must be in the manifest with its hash."""
    bundle = read_bundle(path)
    problems = file_problems(bundle)
    if problems:
        raise BundleError(f"{path} cannot be trusted:\n" + "\n".join(problems))
    return bundle


def recompute(bundle: Bundle) -> dict[str, Any]:
    """The calculation again, from the bundle's inputs alone."""
    rows = list(csv.DictReader(io.StringIO(bundle.text("inputs/hours.csv"))))
    production = {date.fromisoformat(r["date"]): float(r["tonnes"])
                  for r in csv.DictReader(io.StringIO(bundle.text("inputs/production.csv")))}
    params = json.loads(bundle.text("inputs/parameters.json"))
    return calculation(hours_from_rows(rows), production, params)


def _production_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "tonnes"])
    for day in report["production"]["days"]:
        writer.writerow([day["date"], repr(day["tonnes"])])
    return out.getvalue()


CALIBRATIONS_BEFORE_S = 31 * 86400  # the checks the period's first hours rest on


def _table_csv(db: Database, table: Table, t0: float, t1: float, tz: Any) -> str:
    """Rows of the period: hours by start; windows that overlap it; recent calibrations."""
    c = table.c
    if "ts" in c:
        where = (c.ts >= t0) & (c.ts < t1)
    elif table is schema.calibrations:
        where = (c.started_at >= t0 - CALIBRATIONS_BEFORE_S) & (c.started_at < t1)
    else:
        where = (c.started_at < t1) & (c.ended_at.is_(None) | (c.ended_at > t0))
    return _rows_csv(table, db.fetch(select(table).where(where).order_by(c.id)), tz)


def _rows_csv(table: Table, rows: list[Any], tz: Any, header: bool = True) -> str:
    """Rows as stored, each UTC time followed by its plant-time column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    times = {c.name for c in table.c if isinstance(c.type, UTCDateTime)}
    names = [c.name for c in table.c]
    if header:
        writer.writerow([h for c in names for h in ([c, c + LOCAL] if c in times else [c])])
    for row in rows:
        cells = []
        for name, value in zip(names, row, strict=True):
            cells.append(_cell(value))
            if name in times:
                cells.append(local_label(value.timestamp(), tz) if value is not None else "")
        writer.writerow(cells)
    return out.getvalue()


def chain_links(db: Database, t0: float, t1: float, production_ids: list[int]) -> list[Any]:
    """Every link from the first to the last one sealing a record of the bundle (hours and
    substitutions of [t0, t1), audit entries written in it, the period's production days),
    so the bundle's rows can be checked and the links follow unbroken."""
    c = schema.chain.c
    in_period = c.record_table.in_(["hours", "substitutions", "audit_log"]) & \
        (c.ts >= t0) & (c.ts < t1)
    days = (c.record_table == "production_days") & c.record_id.in_(production_ids)
    bounds = db.fetch(select(func.min(c.seq), func.max(c.seq)).where(in_period | days))
    first, last = bounds[0] if bounds else (None, None)
    if first is None:
        return []
    return db.fetch(select(schema.chain).where(c.seq >= first, c.seq <= last).order_by(c.seq))


def period_days(t0: float, t1: float, tz: Any) -> tuple[date, date]:
    """The first and last plant-local day [t0, t1) touches."""
    return (datetime.fromtimestamp(t0, tz).date(),
            datetime.fromtimestamp(max(t0, t1 - 1), tz).date())


def _production_days(db: Database, t0: float, t1: float, tz: Any) -> list[Any]:
    """Every stored revision of the period's plant-local days (what the links seal)."""
    first, last = period_days(t0, t1, tz)
    d = schema.production_days.c
    return db.fetch(select(schema.production_days).where(d.day >= first, d.day <= last)
                    .order_by(d.id))


def _explained(files: dict[str, str], report: dict[str, Any], key: Any,
               scope: dict[str, Any] | None) -> dict[str, str]:
    """README.md and DATA-DICTIONARY.md, describing the files they sit beside."""
    public = signing.public_info(key.public_key())
    return {"README.md": readme(report, sorted([*files, MANIFEST, SIGNATURE]), public, scope),
            "DATA-DICTIONARY.md": data_dictionary(files, report)}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


def _audit(db: Database, t0: float, t1: float) -> str:
    a = schema.audit_log.c
    rows = db.fetch(select(schema.audit_log).where(
        ((a.at >= t0) & (a.at < t1)) | (a.action.in_(CONFIG_ACTIONS) & (a.at < t1)))
        .order_by(a.id))
    return "".join(json.dumps({k: None if v is None else _cell(v)
                               for k, v in row._mapping.items()},
                              ensure_ascii=False) + "\n" for row in rows)


def _config_in_force(db: Database, config: Config, t1: float) -> str:
    a = schema.audit_log.c
    rows = db.fetch(select(schema.audit_log).where(a.action.in_(CONFIG_ACTIONS), a.at < t1)
                    .order_by(a.id.desc()).limit(1))
    if rows and rows[0].after:
        return json.loads(rows[0].after)["text"]
    return Path(config.source).read_text(encoding="utf-8")
