"""The README and the data dictionary of a verification bundle: every file, every
column (with its unit), every flag and method, and the time zone, written from the files
themselves so nothing in the bundle goes undescribed."""

from __future__ import annotations

import csv
import io
from typing import Any

from cemsd.reduction.legend import FLAGS, METHODS, method_meaning, methods_in

FILES = {
    "README.md": "this overview",
    "DATA-DICTIONARY.md": "this dictionary",
    "manifest.json": "SHA-256 of every other file (not manifest.sig), plant, period, version, "
                     "the chain range, the signing key's public half and fingerprint",
    "manifest.sig": "Ed25519 signature of manifest.json's bytes, base64",
    "report.json": "the report: parameters with sources, result, shares, every hour",
    "report.html": "the report as a page (charts, legend, hourly table)",
    "report.csv": "the report's hourly table (same as inputs/hours.csv)",
    "inputs/hours.csv": "the hourly inputs of the calculation: what verify-bundle recomputes",
    "inputs/production.csv": "adipic acid production per plant-local day",
    "inputs/parameters.json": "the calculation's parameters (each with its source)",
    "config/cemsd.toml": "the configuration in force at the end of the period",
    "data/audit.jsonl": "the audit log of the period and every configuration record, one "
                        "JSON object a line with the columns of the audit log: id, at and "
                        "at_local (UTC, plant time), actor, action, target, reason, before "
                        "and after (JSON text), host; null where empty. Entries of the "
                        "period that are sealed hash (canonical form 2) to their link",
    "data/hours.csv": "every stored hour of every channel in the period, every revision",
    "data/minutes.csv": "every stored minute of every channel in the period, every "
                        "revision: a form 2 hour's link covers the digest of its minutes",
    "data/production_days.csv": "every stored revision of the period's plant-local "
                                "production days (what the chain seals; inputs/production.csv "
                                "holds the ones the report used)",
    "data/substitutions.csv": "substituted hours (flag S) of the period, every revision",
    "data/calibrations.csv": "zero and span checks of the period and the 31 days before",
    "data/control_periods.csv": "out-of-control and calibration-overdue periods overlapping it",
    "data/maintenance.csv": "maintenance windows overlapping the period",
    "data/bypass_events.csv": "bypass and venting events overlapping the period",
    "chain/links.csv": "hash-chain links, unbroken, from the first to the last link that "
                       "seals a row of the bundle (data/hours.csv, data/substitutions.csv, "
                       "data/production_days.csv, data/audit.jsonl)",
    "chain/head.json": "the chain head when the bundle was written (pin it)",
}

COLUMNS = {
    "id": "row id in its table (the chain link's record_id)",
    "channel": "series: <device>.<channel> as polled, or <point>.<quantity> derived",
    "ts": "start of the hour, UTC",
    "value": "hourly mean of the valid minutes, in `unit` (derived mass: kg/h = kg in the "
             "hour)",
    "minimum": "lowest valid minute, in `unit`",
    "maximum": "highest valid minute, in `unit`",
    "n_valid": "valid minutes (an hour needs 45)",
    "n_expected": "minutes expected",
    "flag": "HJ 212 flag (legend below); only N is valid",
    "reason": "why the flag is not N (counts and the most frequent cause)",
    "unit": "unit of value, minimum, maximum",
    "created_at": "when the row was written, UTC",
    "audit_id": "id of the audit entry (data/audit.jsonl) of the correction or import that "
                "wrote the row; empty for a revision 0 the daemon wrote",
    "day": "plant-local day",
    "source": "where the figure came from (e.g. import:<file>)",
    "revision": "0 first; a correction is a new revision superseding the previous",
    "supersedes": "id of the revision this one replaces",
    "method": "how the value was obtained (legend below)",
    "period_kind": "missing | out_of_control: the kind of gap",
    "period_start": "first hour of the gap, UTC",
    "period_hours": "length of the gap, h",
    "capture_rate": "valid / operating hours of the window that picked the HJ 75 tier",
    "source_hours": "JSON list of the hours (UTC) the substitute was computed from",
    "kind": "zero | span (calibrations); out_of_control | calibration_overdue (periods)",
    "mode": "automatic | manual",
    "started_at": "start, UTC",
    "ended_at": "end, UTC (empty: still open)",
    "reference": "reference gas value, in the channel's unit",
    "measured": "mean of the stable readings, in the channel's unit",
    "full_scale": "the analyzer's full scale, in the channel's unit",
    "drift_pct_fs": "(measured - reference) / full scale x 100, % F.S.",
    "result": "pass | adjust | out_of_control | aborted",
    "pass_limit_pct": "drift limit for a pass, % F.S.",
    "control_limit_pct": "drift beyond which the channel is out of control, % F.S.",
    "n_readings": "readings averaged",
    "stabilisation_s": "stabilisation time, s",
    "technician": "who did it",
    "note": "free text",
    "planned_end_at": "when the maintenance window closes by itself unless stopped before, UTC",
    "opened_by": "calibration id of the failing check (empty: overdue)",
    "closed_by": "calibration id of the passing check",
    "device": "a whole device, or empty for one channel",
    "triggers": "JSON list: what showed the bypass (valve, abatement_stopped, bypass_flow, "
                "consistency)",
    "gas_volume_nm3": "gas that skipped the unit, Nm3 (dry, standard state)",
    "n2o_kg": "N2O that skipped the unit, kg (measured and estimated)",
    "n2o_estimated_kg": "of which estimated by the alternative method, kg",
    "seq": "link number, from 1, no gaps",
    "record_table": "hours | substitutions | production_days | audit_log: the sealed row's "
                    "table (its file in data/)",
    "record_id": "the sealed row's id",
    "form": "version of the canonical form, 1 or 2 (docs/TAMPER-EVIDENCE.md)",
    "record_hash": "SHA-256 of the row's canonical form, hex",
    "prev_hash": "chain_hash of the previous link (64 zeros for the first ever)",
    "chain_hash": "SHA-256(prev_hash + record_hash), hex",
    "sealed_at": "when the link was written, UTC",
    "minutes_sha256": "form 2 hour: SHA-256 of the canonical list of the minutes under it "
                      "(data/minutes.csv), also inside record_hash; empty otherwise",
    "hour": "start of the hour, plant time with offset",
    "inlet_kg": "N2O entering the abatement unit in the hour, kg (measured or substituted; "
                "empty: missing)",
    "inlet_method": "how inlet_kg was obtained (legend below)",
    "outlet_kg": "N2O leaving the unit in the hour, kg",
    "outlet_method": "how outlet_kg was obtained",
    "bypass_kg": "N2O measured skipping the unit, kg",
    "bypass_method": "how bypass_kg was measured, minutes per method",
    "vent_kg": "N2O estimated skipping the unit (unmonitored venting), kg",
    "vent_method": "the alternative method used for vent_kg",
    "unit_running": "False: the whole hour bypassed the unit (its outlet not counted)",
    "stopped": "True: the source was stopped (hour excluded)",
    "startup": "True: in the start-up test period (shown, not credited)",
    "inlet_flag": "flag of the stored inlet hour",
    "outlet_flag": "flag of the stored outlet hour",
    "bypass_events": "ids of the bypass events in the hour",
    "date": "plant-local day",
    "tonnes": "adipic acid produced that day, t",
}
FOR_TABLE = {
    "inputs/hours.csv:ts": "start of the hour, UTC, seconds since 1970-01-01",
    "report.csv:ts": "start of the hour, UTC, seconds since 1970-01-01",
    "data/substitutions.csv:ts": "the hour substituted, UTC",
    "data/substitutions.csv:value": "the substitute, in `unit`",
    "chain/links.csv:ts": "hour of the sealed row, UTC (a production day: its date at "
                          "00:00 UTC; an audit entry: its time)",
    "chain/links.csv:channel": "channel of the sealed row (`production` for a day, the "
                               "action for an audit entry)",
    "data/minutes.csv:ts": "start of the minute, UTC",
    "data/minutes.csv:value": "mean of the minute's valid readings, in `unit`",
    "data/minutes.csv:minimum": "lowest valid reading of the minute, in `unit`",
    "data/minutes.csv:maximum": "highest valid reading of the minute, in `unit`",
    "data/minutes.csv:n_valid": "valid readings in the minute",
    "data/minutes.csv:n_expected": "readings expected in the minute",
    "data/bypass_events.csv:method": "how the mass was obtained, minutes per method",
}


def column_text(file: str, column: str, tz: str) -> str:
    if column.endswith("_local") and column.removesuffix("_local") in COLUMNS:
        return f"{column.removesuffix('_local')} in plant time ({tz}), ISO 8601 with offset"
    return FOR_TABLE.get(f"{file}:{column}") or COLUMNS.get(column, "")


def data_dictionary(files: dict[str, str], report: dict[str, Any]) -> str:
    tz = report["plant"]["timezone"]
    out = ["# Data dictionary", "",
           f"Plant {report['plant']['id']}, period {report['period']['from']} to "
           f"{report['period']['to']} (plant time, {tz}); "
           f"{report['period']['from_utc']} to {report['period']['to_utc']} UTC.", "",
           "Times are stored in UTC (ISO 8601, `+00:00` or `Z`); each UTC column of data/ and "
           f"chain/ has its plant-time twin `<name>_local` ({tz}) beside it. An empty cell "
           "is a null. Numbers are written so they read back exactly (Python repr).", "",
           "## Files", ""]
    names = sorted({*files, "README.md", "DATA-DICTIONARY.md", "manifest.json", "manifest.sig"})
    out += [f"- `{name}`: {FILES.get(name, '')}" for name in names]
    for name in sorted(files):
        if name.endswith(".csv"):
            header = next(csv.reader(io.StringIO(files[name])), [])
            out += ["", f"## {name}", "", "| column | meaning |", "|---|---|"]
            out += [f"| `{c}` | {column_text(name, c, tz)} |" for c in header]
    out += ["", "## Units of the stored series (data/hours.csv)", ""]
    out += [f"- `{channel}`: {unit}" for channel, unit in _units(files)]
    out += ["", "## Flags (HJ 212-2017)", ""]
    out += [f"- `{flag}`: {text}" for flag, text in FLAGS.items()]
    out += ["", "## Methods", "", "Used in this report:", ""]
    out += [f"- `{m}`: {method_meaning(m)}" for m in methods_in(report)]
    out += ["", "All methods cemsd writes (patterns):", ""]
    out += [f"- `{pattern}`: {text.format(n='N')}" for pattern, text in METHODS]
    return "\n".join(out) + "\n"


def _units(files: dict[str, str]) -> list[tuple[str, str]]:
    rows = csv.DictReader(io.StringIO(files.get("data/hours.csv", "")))
    return sorted({(r["channel"], r["unit"]) for r in rows})


def readme(report: dict[str, Any], names: list[str], public: dict[str, str],
           scope: dict[str, Any] | None = None) -> str:
    r = report["result"]
    return "\n".join([
        f"# Verification bundle: {report['plant']['name'] or report['plant']['id']}, "
        f"{report['period']['from']} to {report['period']['to']}", "",
        f"Written by cemsd {report['software']['cemsd']}. Plant time zone "
        f"{report['plant']['timezone']}. Inputs SHA-256 `{report['inputs_sha256']}`.", "",
        *_scope_note(scope),
        f"Credited: {r['credited_co2e_t']:.6g} t CO2e "
        f"({'creditable' if r['creditable'] else 'NOT creditable'}).", "",
        "## Check it", "",
        "1. The signing key: manifest.sig is an Ed25519 signature of manifest.json by the "
        "plant's key, whose public half is in manifest.json:", "",
        f"       fingerprint {public['fingerprint']}",
        f"       public key  {public['public_key_hex']}", "",
        "   Compare the fingerprint with the one the plant publishes (GET /v1/keys, the "
        "status page) before trusting it.",
        "2. Every file's SHA-256 is in manifest.json.",
        "3. chain/links.csv: each link's chain_hash = SHA-256(prev_hash + record_hash) and "
        "prev_hash = the previous link's chain_hash; every row of data/hours.csv, "
        "data/substitutions.csv, data/production_days.csv and data/audit.jsonl with a link "
        "hashes, in the link's canonical form (1 or 2, docs/TAMPER-EVIDENCE.md), to its "
        "record_hash; a form 2 hour's hash covers the digest of its minutes, recomputed "
        "from data/minutes.csv. Compare a link with a chain head the registry pinned "
        "earlier.",
        "4. Recompute the report from inputs/ alone (quantification: report.json parameters).",
        "", "All four at once:", "",
        "    cemsd verify-bundle THIS.tar.gz --public-key <hex, base64 or PEM file> "
        "[--pinned heads.json]", "",
        "## Files", "", *[f"- `{n}`" for n in names],
        "", "DATA-DICTIONARY.md describes every column, unit, flag and method.", ""])


def _scope_note(scope: dict[str, Any] | None) -> list[str]:
    """What a bundle made away from the plant (manifest `scope`) is, and leaves out."""
    if scope is None:
        return []
    made_by = scope.get("made_by")
    return [
        f"Made by the {made_by} from what the plant published: manifest.sig is the "
        f"{made_by}'s signature (its attestation of what it received), not the plant's. The "
        "rows are proven by the plant's own chain links (chain/links.csv): pin "
        "chain/head.json against a head seen at the plant. Not here (manifest `scope`): "
        f"the rows of {', '.join(scope.get('rows_absent', [])) or 'no table'} (their links "
        "still chain), and minutes other than under the hours with bypass (an hour without "
        "minutes is checked against the minute digest its link sealed).", ""]
