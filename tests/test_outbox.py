"""The MQTT outbox on SQLite and on a real PostgreSQL server: order, attempts, marking sent,
pruning that never touches an unsent row, and ids that are never reused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from cemsd.outbox import Outbox, OutboxMessage
from cemsd.store import schema
from cemsd.store.database import Database

T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture
def outbox(db: Database) -> Outbox:
    return Outbox(db)


def _messages(*names: str) -> list[OutboxMessage]:
    return [OutboxMessage(f"cemsd/p/minute/{n}", f'{{"channel":"{n}"}}') for n in names]


def _attempts(outbox: Outbox) -> dict[int, int]:
    c = schema.mqtt_outbox.c
    with outbox.db.engine.connect() as conn:
        return dict(conn.execute(select(c.id, c.attempts)).all())  # type: ignore[arg-type]


def test_batches_in_order_and_counted_as_attempts(outbox: Outbox) -> None:
    outbox.append(_messages("a", "b", "c"), T0)
    outbox.append(_messages("d"), T0 + 60)
    first = outbox.next_batch(2)
    assert [m.topic.rsplit("/", 1)[1] for m in first] == ["a", "b"]
    assert [m.id for m in first] == sorted(m.id for m in first)
    again = outbox.next_batch(10)  # nothing marked sent yet: the same rows first
    assert [m.id for m in again][:2] == [m.id for m in first] and len(again) == 4
    attempts = _attempts(outbox)
    assert [attempts[m.id] for m in again] == [2, 2, 1, 1]
    outbox.mark_sent([m.id for m in first], T0 + 120)
    assert outbox.unsent_count() == 2
    assert [m.topic.rsplit("/", 1)[1] for m in outbox.next_batch(10)] == ["c", "d"]
    assert (first[0].qos, first[0].retain, first[0].payload) == (1, False, '{"channel":"a"}')


def test_pruning_keeps_unsent_rows_whatever_their_age(outbox: Outbox) -> None:
    outbox.append(_messages("old-sent", "old-unsent", "new-sent"), T0)
    ids = [m.id for m in outbox.next_batch(10)]
    outbox.mark_sent([ids[0]], T0 + 60)
    outbox.mark_sent([ids[2]], T0 + 8 * DAY)
    assert outbox.prune_sent(T0 + 7 * DAY) == 1  # only the row sent before the cutoff
    assert outbox.prune_sent(T0 + 30 * DAY) == 1
    left = outbox.next_batch(10)
    assert [m.id for m in left] == [ids[1]] and outbox.unsent_count() == 1


def test_ids_are_never_reused_after_pruning(outbox: Outbox) -> None:
    """Consumers drop duplicates by id: a pruned id coming back would be dropped."""
    outbox.append(_messages("a", "b"), T0)
    ids = [m.id for m in outbox.next_batch(10)]
    outbox.mark_sent(ids, T0)
    assert outbox.prune_sent(T0 + 1) == 2  # the table is empty now
    outbox.append(_messages("c"), T0 + 60)
    assert [m.id for m in outbox.next_batch(10)] == [max(ids) + 1]


def test_last_period_start_ignores_events(outbox: Outbox) -> None:
    assert outbox.last_period_start("minute") is None  # MQTT newly enabled: no history
    outbox.append([OutboxMessage("cemsd/p/minute/a", "{}", period="minute",
                                 period_start=T0)], T0 + 60)
    outbox.append([OutboxMessage("cemsd/p/events/bypass", "{}")], T0 + 70)
    assert outbox.last_period_start("minute") == T0
    assert outbox.last_period_start("hour") is None
