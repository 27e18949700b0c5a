"""The edge's channel, QA/QC and bypass tables of a plant, rebuilt from the events it
published (docs/MQTT.md), so the fleet API lists them in the edge's row shapes
(docs/decisions/0207).

Each table is one `EventTable`: the event kind that carries its rows, where an event's
data holds them (the data itself, or a list under a key), and the row's key. Events are
read in the order the edge sent them (its outbox id); a later document with the same key
completes the row, as the edge's UPDATE did (a maintenance window's or a control period's
end, a bypass event's figures). Values are typed by the edge table's columns: epoch seconds
or ISO text to UTC times, lists to JSON text, a missing column to its default."""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Column, Float, Integer, Table, Text, func, select

from cemsd.daemon import CHANNELS_EVENT
from cemsd.fleet import schema as fleet
from cemsd.fleet.messages import utc_time
from cemsd.fleet.store import FleetStore
from cemsd.qaqc.calibration import CONTROL_PERIOD_EVENT
from cemsd.qaqc.substitution import SUBSTITUTION_EVENT
from cemsd.reduction.bypass import BYPASS_EVENT
from cemsd.store import schema
from cemsd.store.schema import UTCDateTime

log = logging.getLogger(__name__)
KEPT_TABLES = 32  # plants x tables whose rebuilt rows are kept (a few MB each at most)
CALIBRATION_EVENT, MAINTENANCE_EVENT = "calibration", "maintenance"  # cemsd/qaqc/


@dataclass(frozen=True)
class EventTable:
    table: Table  # the edge table whose rows the events carry
    kind: str  # the event kind
    rows_under: str | None = None  # the data holds a list of rows under this key; None: a row
    key: tuple[str, ...] = ("id",)  # a later document with this key completes the row


CHANNELS = EventTable(schema.channels, CHANNELS_EVENT, "channels", ("name",))
CALIBRATIONS = EventTable(schema.calibrations, CALIBRATION_EVENT)
MAINTENANCE = EventTable(schema.maintenance, MAINTENANCE_EVENT)
CONTROL_PERIODS = EventTable(schema.control_periods, CONTROL_PERIOD_EVENT, "rows")
SUBSTITUTIONS = EventTable(schema.substitutions, SUBSTITUTION_EVENT, "rows",
                           ("channel", "ts", "revision"))
BYPASS_EVENTS = EventTable(schema.bypass_events, BYPASS_EVENT)


class RebuiltRows:
    """The rebuilt rows per plant and table, kept while no event of that kind came since:
    events are only ever added (or a month's partition dropped), so their count and newest
    id tell whether a kept copy is current, in one index-only query."""

    def __init__(self, store: FleetStore, size: int = KEPT_TABLES) -> None:
        self.store = store
        self.size = size
        self._kept: OrderedDict[tuple[str, str], tuple[Any, list[SimpleNamespace]]] = \
            OrderedDict()
        self._lock = threading.Lock()  # the API's routes run in worker threads

    def rows(self, plant: str, spec: EventTable) -> list[SimpleNamespace]:
        c = fleet.events.c
        mark = tuple(self.store.db.fetch(select(func.count(), func.max(c.message_id)).where(
            c.plant == plant, c.kind == spec.kind))[0])
        key = (plant, spec.kind)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] == mark:
                self._kept.move_to_end(key)
                return kept[1]
        rows = rebuilt_rows(self.store, plant, spec)  # at least the events counted
        with self._lock:
            self._kept[key] = (mark, rows)
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return rows


def rebuilt_rows(store: FleetStore, plant: str, spec: EventTable) -> list[SimpleNamespace]:
    """The plant's rows of `spec.table` as the edge stores them, in no particular order."""
    c = fleet.events.c
    events = store.db.fetch(select(c.data, c.message_id).where(
        c.plant == plant, c.kind == spec.kind).order_by(c.message_id))
    rows = merged_rows(spec, ((json.loads(e.data), e.message_id) for e in events), plant)
    return [SimpleNamespace(**{column.name: row.get(column.name)
                               for column in spec.table.columns}) for row in rows]


def merged_rows(spec: EventTable, events: Iterable[tuple[Any, int]], plant: str
                ) -> list[dict[str, Any]]:
    """The rows the events' data carry (data and message id, in the order sent), typed
    by the edge table's columns and completed by later documents with the same key; the
    central copy inserts them too (cemsd/fleet/reports.py, docs/decisions/0213)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for data, message_id in events:
        try:
            typed = [_typed(spec.table, document) for document in _documents(data, spec)]
        except (ValueError, TypeError, OverflowError) as exc:  # left out, said why
            log.warning("fleet: an event's rows cannot be read", extra={
                "plant": plant, "kind": spec.kind, "message_id": message_id,
                "error": f"{type(exc).__name__}: {exc}"})
            continue
        for row in typed:
            key = tuple(row.get(name) for name in spec.key)
            merged[key] = {**merged.get(key, column_defaults(spec.table)), **row}
    return list(merged.values())


def _documents(data: Any, spec: EventTable) -> list[dict[str, Any]]:
    documents = [data] if spec.rows_under is None else \
        data.get(spec.rows_under) if isinstance(data, dict) else None
    if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
        raise ValueError(f"not {'a row' if spec.rows_under is None else 'a list of rows'}")
    return documents


@functools.cache
def column_defaults(table: Table) -> dict[str, Any]:
    """What the edge's database fills in when the insert leaves a column out (typed; per
    table once: every merged row and every hashed row of the central copy asks)."""
    return {column.name: _value(column, column.server_default.arg)  # type: ignore[attr-defined]
            for column in table.columns if column.server_default is not None}


def _typed(table: Table, document: dict[str, Any]) -> dict[str, Any]:
    return {name: _value(table.c[name], value) for name, value in document.items()
            if name in table.c}


def _value(column: Column[Any], value: Any) -> Any:
    if value is None:
        return None
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return utc_time(value) if isinstance(value, str) else datetime.fromtimestamp(value, UTC)
    if isinstance(kind, Float):
        return float(value)
    if isinstance(kind, Integer):
        return int(value)
    if isinstance(kind, Text) and not isinstance(value, str):  # a JSON column's list
        return json.dumps(value)
    return value
