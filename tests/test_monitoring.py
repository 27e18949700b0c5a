"""Monitoring as Prometheus and an operator see it, against a running daemon (virtual
clock, simulated instruments, two HJ 212 platforms: one answering, one unreachable):
- the scraped /metrics pass `promtool check metrics` (Debian's prometheus package);
- each platform's link state, backlog, oldest unacknowledged period and last
  acknowledgement are in the metrics and in `cemsd status` (human text; --json);
- the alert rules shipped in monitoring/ pass `promtool test rules`."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hj212_platform import OPS_MN, OPS_PW, Platform, ops_uplink

from cemsd.cli import main
from cemsd.hj212.uplink import PlatformUplink
from cemsd.metrics import MetricsServer
from cemsd.periods import MINUTE
from helpers import (
    RunningDaemon,
    free_port,
    metric_value,
    scrape_metrics,
    scrape_metrics_text,
    write_config,
    write_scenario,
)
from ops_helpers import plant, scenario

REPO = Path(__file__).resolve().parents[1]
LOOK_AT = 20 * MINUTE + 1  # 00:20:01, between two polls


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/install-system-deps test (Debian prometheus)"
    return path


def _status_cli(config: Any, *args: str) -> Any:
    return CliRunner().invoke(main, ["status", "--config", str(config.source), *args])


@pytest.fixture(scope="module")
def looked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("monitoring")

    async def run() -> dict[str, Any]:
        platform = Platform(OPS_MN, OPS_PW)
        port = await platform.start()
        live, dead = free_port(), free_port()
        config = write_config(tmp, plant(
            tmp, live, dead, metrics={"address": "127.0.0.1", "port": free_port()},
            hj212=[ops_uplink("city", port), ops_uplink("province", free_port())]))
        scene = write_scenario(tmp, scenario(live, dead))
        t0 = scene.epoch
        seen: dict[str, Any] = {"t0": t0}
        try:
            async with RunningDaemon(config, scene, until=t0 + 30 * MINUTE) as rd:
                server = next(c for c in rd.daemon.components if isinstance(c, MetricsServer))
                city = next(c for c in rd.daemon.components
                            if isinstance(c, PlatformUplink) and c.platform.name == "city")
                with rd.clock.participant():
                    await rd.clock.sleep_until(t0 + LOOK_AT)
                    deadline = time.monotonic() + 30
                    while city.cursors[2051] < t0 + 20 * MINUTE:  # the platform keeps up
                        assert time.monotonic() < deadline, "the platform got no minutes"
                        await asyncio.sleep(0.02)
                    seen["text"] = await scrape_metrics_text(server.port)
                    seen["samples"] = await scrape_metrics(server.port)
                    seen["human"] = await asyncio.to_thread(_status_cli, config)
                    seen["json"] = await asyncio.to_thread(_status_cli, config, "--json")
                await rd.finished()
        finally:
            await platform.stop()
        return seen

    return asyncio.run(run())


def test_scraped_metrics_pass_promtool(looked: dict[str, Any]) -> None:
    check = subprocess.run([promtool(), "check", "metrics"], input=looked["text"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "cemsd_hj212_backlog_periods" in looked["text"]  # the uplinks were in the scrape


def test_uplink_state_in_the_metrics(looked: dict[str, Any]) -> None:
    samples = looked["samples"]

    def value(name: str, platform: str) -> float | None:
        return samples.get((name, frozenset({("platform", platform)})))

    assert value("cemsd_hj212_connected", "city") == 1
    assert value("cemsd_hj212_connected", "province") == 0
    assert value("cemsd_hj212_backlog_periods", "city") == 0
    assert value("cemsd_hj212_oldest_unacknowledged_age_seconds", "city") is None
    ack_age = value("cemsd_hj212_last_acknowledgement_age_seconds", "city")
    assert ack_age is not None and 0 <= ack_age < 60
    # the unreachable one: every minute closed since the start (00:00 to 00:20), none acked
    assert value("cemsd_hj212_backlog_periods", "province") == 20
    assert value("cemsd_hj212_oldest_unacknowledged_age_seconds", "province") == LOOK_AT
    assert value("cemsd_hj212_last_acknowledgement_age_seconds", "province") is None
    # the hour so far: 20 minutes closed, 40 to come
    assert metric_value(samples, "cemsd_current_hour_open_minute_periods") == 40
    assert metric_value(samples, "cemsd_current_hour_valid_minute_periods",
                        channel="analyzer.n2o") == 20


def test_uplink_state_in_cemsd_status(looked: dict[str, Any]) -> None:
    human, as_json = looked["human"], looked["json"]
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0] == "plant time 2026-06-01T00:20+08:00"
    assert "devices: 2/3 up" in lines
    uplinks = lines[lines.index("HJ 212 uplinks:") + 1:]
    city = next(line for line in uplinks if line.split()[0] == "city")
    province = next(line for line in uplinks if line.split()[0] == "province")
    assert " connected, backlog 0 periods, last acknowledgement 2026-06-01T00:2" in city
    assert " DISCONNECTED, backlog 20 periods, oldest unacknowledged 2026-06-01T00:00+08:00, " \
           "last acknowledgement never, cannot connect to 127.0.0.1:" in province
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    by_name = {u["platform"]: u for u in data["uplinks"]}
    assert by_name["province"]["backlog"] == 20 and not by_name["province"]["connected"]
    assert by_name["city"]["connected"] and by_name["city"]["backlog"] == 0


def test_alert_rules_pass_their_tests() -> None:
    rules = sorted((REPO / "monitoring").glob("*test*.yml"))
    assert rules, "no rule tests in monitoring/"
    for name in ("check", "test"):
        files = sorted((REPO / "monitoring").glob("*-alerts.yml")) if name == "check" else rules
        done = subprocess.run([promtool(), name, "rules", *map(str, files)],
                              capture_output=True, text=True, timeout=120, cwd=REPO / "monitoring")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
