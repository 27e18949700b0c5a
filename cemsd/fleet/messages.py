"""What the collector reads from the edge's topics (docs/MQTT.md): each message parsed
into a typed record, or a `Rejected` naming the topic and what is wrong (logged, counted,
acknowledged: a malformed message must not block the ones behind it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cemsd.chain import parse_text, utc_text
from cemsd.mqtt import CHAIN_LINKS_EVENT
from cemsd.reduction.bypass import BYPASS_MINUTES_EVENT
from cemsd.store import schema


@dataclass(frozen=True)
class Hour:
    plant: str
    row: dict[str, Any]  # the fleet_hours columns but received_at


@dataclass(frozen=True)
class Event:
    plant: str
    kind: str
    at: datetime
    message_id: int
    data: str  # JSON


@dataclass(frozen=True)
class Minutes:
    """The minutes under an hour with bypass: kept as rows; the event (its unit, hour and
    count) tells a central report which hours it has (docs/decisions/0210)."""

    plant: str
    event: Event
    rows: list[dict[str, Any]]  # the fleet_minutes columns but received_at


@dataclass(frozen=True)
class Links:
    plant: str
    links: list[dict[str, Any]]


@dataclass(frozen=True)
class Head:
    plant: str
    seq: int
    hash: str
    time: datetime | None
    message_id: int | None  # the edge's outbox id; None: the copy sent straight on connect


@dataclass(frozen=True)
class Status:
    plant: str
    state: str


@dataclass(frozen=True)
class Rejected:
    topic: str
    why: str


Record = Hour | Event | Minutes | Links | Head | Status | Rejected


def subscriptions(root: str) -> list[str]:
    """The topic filters of every plant under `root` (the edge's `<root>/<plant>` prefix)."""
    return [f"{root}/+/hour/+", f"{root}/+/events/+", f"{root}/+/chain/head",
            f"{root}/+/status"]


def parse(topic: str, payload: bytes) -> Record:
    try:
        body = json.loads(payload)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return _record(topic.split("/"), body)
    except (ValueError, KeyError, TypeError) as exc:
        return Rejected(topic, f"{type(exc).__name__}: {exc}")


def _record(levels: list[str], body: dict[str, Any]) -> Record:
    plant = _text(body, "plant")
    if levels[-1] == "status":
        return Status(plant, _text(body, "state"))
    if levels[-2:] == ["chain", "head"]:
        return Head(plant, _whole(body, "seq"), _hex(body, "hash"), _time(body.get("time")),
                    _whole(body, "id") if "id" in body else None)
    if levels[-2] == "hour":
        return Hour(plant, _hour(body))
    if levels[-2] == "events":
        kind = _text(body, "kind")
        if kind == CHAIN_LINKS_EVENT:
            return Links(plant, [_link(doc) for doc in body["data"]["links"]])
        if kind == BYPASS_MINUTES_EVENT:
            return _minutes(plant, body)
        return _event(plant, kind, body, body.get("data"))
    raise ValueError("not a topic the collector reads")


def _event(plant: str, kind: str, body: dict[str, Any], data: Any) -> Event:
    return Event(plant, kind, utc_time(body.get("at")), _whole(body, "id"),
                 json.dumps(data, sort_keys=True, separators=(",", ":")))


def _minutes(plant: str, body: dict[str, Any]) -> Minutes:
    """`bypass.minutes`: each minute typed as the edge's minutes table types it."""
    data = body["data"]
    rows = []
    for doc in data["minutes"]:
        row = vars(parse_text(schema.minutes, doc, f"minute {doc.get('id')}"))
        if row["id"] is None or row["n_valid"] is None or row["created_at"] is None:
            raise ValueError(f"minute {doc.get('id')}: id, n_valid and created_at needed")
        rows.append({**{k: v for k, v in row.items() if k != "id"}, "plant": plant,
                     "revision": row["revision"] or 0, "edge_id": row["id"]})
    summary = {"unit": _text(data, "unit"), "hour": utc_text(utc_time(data["hour"])),
               "minutes": len(rows)}
    return Minutes(plant, _event(plant, BYPASS_MINUTES_EVENT, body, summary), rows)


def _hour(body: dict[str, Any]) -> dict[str, Any]:
    written = body.get("written_at") or body["created_at"]  # older edges: whole seconds
    return {
        "plant": _text(body, "plant"), "channel": _text(body, "channel"),
        "ts": utc_time(body["start"]), "revision": int(body.get("revision") or 0),
        "value": _number(body.get("value")), "minimum": _number(body.get("minimum")),
        "maximum": _number(body.get("maximum")), "n_valid": _whole(body, "n_valid"),
        "n_expected": _whole(body, "n_expected"), "flag": _text(body, "flag"),
        "reason": body.get("reason"), "unit": _text(body, "unit"),
        "created_at": utc_time(written), "supersedes": body.get("supersedes"),
        "audit_id": body.get("audit_id"), "message_id": body.get("id"),
    }


def _link(doc: dict[str, Any]) -> dict[str, Any]:
    """A link as chain.link_document wrote it, typed as fleet_links keeps it."""
    hashes = {key: _hex(doc, key) for key in ("record_hash", "prev_hash", "chain_hash")}
    minutes = doc.get("minutes_sha256")
    return {"seq": _whole(doc, "seq"), "record_table": _text(doc, "table"),
            "record_id": _whole(doc, "record_id"), "channel": _text(doc, "channel"),
            "ts": utc_time(doc["ts"]), "form": _whole(doc, "form"), **hashes,
            "minutes_sha256": None if minutes is None else _hex(doc, "minutes_sha256"),
            "sealed_at": utc_time(doc["sealed_at"])}


def _hex(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{key} must be 64 lower-case hex digits, not {value!r}")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be non-empty text, not {value!r}")
    return value


def _whole(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be a whole number, not {value!r}")
    return value


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, not {value!r}")
    return float(value)


def _time(text: Any) -> datetime | None:
    return None if text is None else utc_time(text)


def utc_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 time, not {text!r}")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without an offset: {text!r}")
    return moment.astimezone(UTC)
