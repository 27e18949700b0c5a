"""A simulated adipic acid line for reports end to end (tests/test_reduction_e2e.py) and
for the central report of the fleet (tests/test_fleet_report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cemsd.config import Config
from helpers import free_port, write_config, write_scenario
from simulators.scenario import Scenario

START = "2026-06-01T00:00:00+08:00"


def reduction_line(tmp: Path, events: list[dict[str, Any]], **sections: Any
                   ) -> tuple[Config, Scenario]:
    """A simulated adipic acid line from 2026-06-01 00:00 plant time: inlet and outlet
    analyzers and flow meters, the plant I/O; `events` on the simulated timeline,
    `sections` added to the configuration."""
    port = free_port()
    scenario = write_scenario(tmp, {
        "start": START, "seed": 3,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [
            {"name": "inlet-analyzer", "bus": "bus", "device_id": 1,
             "profile": "n2o-analyzer-percent", "signals": {"n2o": {"base": 24.0, "noise": 0.02}}},
            {"name": "outlet-analyzer", "bus": "bus", "device_id": 2,
             "profile": "n2o-analyzer-ppm", "signals": {"n2o": {"base": 2000.0, "noise": 5.0}}},
            {"name": "inlet-flow", "bus": "bus", "device_id": 3, "profile": "stack-flow-meter",
             "signals": {"volume_flow": {"base": 10_000.0}}},
            {"name": "outlet-flow", "bus": "bus", "device_id": 4, "profile": "stack-flow-meter",
             "signals": {"volume_flow": {"base": 12_000.0}}},
            {"name": "plant", "bus": "bus", "device_id": 5, "profile": "plant-io",
             "signals": {"abatement_running": {"base": 1}, "production_running": {"base": 1}}},
        ],
        "events": events,
    })
    flow = {"velocity": {"enabled": False}, "temperature": {"enabled": False},
            "pressure": {"enabled": False}, "moisture": {"enabled": False},
            "volume_flow": {"role": "flow", "unit": "m3/h"}}
    config = write_config(tmp, {
        "plant": {"id": "aa", "name": "Adipic acid line 1"},
        **sections,
        "points": {"inlet": {"flow_basis": "standard_dry"},
                   "outlet": {"flow_basis": "standard_dry"}},
        "reduction": {"production_cap_t_per_year": 150_000.0,
                      "installation_date": "2025-01-01"},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [
            {"name": "inlet-analyzer", "bus": "bus", "device_id": 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0},
            {"name": "outlet-analyzer", "bus": "bus", "device_id": 2,
             "profile": "n2o-analyzer-ppm", "poll_interval": 5.0,
             # silence costs real time even on a virtual clock: short timeout, long back-off
             "timeout": 0.05, "backoff_max": 60.0},
            {"name": "inlet-flow", "bus": "bus", "device_id": 3, "profile": "stack-flow-meter",
             "poll_interval": 5.0, "point": "inlet", "channels": flow},
            {"name": "outlet-flow", "bus": "bus", "device_id": 4, "profile": "stack-flow-meter",
             "poll_interval": 5.0, "point": "outlet", "channels": flow},
            {"name": "plant", "bus": "bus", "device_id": 5, "profile": "plant-io",
             "poll_interval": 5.0},
        ],
    })
    return config, scenario
