"""Abatement units without a daemon: the bypass monitor keeps one event per unit, the
QA/QC consistency warning is per unit, and an HJ 212 platform's states come from its
unit's signals."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from test_units_config import MN, two_units

from cemsd.flags import Flag
from cemsd.hj212.uplink import PlatformUplink
from cemsd.plan import compile_plan
from cemsd.qaqc.component import Qaqc
from cemsd.readings import Reading
from cemsd.reduction.bypass import BypassMonitor
from helpers import write_config

T0 = datetime(2026, 6, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def _config(tmp: Path, **reduction: Any) -> Any:
    data = two_units()
    data["reduction"] = {"bypass": {"debounce_s": 0, **reduction}}
    return write_config(tmp, data)


def _monitor(config: Any) -> BypassMonitor:
    monitor = BypassMonitor(config)
    monitor.daemon = SimpleNamespace(clock=SimpleNamespace(now=lambda: T0 + 100))
    monitor._channels = monitor._signal_channels(SimpleNamespace(plan=compile_plan(config)))
    return monitor


def _feed(monitor: BypassMonitor, ts: float, **values: float) -> None:
    """Values by '<unit>_<key>' of the I/O blocks l1-io and l2-io."""
    monitor._observe([Reading(f"{k[:2]}-io.{k[3:]}", ts, v, Flag.N) for k, v in values.items()])


def _queued(monitor: BypassMonitor) -> list[tuple[str, str, list[str]]]:
    out = []
    while not monitor._work.empty():
        action, event, _ = monitor._work.get_nowait()
        out.append((action, event.unit, sorted(event.triggers)))
    return out


NORMAL = {"l1_bypass_position": 0.0, "l1_abatement_running": 1.0,
          "l1_production_running": 1.0, "l2_bypass_position": 0.0, "l2_abatement_running": 1.0}


def test_each_unit_opens_and_closes_its_own_events(tmp_path: Path) -> None:
    async def run() -> list:
        monitor = _monitor(_config(tmp_path))
        _feed(monitor, T0, **NORMAL)
        _feed(monitor, T0 + 5, **{**NORMAL, "l1_bypass_position": 80.0})
        _feed(monitor, T0 + 10, **{**NORMAL, "l1_bypass_position": 80.0,
                                   "l2_abatement_running": 0.0})
        _feed(monitor, T0 + 15, **{**NORMAL, "l2_abatement_running": 0.0})
        # production stops: a stopped unit vents nothing, line 2's event ends too
        _feed(monitor, T0 + 20, **{**NORMAL, "l2_abatement_running": 0.0,
                                   "l1_production_running": 0.0})
        return _queued(monitor)

    assert asyncio.run(run()) == [("open", "l1", ["valve"]),
                                  ("open", "l2", ["abatement_stopped"]),
                                  ("close", "l1", ["valve"]),
                                  ("close", "l2", ["abatement_stopped"])]


def test_the_consistency_warning_is_per_unit(tmp_path: Path) -> None:
    config = _config(tmp_path, consistency=True)
    published: list[tuple[str, dict]] = []

    async def publish(kind: str, payload: dict) -> None:
        published.append((kind, payload))

    def rows(l1_outlet: float) -> list[dict[str, Any]]:
        values = {"l1_in.n2o_kg_h": 100.0, "l1_out.n2o_kg_h": l1_outlet,
                  "l2_in.n2o_kg_h": 100.0, "l2_out.n2o_kg_h": 1.0,
                  "l1-io.abatement_running": 1.0, "l2-io.abatement_running": 1.0}
        return [{"channel": k, "ts": T0, "value": v, "flag": "N"} for k, v in values.items()]

    async def run() -> list:
        qaqc = Qaqc(config)
        qaqc.daemon = SimpleNamespace(publish_event=publish)
        monitor = _monitor(config)
        for outlet in (1.0, 120.0, 120.0, 1.0):  # line 1's outlet above its inlet, twice
            seen = len(published)
            await qaqc._check_consistency(rows(outlet))
            for kind, payload in published[seen:]:
                await monitor._on_event(kind, payload)
        return _queued(monitor)

    queued = asyncio.run(run())
    assert [(k, p["unit"], p["active"]) for k, p in published] == \
        [("consistency", "l1", True), ("consistency", "l1", False)]
    assert queued == [("open", "l1", ["consistency"]), ("close", "l1", ["consistency"])]


def test_an_hj212_platform_takes_its_states_from_its_unit(tmp_path: Path) -> None:
    data = two_units()
    data["hj212"] = [{"name": "l2", "host": "198.51.100.7", "port": 9000, "mn": MN,
                      "pw": "123456", "uploads": [2021], "unit": "l2",
                      "abatement_code": "SB1", "bypass_code": "SB2"}]
    config = write_config(tmp_path, data)
    uplink = PlatformUplink.__new__(PlatformUplink)
    uplink.platform = config.hj212[0]
    states = uplink._find_state_channels(SimpleNamespace(config=config))
    assert states == [("SB1", ("l2-io.abatement_running",), 0.5),
                      ("SB2", ("l2-io.bypass_position",), 0.0)]
