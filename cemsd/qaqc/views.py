"""Text for people: the calibration table, audit lines and `cemsd status`, in plant time.

The commands print these by default; `--json`/`--format json` prints the data instead.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from cemsd.periods import local_label
from cemsd.supervisor import failing_tasks

CALIBRATION_HEADER = (f"{'id':<5} {'started (plant time)':<22}  {'channel':<24} {'kind':<4} "
                      f"{'mode':<9} {'drift % F.S.':>12}  {'pass/control ±%':<15} "
                      f"{'result':<14} technician")


def fmt_drift(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def calibration_line(r: dict[str, Any]) -> str:
    limits = f"{r['pass_limit_pct']:g}/{r['control_limit_pct']:g}"
    return (f"#{r['id']:<4} {r['started']:<22}  {r['channel']:<24} {r['kind']:<4} "
            f"{r['mode']:<9} {fmt_drift(r['drift_pct_fs']):>12}  {limits:<15} "
            f"{r['result']:<14} {r['technician']}")


def plant_times(values: Any, tz: ZoneInfo) -> Any:
    """A record's `*_at` epoch seconds as plant-time labels (records store epochs)."""
    if not isinstance(values, dict):
        return values
    return {k: local_label(v, tz) if k.endswith("_at") and isinstance(v, int | float)
            and not isinstance(v, bool) else v for k, v in values.items()}


def audit_line(entry: dict[str, Any]) -> str:
    """`#12 2026-05-01T08:01+08:00 zhao maintenance.start analyzer: filter change`."""
    line = f"#{entry['id']:<4} {entry['at']}  {entry['actor']:<16} {entry['action']:<22}"
    line += f" {entry['target'] or '-'}"
    if entry["reason"]:
        line += f": {entry['reason']}"
    changed = _changes(entry["before"], entry["after"])
    return f"{line}  [{changed}]" if changed else line


def _changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    if not isinstance(after, dict):
        return ""
    before = before if isinstance(before, dict) else {}
    keys = [k for k in after if k != "id" and (k not in before or before[k] != after[k])]
    if before:
        return ", ".join(f"{k}: {_short(before.get(k))} -> {_short(after[k])}" for k in keys)
    return ", ".join(f"{k}={_short(after[k])}" for k in keys if after[k] is not None)


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def status_lines(status: dict[str, Any]) -> list[str]:
    """`cemsd status` for a person: what runs, what is flagged, what the regulator gets."""
    devices = status.get("devices", {})
    up = sum(1 for d in devices.values() if d["up"])
    lines = [f"plant time {status['now']}", f"devices: {up}/{len(devices)} up"]
    for name, d in sorted(devices.items()):
        state = "unknown" if d["up"] is None else "up" if d["up"] else "DOWN"
        lines.append(f"  {name:<24} {state:<7} {d['last_error'] or ''}".rstrip())
    windows = status.get("windows", [])
    lines.append(f"open windows: {len(windows) or 'none'}")
    lines += [f"  {w['flag']}  {w['reason']} (since {w['since']}"
              + (f", closes {w['until']})" if w.get("until") else ")") for w in windows]
    for check in status.get("checks", []):
        lines.append(f"calibrating {check['channel']}: {check_text(check)}")
    due = status.get("calibration_due", {})
    if due:
        lines.append("calibration due:")
        lines += [f"  {channel:<24} {at}" for channel, at in sorted(due.items())]
    uplinks = status.get("uplinks", [])
    if uplinks:
        lines.append("HJ 212 uplinks:")
        lines += [f"  {u['platform']:<16} {uplink_text(u)}" for u in uplinks]
    return lines + fault_lines(status)


def fault_lines(status: dict[str, Any]) -> list[str]:
    """What needs a person now and shows nowhere else: the broker refusing the credentials,
    supervised tasks down or crash-looping, rows the hash chain refuses to seal."""
    lines = []
    refused = status.get("outputs", {}).get("mqtt_refused")
    if refused:
        lines.append(f"MQTT broker REFUSES the credentials: {refused}")
    lines += [f"task {line}" for line in failing_tasks(status.get("tasks", {}))]
    chain = status.get("chain", {})
    if chain.get("refused"):
        lines.append(f"hash chain: {chain['refused']} record(s) refused for sealing "
                     "(run `cemsd verify`):")
        lines += [f"  {r['table']} {r['channel']} {r['ts'] or '?'} revision {r['revision']}: "
                  f"{r['why']}" for r in chain["first"]]
    return lines


def check_text(check: dict[str, Any]) -> str:
    if check["phase"] == "averaging":
        where = f"averaging, {check['readings']} of {check['needed']} readings"
    else:
        where = f"{check['phase']}, {check['seconds_left']:.0f} s left"
    return f"{where}; {check['current']}"


def uplink_text(u: dict[str, Any]) -> str:
    state = "connected" if u["connected"] else "DISCONNECTED"
    parts = [f"{u['endpoint']} {state}", f"backlog {u['backlog']} periods"]
    if u["oldest_unacknowledged"]:
        parts.append(f"oldest unacknowledged {u['oldest_unacknowledged']}")
    parts.append(f"last acknowledgement {u['last_acknowledged'] or 'never'}")
    if not u["connected"] and u["last_error"]:
        parts.append(u["last_error"])
    return ", ".join(parts)
