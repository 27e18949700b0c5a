"""The verification bundle: one archive for the third-party verifier.

    manifest.json            SHA-256 of every other file, the plant, the period, the version
    report.json/.html/.csv   the report
    inputs/hours.csv         the hourly inputs of the calculation (what is recomputed)
    inputs/production.csv    daily production
    inputs/parameters.json   the parameters
    data/*.csv               the period's stored hours (every channel, every revision),
                             substitutions, calibrations, control periods, maintenance
                             windows, bypass events
    data/audit.jsonl         the audit log of the period, and every configuration record
    config/cemsd.toml        the configuration in force at the end of the period
    chain/head.json          the hash chain's head when the bundle was made {seq, hash, time}
                             (a pin for `cemsd verify --pinned`, docs/TAMPER-EVIDENCE.md)

`cemsd report --from-bundle FILE` checks every file against the manifest (a changed,
missing or extra file is named and refused), then recomputes the report from inputs/ alone
and compares it with report.json.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select

from cemsd import __version__
from cemsd.chain import head as chain_head
from cemsd.chainhead import head_pin
from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.qaqc.records import CONFIG_ACTIONS
from cemsd.reduction.html import to_html
from cemsd.reduction.report import build_report, calculation, hours_from_rows, to_csv, to_json
from cemsd.store import schema
from cemsd.store.database import Database

MANIFEST = "manifest.json"


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
                  path: Path) -> dict[str, Any]:
    report = build_report(db, config, t0, t1, now)
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
        files[f"data/{table.name}.csv"] = _table_csv(db, table, t0, t1)
    encoded = {name: text.encode() for name, text in files.items()}
    manifest = {
        "format": 1, "cemsd": __version__, "plant": report["plant"], "period": report["period"],
        "inputs_sha256": report["inputs_sha256"],
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(encoded.items())},
    }
    encoded[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in sorted(encoded.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            archive.addfile(info, io.BytesIO(data))
    return manifest


def open_bundle(path: Path) -> Bundle:
    """Read a bundle and check it: every file must be in the manifest with its hash."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            files = {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                     for m in archive.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from None
    if MANIFEST not in files:
        raise BundleError(f"{path}: no {MANIFEST}")
    manifest = json.loads(files[MANIFEST])
    listed = manifest.get("files", {})
    problems = [f"{name}: changed (SHA-256 differs from the manifest)"
                for name, digest in listed.items()
                if name in files and hashlib.sha256(files[name]).hexdigest() != digest]
    problems += [f"{name}: missing" for name in listed if name not in files]
    problems += [f"{name}: not in the manifest" for name in files
                 if name not in listed and name != MANIFEST]
    if problems:
        raise BundleError(f"{path} cannot be trusted:\n" + "\n".join(sorted(problems)))
    return Bundle(files, manifest)


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


def _table_csv(db: Database, table: Table, t0: float, t1: float) -> str:
    """Rows of the period: hours by start; windows that overlap it; recent calibrations."""
    c = table.c
    if "ts" in c:
        where = (c.ts >= t0) & (c.ts < t1)
    elif table is schema.calibrations:
        where = (c.started_at >= t0 - CALIBRATIONS_BEFORE_S) & (c.started_at < t1)
    else:
        where = (c.started_at < t1) & (c.ended_at.is_(None) | (c.ended_at > t0))
    rows = db.fetch(select(table).where(where).order_by(c.id))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.c.keys())
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


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
    return "".join(json.dumps({k: _cell(v) for k, v in row._mapping.items()},
                              ensure_ascii=False) + "\n" for row in rows)


def _config_in_force(db: Database, config: Config, t1: float) -> str:
    a = schema.audit_log.c
    rows = db.fetch(select(schema.audit_log).where(a.action.in_(CONFIG_ACTIONS), a.at < t1)
                    .order_by(a.id.desc()).limit(1))
    if rows and rows[0].after:
        return json.loads(rows[0].after)["text"]
    return Path(config.source).read_text(encoding="utf-8")
