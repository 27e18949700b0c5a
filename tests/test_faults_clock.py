"""The wall clock set back and forward by an hour while the daemon runs (as NTP or an
operator would). The rule: every minute and every hour has exactly one record, in order,
without holes. Set back, the clock shows times of periods already closed: polling goes on
at once (live values, real-time uploads), those readings are stored but change no closed
period, and a slot of the open minute polled a second time counts once. Set forward, the
skipped minutes and the skipped hour are closed from what is stored (nothing: invalid, B),
so capture rates show the gap."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from pathlib import Path

import pytest
from fault_helpers import SettableWallClock, daemon_on, messages, small_plant, wall_until

from cemsd.periods import HOUR, MINUTE
from cemsd.store import schema
from helpers import database

POLL = 1.0
INPUTS = ("n2o-analyzer.n2o", "o2-analyzer.n2o")


def test_wall_clock_set_back_and_forward_by_an_hour(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config, scenario = small_plant(tmp_path, POLL)
    hour = scenario.epoch + HOUR  # a plant-local hour start
    next_hour = hour + HOUR
    caplog.set_level(logging.INFO)
    steps: dict[str, float] = {}

    async def run() -> None:
        clock = SettableWallClock(hour - 3)
        async with daemon_on(config, scenario, clock):
            await wall_until(clock, hour + 6)  # the first hour is closed, a minute is open
            steps["back"] = clock.now()
            clock.step(-HOUR)
            await asyncio.sleep(3.0)
            # forward again, 4 s short of an hour: slots of the open minute come round again
            clock.step(HOUR - 4)
            steps["forward"] = clock.now()
            await wall_until(clock, hour + 10)
            clock.step(HOUR)  # a whole hour skipped
            await wall_until(clock, next_hour + 13)

    asyncio.run(run())
    db = database(config)
    readings = db.readings_between(0, 2e9)
    minutes = db.aggregates_between(schema.minutes, 0, 2e9, INPUTS)
    hours = db.aggregates_between(schema.hours, 0, 2e9, INPUTS)
    db.close()

    stepped = [round(r.seconds) for r in messages(caplog.records, "wall clock stepped")]
    assert stepped == [-3600, 3596, 3600]

    for channel in INPUTS:
        # one record per hour and per minute, in order, no holes
        mine = [h for h in hours if h.channel == channel]
        assert [h.ts.timestamp() for h in mine] == [hour - HOUR, hour], channel
        starts = [m.ts.timestamp() for m in minutes if m.channel == channel]
        assert starts == [hour - MINUTE + i * MINUTE for i in range(61)], channel
        # the hour closed before the clock went back was not closed again
        assert mine[0].created_at.timestamp() < steps["back"]

        # polling went on at once after the step back, into periods already closed
        back_to = steps["back"] - HOUR
        repeated = [r for r in readings if r.channel == channel
                    and back_to <= r.ts.timestamp() < back_to + 4]
        assert len(repeated) >= 2, channel
        assert all(r.flag == "N" for r in repeated)

        # the open minute: some slots were polled twice, each counts once
        open_minute = [r for r in readings if r.channel == channel
                       and hour <= r.ts.timestamp() < hour + MINUTE and r.flag == "N"]
        slots = {math.floor(r.ts.timestamp() / POLL + 1e-9) for r in open_minute}
        assert len(open_minute) > len(slots), "no slot was polled twice: nothing was tested"
        first = next(m for m in minutes if m.channel == channel and m.ts.timestamp() == hour)
        assert first.n_valid == len(slots) <= first.n_expected == 60

        # the skipped hour: every minute stored, empty, flagged B; the hour is invalid
        skipped = [m for m in minutes if m.channel == channel
                   and hour + MINUTE <= m.ts.timestamp() < next_hour]
        assert len(skipped) == 59
        assert all(m.n_valid == 0 and m.flag == "B" for m in skipped)
        assert mine[1].flag == "B" and mine[1].n_valid == 0

    assert not [k for k, n in Counter((m.channel, m.ts) for m in minutes).items() if n > 1]
