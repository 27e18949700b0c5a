"""The MQTT outbox: every message waits in the database until the broker acknowledged it.

- Messages are appended in one transaction per closed period or event; the row id is the
  delivery order and the message id a consumer uses to drop QoS 1 duplicates.
- The sender takes the oldest unsent rows in id order (a bounded batch), publishes them and
  marks them sent only after the broker's PUBACK. A batch handed out counts one attempt on
  each of its rows, so a row with more than one attempt may reach a subscriber twice.
- Sent rows are pruned after a retention; unsent rows never are, whatever their age.
- Period messages remember their period, so a daemon restarting after a crash between
  storing a period and appending its messages can add what is missing (`periods_after`).

Synchronous: the daemon runs these on the store's worker thread (`store.call`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from cemsd.errors import StorageError
from cemsd.store.database import Database
from cemsd.store.schema import mqtt_outbox


@dataclass(frozen=True)
class OutboxMessage:
    topic: str
    payload: str  # a JSON object; the sender adds the row id as "id"
    qos: int = 1
    retain: bool = False
    period: str | None = None  # "minute" | "hour" for a closed period's message
    period_start: float | None = None


class PendingMessage(NamedTuple):
    id: int
    topic: str
    payload: str
    qos: int
    retain: bool


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, messages: Sequence[OutboxMessage], created_at: float) -> None:
        if not messages:
            return
        rows = [{"topic": m.topic, "payload": m.payload, "qos": m.qos, "retain": m.retain,
                 "period": m.period, "period_start": m.period_start, "created_at": created_at}
                for m in messages]
        with self._begin() as conn:
            conn.execute(insert(mqtt_outbox), rows)

    def next_batch(self, limit: int) -> list[PendingMessage]:
        """The oldest unsent messages, in order; each counts one more attempt."""
        c = mqtt_outbox.c
        with self._begin() as conn:
            rows = conn.execute(
                select(c.id, c.topic, c.payload, c.qos, c.retain)
                .where(c.sent_at.is_(None)).order_by(c.id).limit(limit)
            ).all()
            if rows:
                conn.execute(update(mqtt_outbox).where(c.id.in_([r.id for r in rows]))
                             .values(attempts=c.attempts + 1))
        return [PendingMessage(int(r.id), r.topic, r.payload, int(r.qos), bool(r.retain))
                for r in rows]

    def mark_sent(self, ids: Sequence[int], sent_at: float) -> None:
        if ids:
            with self._begin() as conn:
                conn.execute(update(mqtt_outbox).where(mqtt_outbox.c.id.in_(list(ids)))
                             .values(sent_at=sent_at))

    def unsent_count(self) -> int:
        with self._begin() as conn:
            query = select(func.count()).where(mqtt_outbox.c.sent_at.is_(None))
            return int(conn.execute(query).scalar_one())

    def last_period_start(self, period: str) -> float | None:
        """Start of the newest period with messages here (all its channels: one append)."""
        c = mqtt_outbox.c
        with self._begin() as conn:
            latest = conn.execute(select(c.period_start).where(c.period == period)
                                  .order_by(c.id.desc()).limit(1)).scalar()
        return None if latest is None else latest.timestamp()

    def periods_after(self, table: Table, after: float) -> list[dict[str, Any]]:
        """Stored periods (first revision) that started after `after`, as the closer
        hands them to listeners."""
        c = table.c
        query = (select(c.channel, c.ts, c.value, c.minimum, c.maximum, c.n_valid,
                        c.n_expected, c.flag, c.reason, c.unit, c.created_at)
                 .where(c.ts > after, c.revision == 0).order_by(c.ts, c.channel))
        with self._begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**row, "ts": row["ts"].timestamp(),
                 "created_at": row["created_at"].timestamp()} for row in rows]

    def prune_sent(self, before: float) -> int:
        """Delete messages the broker acknowledged before `before`; never an unsent one."""
        c = mqtt_outbox.c
        with self._begin() as conn:
            result = conn.execute(delete(mqtt_outbox).where(c.sent_at.is_not(None),
                                                            c.sent_at < before))
            return max(result.rowcount, 0)

    def _begin(self) -> AbstractContextManager[Connection]:
        return _transaction(self.db)


@contextmanager
def _transaction(db: Database) -> Iterator[Connection]:
    """engine.begin() with database errors turned into StorageError."""
    try:
        with db.engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StorageError(f"MQTT outbox in {db.location}: {reason}") from exc
