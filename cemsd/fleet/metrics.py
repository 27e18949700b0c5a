"""Prometheus metrics of the collector (counts since start) and of the fleet (per plant,
read from the database at scrape time: the newest hour, lag, missing hours, the witness's
alarms, conflicts). An alert on `cemsd_fleet_witness_alarms > 0` or
`cemsd_fleet_conflicts > 0` needs nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from cemsd.fleet.store import FleetStore

PLANT_GAUGES = (
    ("cemsd_fleet_plant_lag_seconds", "lag_seconds",
     "How far the plant's newest hour received lies behind now (its end)"),
    ("cemsd_fleet_plant_missing_hours", "hours_missing",
     "Hours missing between the plant's first and last hour received"),
    ("cemsd_fleet_plant_hours", "hours_received", "Distinct hours received for the plant"),
    ("cemsd_fleet_witness_alarms", "alarms",
     "Findings of the witness on the plant's chain (rewritten, shortened, altered)"),
    ("cemsd_fleet_conflicts", "conflicts",
     "Records received that differ from the record received before under the same key"),
)


def metrics_text(store: FleetStore, collector: Any, now: datetime) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(store, collector, now))
    return generate_latest(registry).decode()


class _FleetCollector:
    def __init__(self, store: FleetStore, collector: Any, now: datetime) -> None:
        self.store, self.collector, self.now = store, collector, now

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.collector is not None:
            counts = CounterMetricFamily("cemsd_fleet_collected", "What the collector did "
                                         "since it started, by kind", labels=["kind"])
            for kind, value in sorted(self.collector.counts.items()):
                counts.add_metric([kind], value)
            yield counts
            yield GaugeMetricFamily("cemsd_fleet_broker_connected", "1 while subscribed",
                                    value=int(self.collector.connected))
            lag = GaugeMetricFamily("cemsd_fleet_end_to_end_lag_seconds", "From the newest "
                                    "hour's write at the edge to its commit here",
                                    labels=["plant"])
            for plant, seconds in sorted(self.collector.lag.items()):
                lag.add_metric([plant], seconds)
            yield lag
        yield GaugeMetricFamily("cemsd_fleet_links_unchecked", "Hour links whose record the "
                                "witness has not recomputed yet (its audit runs behind)",
                                value=self.store.unchecked_links())
        progress = self.store.progress(self.now)
        for name, key, text in PLANT_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["plant"])
            for plant in progress:
                if plant[key] is not None:
                    gauge.add_metric([plant["plant"]], plant[key])
            yield gauge
