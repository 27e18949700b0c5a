"""Supervision (issue 11 item 1): on one bus of two, a host name that raises UnicodeError,
a serial setting the port refuses (termios EINVAL on a socat pty) and an arbitrary exception
from a patched decoder. Each time the log names the bus and the cause at once, `cemsd
status`, the status summary and the metrics show the bus's device down with the cause,
its readings are B naming the cause, and the other bus keeps 100 % valid minutes. The
decoder's bus recovers once the patch is removed."""

from __future__ import annotations

import asyncio
import logging
import math
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from cemsd import acquisition
from cemsd.control import request_async
from cemsd.daemon import Daemon, modbus_transport
from cemsd.plan import BusPlan
from cemsd.status import LiveStatus, summary_line
from cemsd.store import schema
from cemsd.supervisor import RestartPolicy
from drivers.base import Transport
from drivers.modbus import ModbusTransport
from helpers import (
    RunningDaemon,
    database,
    free_port,
    metric_value,
    scrape_metrics,
    write_config,
    write_scenario,
)

START = "2026-06-01T00:00:00+08:00"
POLL = 5.0
PER_MINUTE = int(60 / POLL)
HEALTHY_VALUE, FAULTY_VALUE = 100.0, 12.0
END = 5 * 60.0
CHECK_AT = 90.0  # when the test looks at status and metrics (simulated seconds)
WALL_LIMIT = 10.0  # the bound: the log names the bus and cause within 10 s
CHANNELS = {"healthy": {"n2o": {"range": [0, 5000]}},
            "faulty": {"n2o": {"role": "o2", "unit": "%vol", "range": [0, 25],
                               "point": "outlet"}}}


def _plant(tmp: Path, faulty_bus: str) -> tuple[Any, Any, int]:
    """Bus a (TCP) carries the healthy analyzer, bus b the faulty one (TCP or serial)."""
    port_a, port_b, metrics = free_port(), free_port(), free_port()
    if faulty_bus == "serial":
        sim_b = {"transport": "serial", "port": str(tmp / "tty-sim"),
                 "link": str(tmp / "tty-daemon"), "baudrate": 19200}
        # the pty pair itself carries any speed: only the daemon's end asks for 115200
        daemon_b = {"transport": "serial", "port": str(tmp / "tty-daemon"),
                    "baudrate": 115200, "parity": "N"}
    else:
        sim_b = {"transport": "tcp", "port": port_b}
        daemon_b = {"transport": "tcp", "host": "127.0.0.1", "port": port_b}
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "a", "transport": "tcp", "port": port_a}, {"name": "b", **sim_b}],
        "devices": [
            {"name": "healthy", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": HEALTHY_VALUE}}},
            {"name": "faulty", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": FAULTY_VALUE}}},
        ],
    })
    config = write_config(tmp, {
        "plant": {"id": "supervised"},
        "points": {"outlet": {}},
        "metrics": {"port": metrics},
        "buses": [{"name": "a", "transport": "tcp", "host": "127.0.0.1", "port": port_a,
                   "timeout": 0.25, "retries": 0},
                  {"name": "b", **daemon_b, "timeout": 0.25, "retries": 0}],
        "devices": [{"name": n, "bus": b, "device_id": 1, "profile": "n2o-analyzer-ppm",
                     "poll_interval": POLL, "backoff_max": 10.0, "channels": CHANNELS[n]}
                    for n, b in (("healthy", "a"), ("faulty", "b"))],
    })
    return config, scenario, metrics


async def _run(config: Any, scenario: Any, metrics_port: int, fix_at: float | None = None,
               fix: Any = None, **options: Any) -> dict[str, Any]:
    """Run to END; at CHECK_AT (time standing still) take `cemsd status`, the summary, the
    status page's devices and a scrape; at `fix_at` call fix()."""
    seen: dict[str, Any] = {}
    epoch = scenario.epoch
    async with RunningDaemon(config, scenario, epoch + END, **options) as running:
        clock, daemon = running.clock, running.daemon
        with clock.participant():
            await clock.sleep_until(epoch + CHECK_AT)
            socket_path = config.storage.state_dir / "cemsd.sock"
            [reply] = await request_async(socket_path, {"op": "status"})
            seen["status"] = reply["result"]
            seen["summary"] = summary_line(daemon, None)
            seen["page"] = LiveStatus(daemon)._live(clock.now())["devices"]
            seen["metrics"] = await scrape_metrics(metrics_port)
            if fix_at is not None:
                await clock.sleep_until(epoch + fix_at)
                fix()
        await running.finished()
        seen["daemon"] = daemon
    return seen


def _stored(config: Any) -> tuple[list, list]:
    db = database(config)
    try:
        return db.readings_between(0, 2e9), db.aggregates_between(schema.minutes, 0, 2e9)
    finally:
        db.close()


def _between(rows: list, channel: str, t0: float, t1: float) -> list:
    return [r for r in rows if r.channel == channel and t0 <= r.ts.timestamp() < t1]


def _assert_other_bus_untouched(config: Any, epoch: float) -> tuple[list, list]:
    readings, minutes = _stored(config)
    healthy = _between(minutes, "healthy.n2o", epoch, epoch + END)
    assert [m.ts.timestamp() - epoch for m in healthy] == [60.0 * i for i in range(int(END / 60))]
    assert all(m.flag == "N" and m.n_valid == PER_MINUTE for m in healthy), \
        [(m.ts, m.flag, m.n_valid, m.reason) for m in healthy]
    return readings, minutes


def _assert_shown_down(seen: dict[str, Any], cause: str) -> None:
    device = seen["status"]["devices"]["faulty"]
    assert device["up"] is False and cause in device["last_error"], device
    assert seen["status"]["devices"]["healthy"] == {"up": True, "last_error": None}
    [page] = [d for d in seen["page"] if d["name"] == "faulty"]
    assert page["state"] == "down" and cause in page["last_error"]
    assert seen["summary"].startswith("1/2 devices up")
    scraped = seen["metrics"]
    assert metric_value(scraped, "cemsd_device_up", device="faulty") == 0.0
    assert metric_value(scraped, "cemsd_device_up", device="healthy") == 1.0


def _first_log(records: list[logging.LogRecord], message: str, cause: str
               ) -> logging.LogRecord:
    found = [r for r in records if r.getMessage() == message
             and cause in str(getattr(r, "reason", getattr(r, "error", "")))]
    assert found, [(r.getMessage(), r.__dict__.get("reason")) for r in records]
    return found[0]


def _bad_host(bus: BusPlan) -> Transport:
    """Bus b reached through a host name with an empty label: the IDNA codec refuses it."""
    if bus.name == "b":
        return ModbusTransport.tcp(bus.name, "modbus-gw..plant.local", 502)
    return modbus_transport(bus)


@pytest.mark.parametrize("fault", ["unicode_host", "refused_serial_setting"])
def test_a_link_that_cannot_be_opened_is_a_no_link_episode_naming_the_cause(
    tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, socat: str,
) -> None:
    options: dict[str, Any] = {}
    if fault == "unicode_host":
        config, scenario, metrics = _plant(tmp_path, "tcp")
        options["transport_factory"] = _bad_host
        cause = "UnicodeError"
    else:
        config, scenario, metrics = _plant(tmp_path, "serial")
        # A pty takes every setting the configuration allows; what a USB adapter refuses
        # is a speed code the terminal layer does not know: tcsetattr fails with EINVAL.
        monkeypatch.setattr(termios, "B115200", 0o17777777)
        cause = "termios.error: (22, 'Invalid argument')"
    caplog.set_level(logging.INFO)
    started = time.time()
    seen = asyncio.run(_run(config, scenario, metrics, **options))

    down = _first_log(caplog.records, "device down", cause)
    assert down.bus == "b" and down.device == "faulty"
    assert down.created - started <= WALL_LIMIT
    _assert_shown_down(seen, cause)
    readings, minutes = _assert_other_bus_untouched(config, scenario.epoch)
    faulty = _between(readings, "faulty.n2o", scenario.epoch, scenario.epoch + END)
    assert faulty and all(r.flag == "B" and r.reason.startswith("no link: cannot open b")
                          and cause in r.reason for r in faulty)
    assert all(m.flag == "B" for m in _between(minutes, "faulty.n2o", scenario.epoch,
                                               scenario.epoch + END))
    # the net was not needed: the bus task itself never failed
    assert not [r for r in caplog.records if r.getMessage() == "task failed, restarting"]


class DecoderExploded(BaseException):
    """Not even an Exception: the supervisor must catch every type."""


def test_an_exception_from_the_decoder_restarts_the_bus_and_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, scenario, metrics = _plant(tmp_path, "tcp")
    decode_block = acquisition._decode_block

    def exploding(block: Any, registers: list[int], values: dict[str, float]) -> None:
        if any(channel.name.startswith("faulty.") for channel, _ in block.items):
            raise DecoderExploded("register 0 made the decoder explode")
        decode_block(block, registers, values)

    monkeypatch.setattr(acquisition, "_decode_block", exploding)
    fix_at = 150.0
    policy = RestartPolicy(initial=1.0, maximum=8.0, crash_loop_failures=3,
                           crash_loop_window=60.0)
    caplog.set_level(logging.INFO)
    started = time.time()
    seen = asyncio.run(_run(config, scenario, metrics, fix_at,
                            lambda: monkeypatch.setattr(acquisition, "_decode_block",
                                                        decode_block),
                            restart_policy=policy))
    cause = "DecoderExploded: register 0 made the decoder explode"
    failed = _first_log(caplog.records, "task failed, restarting", cause)
    assert failed.task == "bus:b" and failed.levelno == logging.ERROR
    assert failed.created - started <= WALL_LIMIT
    assert _first_log(caplog.records, "task in a crash loop", cause).task == "bus:b"

    _assert_shown_down(seen, cause)
    task = seen["status"]["tasks"]["bus:b"]
    assert task["restarts"] >= 3 and task["crash_loop"] and cause in task["last_error"]
    assert seen["status"]["tasks"]["bus:a"]["restarts"] == 0
    assert "TASKS FAILING: bus:b" in seen["summary"] or "bus:b (crash loop" in seen["summary"]
    scraped = seen["metrics"]
    assert metric_value(scraped, "cemsd_task_restarts_total", task="bus:b") >= 3
    assert metric_value(scraped, "cemsd_task_restarts_total", task="bus:a") == 0
    assert metric_value(scraped, "cemsd_task_crash_loop", task="bus:b") == 1

    epoch = scenario.epoch
    readings, minutes = _assert_other_bus_untouched(config, epoch)
    during = _between(readings, "faulty.n2o", epoch, epoch + fix_at)
    # every slot accounted for: B naming the cause (a stand-in's or a failed poll's)
    assert {math.floor((r.ts.timestamp() - epoch) / POLL) for r in during} == \
        set(range(int(fix_at / POLL)))
    assert all(r.flag == "B" and cause in r.reason for r in during), \
        {(r.flag, r.reason) for r in during}
    early = _between(minutes, "faulty.n2o", epoch, epoch + 120)
    assert early and all(m.flag == "B" and cause in m.reason for m in early)
    # recovered: once the restart after the fix came (≤ the 8 s cap), every poll is normal
    after = _between(readings, "faulty.n2o", epoch + fix_at + 10, epoch + END)
    assert len(after) == (END - fix_at - 10) / POLL
    assert all(r.flag == "N" and r.value == pytest.approx(FAULTY_VALUE) for r in after)
    late = _between(minutes, "faulty.n2o", epoch + 180, epoch + END)
    assert len(late) == 2 and all(m.flag == "N" for m in late)
    daemon: Daemon = seen["daemon"]
    assert daemon.owners[1].health["faulty"].up is True


def test_a_failing_closer_is_restarted_and_no_minute_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The net holds for the other tasks too: the closer raises once (a KeyError from
    nowhere), is restarted, and closes every minute as if nothing happened."""
    from cemsd.closer import Closer

    config, scenario, metrics = _plant(tmp_path, "tcp")
    close_through = Closer.close_through
    raised: list[float] = []

    async def failing_once(self: Closer, t_end: float) -> None:
        if not raised and t_end >= scenario.epoch + 120:
            raised.append(t_end)
            raise KeyError("series vanished")
        await close_through(self, t_end)

    monkeypatch.setattr(Closer, "close_through", failing_once)
    caplog.set_level(logging.INFO)
    seen = asyncio.run(_run(config, scenario, metrics))

    assert raised
    failed = _first_log(caplog.records, "task failed, restarting", "KeyError: 'series vanished'")
    assert failed.task == "closer"
    # the check at 90 s came before the failure; after it, the closer counts one restart
    assert seen["status"]["tasks"]["closer"]["restarts"] == 0
    assert seen["daemon"].supervisor.report()["closer"]["restarts"] == 1
    _, minutes = _assert_other_bus_untouched(config, scenario.epoch)
    faulty = _between(minutes, "faulty.n2o", scenario.epoch, scenario.epoch + END)
    assert len(faulty) == END / 60 and all(m.flag == "N" for m in faulty)
