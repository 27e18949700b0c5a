"""The fleet collector with a real mosquitto and a real PostgreSQL: records arrive complete
and once, a differing re-send is a conflict, the witness raises a rebuilt or cut chain, a
plant offline for a week back-fills without gap or duplicate, tokens see their plants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cemsd.fleet import schema
from cemsd.fleet.store import FleetStore
from fleet_helpers import (
    SyntheticPlant,
    collector_settings,
    publish,
    running_collector,
    until_counted,
)
from mqtt_helpers import Mosquitto

pytestmark = pytest.mark.postgres

BROKER = ("allow_anonymous true", "max_inflight_messages 1000")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "broker", extra=BROKER)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def count(store: FleetStore, table, **where: str) -> int:  # type: ignore[no-untyped-def]
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    return int(store.db.fetch(query)[0][0])


async def test_records_arrive_once_and_a_differing_resend_is_a_conflict(
        broker: Mosquitto, pg_url: str) -> None:
    plants = [SyntheticPlant(f"plant-{i}") for i in range(2)]
    sent = [p.hours(0, 48) + p.seal() for p in plants]
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        for plant, messages in zip(plants, sent, strict=True):
            await publish(broker.port, messages, plant.plant)
        await until_counted(collector, "hours", 2 * 8 * 48)
        await until_counted(collector, "heads", 2)
        for plant, messages in zip(plants, sent, strict=True):  # the same again: nothing new
            await publish(broker.port, messages, plant.plant)
        await until_counted(collector, "duplicates", 2 * 8 * 48)
        changed = plants[0].hour_row(5, 3, value=99.0)
        topic, payload, _ = plants[0].topics.period_messages("hour", [changed])[0].topic, \
            plants[0].topics.period_messages("hour", [changed])[0].payload, False
        await publish(broker.port, [(topic, payload, False)] * 2, "resender")
        await until_counted(collector, "conflicts", 1)
        await until_counted(collector, "messages", sum(map(len, sent)) * 2 + 2)
    store = FleetStore(pg_url)
    try:
        assert count(store, schema.hours) == 2 * 8 * 48
        assert count(store, schema.conflicts) == 1  # the second identical re-send: same one
        kept = store.db.fetch(select(schema.hours.c.value).where(
            schema.hours.c.plant == "plant-0", schema.hours.c.channel == "dev-3.n2o",
            schema.hours.c.ts == plants[0].rows[5 * 8 + 3]["ts"]))
        assert kept[0].value == plants[0].rows[5 * 8 + 3]["value"] != 99.0
        assert count(store, schema.alarms) == 0
        assert {h.verdict for h in store.db.fetch(select(schema.heads))} == {"extends"}
        assert count(store, schema.links, checked="record") == 2 * 8 * 48
    finally:
        store.close()
