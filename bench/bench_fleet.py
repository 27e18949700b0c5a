"""The fleet collector on this machine: a real mosquitto, a real PostgreSQL, the collector
in-process, a synthetic fleet published straight to the broker (the edge's own payloads and
chain formulas, tests/fleet_helpers.py).

Figures: hourly records ingested per second through the broker (and, as the baseline of
the same run, straight into the store without the broker: the ratio is MQTT's share), the
witness's record audit per second, the end-to-end lag of a live hour (publish to commit,
median), and the query time of one plant-year and of one month of the whole fleet.
Usage:
    .venv/bin/python bench/bench_fleet.py [--plants 20] [--channels 8] [--days 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info  # noqa: E402

from cemsd.fleet import schema  # noqa: E402
from cemsd.fleet.messages import parse  # noqa: E402
from cemsd.fleet.store import FleetStore  # noqa: E402
from fleet_helpers import (  # noqa: E402
    BROKER,
    START,
    SyntheticPlant,
    collector_settings,
    publish,
    publish_fleet,
    running_collector,
)
from helpers import PostgresServer  # noqa: E402
from mqtt_helpers import Mosquitto, wait_until  # noqa: E402


async def through_broker(url: str, port: int, sent: list[list[tuple[str, str, bool]]],
                         plants: list[SyntheticPlant]) -> dict[str, float]:
    total = sum(map(len, sent))
    hours = sum(len(p.rows) for p in plants)
    async with running_collector(collector_settings(url, port)) as collector:
        t0 = time.perf_counter()
        await publish_fleet(port, {p.plant: m for p, m in zip(plants, sent, strict=True)})
        published = time.perf_counter() - t0
        await wait_until(lambda: collector.counts["messages"] >= total, 1800, "all stored")
        stored = time.perf_counter() - t0
        await wait_until(lambda: collector.counts["records_checked"] >= hours, 1800, "audit")
        audited = time.perf_counter() - t0
        lags = []
        for i, plant in enumerate(plants):  # a live hour: written now, then published
            row = {**plant.hour_row(10_000 + i, 0), "created_at": time.time()}
            message = plant.topics.period_messages("hour", [row])[0]
            before = collector.counts["hours"]
            t = time.perf_counter()
            await publish(port, [(message.topic, message.payload, False)], f"live-{i}")
            await wait_until(lambda b=before: collector.counts["hours"] > b, 30, "live hour")
            lags.append(time.perf_counter() - t)
    return {"published_s": published, "stored_s": stored, "audited_s": audited,
            "rate": hours / stored, "audit_rate": hours / audited,
            "lag_ms": statistics.median(lags) * 1000}


def straight_in(url: str, sent: list[list[tuple[str, str, bool]]], hours: int) -> float:
    """The baseline: the same messages parsed and stored in batches, no broker."""
    store = FleetStore(url)
    store.upgrade()
    t0 = time.perf_counter()
    for messages in sent:
        records = [parse(t, p.encode()) for t, p, _ in messages]
        for i in range(0, len(records), 2000):
            store.ingest(records[i:i + 2000], datetime.now(UTC))
    elapsed = time.perf_counter() - t0
    store.close()
    return hours / elapsed


def queries(url: str, plants: int) -> dict[str, float]:
    """A plant-year (8 channels, 8760 hours) stored beside the fleet, then read back."""
    store = FleetStore(url)
    year = SyntheticPlant("plant-year")
    messages = year.hours(0, 365 * 24)
    records = [parse(t, p.encode()) for t, p, _ in messages]
    for i in range(0, len(records), 5000):
        store.ingest(records[i:i + 5000], datetime.now(UTC))
    c = schema.hours.c
    start = datetime.fromtimestamp(START, UTC)
    month_end = datetime(start.year, start.month + 1, 1, tzinfo=UTC)
    out = {}
    for name, query in (
            ("plant_year_ms", select(schema.hours).where(c.plant == "plant-year")
             .order_by(c.ts, c.channel)),
            ("fleet_month_ms", select(schema.hours).where(c.ts >= start, c.ts < month_end)
             .order_by(c.plant, c.ts, c.channel))):
        times, rows = [], 0
        for _ in range(5):
            t = time.perf_counter()
            rows = len(store.db.fetch(query))
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1000
        out[name.replace("_ms", "_rows")] = rows
    out["rows"] = store.db.fetch(select(func.count()).select_from(schema.hours))[0][0]
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plants", type=int, default=20)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    print(machine_info())
    t = time.perf_counter()
    plants = [SyntheticPlant(f"plant-{i:03d}", channels=args.channels)
              for i in range(args.plants)]
    sent = [p.hours(0, args.days * 24) + p.seal() for p in plants]
    hours = sum(len(p.rows) for p in plants)
    print(f"fleet: {args.plants} plants x {args.channels} channels x {args.days} days = "
          f"{hours} hours, {sum(map(len, sent))} messages (generated in "
          f"{time.perf_counter() - t:.1f} s)")
    pg = PostgresServer()
    pg.start()
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="bench-fleet-")), extra=BROKER)
    broker.start()
    try:
        baseline = straight_in(pg.create_database("baseline"), sent, hours)
        url = pg.create_database("fleet")
        result = asyncio.run(through_broker(url, broker.port, sent, plants))
        result.update(queries(url, args.plants))
    finally:
        broker.stop()
        pg.stop()
    print(f"ingest through the broker: {result['rate']:.0f} hours/s (all stored "
          f"{result['stored_s']:.1f} s after the first publish; publishing took "
          f"{result['published_s']:.1f} s)")
    print(f"baseline, straight into the store: {baseline:.0f} hours/s; ratio broker/baseline "
          f"{result['rate'] / baseline:.2f}")
    print(f"witness record audit: {result['audit_rate']:.0f} hours/s (done "
          f"{result['audited_s']:.1f} s after the first publish)")
    print(f"end-to-end lag of a live hour (publish to commit, median of {args.plants}): "
          f"{result['lag_ms']:.0f} ms")
    print(f"query one plant-year ({result['plant_year_rows']} rows): "
          f"{result['plant_year_ms']:.0f} ms; one month of the whole fleet "
          f"({result['fleet_month_rows']} rows): {result['fleet_month_ms']:.0f} ms")
    print(json.dumps({k: round(v, 3) for k, v in result.items()} | {"baseline": baseline}))


if __name__ == "__main__":
    main()
