"""A fleet of 20 plants x 8 channels x a month of hours through a real mosquitto into a
real PostgreSQL arrives complete (its own file: `--dist loadfile` runs it beside the rest
of the fleet tests). The plants publish copies of one plant's month under their own ids:
the same records, chains and heads per plant, one plant's hashes to compute."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

import fleet_helpers as fleet
from cemsd.fleet import schema
from cemsd.fleet.store import FleetStore
from mqtt_helpers import Mosquitto

pytestmark = pytest.mark.postgres


@pytest.mark.long  # a fleet's month, the span is the point (decision 0037)
@pytest.mark.slow  # 115,200 hours through a real broker: ~45 s on a quiet 2-core machine
@pytest.mark.timeout(900)  # minutes when the machine is shared
async def test_a_fleet_of_20_plants_8_channels_a_month_arrives_complete(
        tmp_path: Path, pg_url: str) -> None:
    broker = Mosquitto(tmp_path / "broker", extra=fleet.BROKER)
    broker.start()
    try:
        await _arrives_complete(broker, pg_url)
    finally:
        broker.stop()


async def _arrives_complete(broker: Mosquitto, pg_url: str) -> None:
    first = fleet.SyntheticPlant("fleet-00")
    hours = 30 * 24
    month = first.hours(0, hours) + first.seal()
    plants = [first, *(fleet.SyntheticPlant(f"fleet-{i:02d}") for i in range(1, 20))]
    sent = [first.as_plant(month, p.plant) for p in plants]
    assert json.loads(sent[7][0][1])["plant"] == "fleet-07"
    settings = fleet.collector_settings(pg_url, broker.port)
    async with fleet.running_collector(settings) as collector:
        await fleet.publish_fleet(broker.port, {plant.plant: messages for plant, messages
                                                in zip(plants, sent, strict=True)})
        # completeness, not speed: a loaded machine may take minutes (bench_fleet.py times it)
        await fleet.until_counted(collector, "messages", sum(map(len, sent)), timeout=900)
    store = FleetStore(pg_url)
    try:
        progress = store.progress(datetime.now(UTC))
        assert [p["plant"] for p in progress] == [p.plant for p in plants]
        assert {(p["hours_received"], p["hours_missing"], p["alarms"], p["conflicts"])
                for p in progress} == {(hours, 0, 0, 0)}
        assert fleet.count(store, schema.hours) == 20 * 8 * hours
        assert fleet.count(store, schema.links) == 20 * 8 * hours  # their records: audited behind
        assert {h.verdict for h in store.db.fetch(select(schema.heads))} == {"extends"}
        partitions = store.db.fetch(text(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'fleet_hours'::regclass"))
        assert partitions[0][0] == 1  # June 2026
    finally:
        store.close()
