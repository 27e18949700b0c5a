"""The central report equals the edge's (issue 16): a real edge daemon on a virtual clock
publishes to a real mosquitto, the collector stores into a real PostgreSQL, and the report
of the day taken from the fleet database (`cemsd collect report`) is the edge's report;
the central verification bundle passes `cemsd verify-bundle`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from reduction_line import reduction_line
from sqlalchemy import select

from cemsd.cli import main
from cemsd.fleet.api import create_app
from cemsd.fleet.messages import parse
from cemsd.fleet.reports import CentralReportError, central_report
from cemsd.fleet.store import FleetStore
from cemsd.fleet.tokens import create_token
from cemsd.reduction.report import build_report, to_csv
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from fleet_helpers import (
    TZ,
    central_events,
    collector_settings,
    edge_events_sent,
    running_collector,
    until_counted,
)
from helpers import RunningDaemon, database
from mqtt_helpers import Mosquitto, wait_until

pytestmark = pytest.mark.postgres

DAY = 24 * 3600


def _cemsd(*args: str) -> Result:
    """A command in this process: one at a time, never beside another CliRunner."""
    return CliRunner().invoke(main, list(args))


async def test_the_central_report_equals_the_edge_report(broker: Mosquitto, pg_url: str,
                                                         tmp_path: Path) -> None:
    """Five hours of a line whose outlet analyzer is silent 03:00-03:30 (the hour is
    substituted), with the day's production imported: the central report of the day, JSON
    for JSON, is the edge's; a period with a bypass event is refused, naming it."""
    config, scenario = reduction_line(
        tmp_path, [{"device": "outlet-analyzer", "kind": "no_reply", "start": "3h",
                    "end": "3h30m"}],
        storage={"state_dir": str(tmp_path / "state"), "finalise_after_hours": 0},
        mqtt={"host": "127.0.0.1", "port": broker.port, "backoff_initial": 0.05,
              "backoff_max": 0.5, "batch_size": 200})
    (tmp_path / "production.csv").write_text("date,tonnes\n2026-06-01,420\n")
    edge = database(config)
    edge.upgrade()
    edge.close()
    imported = _cemsd("production", "import", "--config", str(config.source),
                      str(tmp_path / "production.csv"))
    assert imported.exit_code == 0, imported.output
    t0 = scenario.epoch
    kinds = ("substitution", "production")
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        async with RunningDaemon(config, scenario, until=t0 + 5 * 3600 + 60) as run:
            await run.finished()
        edge = database(config)
        hours = len(edge.fetch(select(schema.hours)))
        substituted = edge.fetch(select(schema.substitutions))
        edge_report = build_report(edge, config, t0, t0 + DAY, t0 + DAY)
        edge.close()
        await until_counted(collector, "hours", hours)
        sent = edge_events_sent(config, kinds)
        store = FleetStore(pg_url)
        try:
            await wait_until(lambda: central_events(store, kinds) == sent, 20, "events")
        finally:
            store.close()
    assert [s.channel for s in substituted] == ["outlet.n2o_kg_h"]
    assert edge_report["production"]["total_t"] == 420
    assert edge_report["hours"][3]["outlet_method"] == substituted[0].method

    collector_file = tmp_path / "collector.toml"
    collector_file.write_text(f'[collector]\ndatabase_url = "{pg_url}"\n')
    asked = ("--config", str(collector_file), "--plant-config", str(config.source),
             "--from", "2026-06-01", "--to", "2026-06-02")
    done = _cemsd("collect", "report", *asked)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == edge_report
    # the fleet API's plant report: the same, from the collector's [collector.plants]
    store = FleetStore(pg_url)
    app = create_app(store, ApiConfig(), TZ, plant_configs={"aa": config.source})
    token = create_token(store.db, "registry", ["aa"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        day = {"from": "2026-06-01", "to": "2026-06-02"}
        assert (await client.get("/v1/plants/aa/reports", params=day)).json() == edge_report
        as_csv = await client.get("/v1/plants/aa/reports", params={**day, "format": "csv"})
        assert as_csv.text == to_csv(edge_report)
    store.close()

    bundle = tmp_path / "central.tar.gz"
    made = _cemsd("collect", "report", *asked, "--bundle", str(bundle))
    assert made.exit_code == 0, made.output
    verified = _cemsd("verify-bundle", str(bundle))
    assert verified.exit_code == 0, verified.output


def test_a_period_with_a_bypass_event_is_refused_naming_it(pg_url: str,
                                                           tmp_path: Path) -> None:
    """The collector keeps no minutes: a bypass mass cannot be recomputed centrally."""
    config, scenario = reduction_line(tmp_path, [])
    store = FleetStore(pg_url)
    try:
        store.upgrade()
        at = scenario.epoch + 3600
        opened = {"id": 7, "plant": "aa", "kind": "bypass", "at": "2026-05-31T17:00:00Z",
                  "data": {"active": True, "id": 4, "unit": None, "started_at": at}}
        store.ingest([parse("cemsd/aa/events/bypass", json.dumps(opened).encode())],
                     datetime.fromtimestamp(at, UTC))
        with pytest.raises(CentralReportError, match=r"bypass event 4 .* minutes"):
            central_report(store, config, scenario.epoch, scenario.epoch + DAY, at)
        with pytest.raises(CentralReportError, match="'other': nothing received"):
            central_report(store, config.model_copy(update={
                "plant": config.plant.model_copy(update={"id": "other"})}),
                scenario.epoch, scenario.epoch + DAY, at)
    finally:
        store.close()
