"""Device faults through the simulators, on Modbus TCP and on RTU over a pty: a silent
device, every Modbus exception code, garbage, truncated and oversized frames, a bad CRC
(serial), a slow device, a lost TCP link and a serial line whose pty disappears and comes
back. The healthy neighbour on the same link keeps 100 % valid minutes; the faulty device is
flagged with the right flag and reason in each fault window and delivers normal values
again after it, without a restart; each episode is logged once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from cemsd.errors import ExceptionReply
from cemsd.store import schema
from helpers import (
    database,
    free_port,
    interrupt_bus,
    run_virtual,
    write_config,
    write_scenario,
)

START = "2026-06-01T00:00:00+08:00"
POLL = 5.0
PER_MINUTE = int(60 / POLL)
TIMEOUT = 0.25
HEALTHY_VALUE, FAULTY_VALUE = 100.0, 12.0
# the faulty analyzer measures O2 at the same point (one N2O analyzer per point)
CHANNELS = {"healthy": {"n2o": {"range": [0, 5000]}},
            "faulty": {"n2o": {"role": "o2", "unit": "%vol", "range": [0, 25],
                               "point": "outlet"}}}


@dataclass(frozen=True)
class Fault:
    kind: str
    flag: str  # what the faulty device's readings carry during the fault
    reason: str  # a fragment of their reason
    extra: dict | None = None


EXCEPTION_CODES = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
FAULTS = [
    Fault("no_reply", "B", "no reply"),
    *(Fault("exception", "B" if code in ExceptionReply.GATEWAY_CODES else "D",
            f"exception {code} ({ExceptionReply.NAMES[code]})", {"code": code})
      for code in EXCEPTION_CODES),
    Fault("garbage", "B", "unreadable reply"),
    Fault("truncated", "B", "unreadable reply"),  # half a frame, the rest never comes
    # 300 bytes too many: pymodbus 3.16 empties a receive buffer longer than a frame can be
    # (264 bytes) before anything reads it, so all the daemon can see is no reply
    Fault("oversized", "B", "no reply"),
    Fault("slow", "N", "", {"delay": 0.15}),  # slower than usual, within its timeout
]
# Modbus TCP has no CRC of its own (TCP checks the bytes): a flipped last byte would be a
# different register value, not a fault the daemon could see. On RTU it is a CRC error.
SERIAL_ONLY = [Fault("bad_crc", "B", "unreadable reply")]


def _faults(transport: str) -> list[Fault]:
    return FAULTS + (SERIAL_ONLY if transport == "serial" else [])


def _window(i: int) -> tuple[float, float]:
    """Fault i lasts one minute, then one minute of normal operation follows."""
    start = 60.0 * (1 + 2 * i)
    return start, start + 60.0


def _bus(tmp: Path, transport: str, port: int, side: str) -> dict:
    if transport == "tcp":
        return ({"transport": "tcp", "host": "127.0.0.1", "port": port} if side == "daemon"
                else {"transport": "tcp", "port": port})
    if side == "daemon":
        return {"transport": "serial", "port": str(tmp / "tty-daemon"), "baudrate": 19200,
                "parity": "N"}
    return {"transport": "serial", "port": str(tmp / "tty-sim"),
            "link": str(tmp / "tty-daemon"), "baudrate": 19200}


def _files(tmp: Path, transport: str, events: list[dict]) -> tuple:
    port = free_port()
    devices = [("healthy", 1, HEALTHY_VALUE), ("faulty", 2, FAULTY_VALUE)]
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "bus", **_bus(tmp, transport, port, "sim")}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "signals": {"n2o": {"base": v}}} for n, i, v in devices],
        "events": events,
    })
    config = write_config(tmp, {
        "plant": {"id": "faults"},
        "points": {"outlet": {}},
        "buses": [{"name": "bus", **_bus(tmp, transport, port, "daemon"), "timeout": TIMEOUT,
                   "retries": 0}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "poll_interval": POLL, "backoff_max": 10.0, "channels": CHANNELS[n]}
                    for n, i, _ in devices],
    })
    return config, scenario


def _stored(config) -> tuple[list, list]:
    db = database(config)
    try:
        return (db.readings_between(0, 2e9),
                db.aggregates_between(schema.minutes, 0, 2e9))
    finally:
        db.close()


def _between(rows: list, channel: str, t0: float, t1: float) -> list:
    return [r for r in rows if r.channel == channel and t0 <= r.ts.timestamp() < t1]


def _assert_healthy_throughout(readings: list, minutes: list, epoch: float, end: float) -> None:
    """100 % valid minutes: every minute stored, flag N, every expected reading valid."""
    healthy = _between(minutes, "healthy.n2o", epoch, epoch + end)
    assert [m.ts.timestamp() - epoch for m in healthy] == [60.0 * i for i in range(int(end // 60))]
    assert all(m.flag == "N" and m.n_valid == PER_MINUTE for m in healthy), \
        [(m.ts, m.flag, m.n_valid, m.reason) for m in healthy if m.flag != "N"]
    values = _between(readings, "healthy.n2o", epoch, epoch + end)
    assert all(r.flag == "N" and r.value == pytest.approx(HEALTHY_VALUE) for r in values)


@pytest.mark.parametrize("transport", ["tcp", "serial"])
def test_device_faults_flag_the_faulty_device_only_and_it_recovers(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture, socat: str
) -> None:
    faults = _faults(transport)
    events = []
    for i, fault in enumerate(faults):
        a, b = _window(i)
        events.append({"device": "faulty", "kind": fault.kind, "start": a, "end": b,
                       **(fault.extra or {})})
    config, scenario = _files(tmp_path, transport, events)
    end = _window(len(faults) - 1)[1] + 60.0
    caplog.set_level(logging.INFO, logger="cemsd.acquisition")
    asyncio.run(run_virtual(config, scenario, scenario.epoch + end))

    epoch = scenario.epoch
    readings, minutes = _stored(config)
    _assert_healthy_throughout(readings, minutes, epoch, end)

    for i, fault in enumerate(faults):
        a, b = _window(i)
        inside = _between(readings, "faulty.n2o", epoch + a, epoch + b)
        assert inside, fault
        assert {r.flag for r in inside} == {fault.flag}, (fault, {r.reason for r in inside})
        if fault.flag == "N":
            assert len(inside) == PER_MINUTE
            assert all(r.value == pytest.approx(FAULTY_VALUE) for r in inside)
        else:
            assert all(fault.reason in r.reason and r.value is None for r in inside), \
                (fault, {r.reason for r in inside})
        minute = _between(minutes, "faulty.n2o", epoch + a, epoch + b)
        assert [m.flag for m in minute] == [fault.flag], fault
        # recovery without a restart: after at most one back-off (10 s) every poll is normal
        after = _between(readings, "faulty.n2o", epoch + b + 15, epoch + b + 60)
        assert len(after) == 9 and all(
            r.flag == "N" and r.value == pytest.approx(FAULTY_VALUE) for r in after), fault

    downs = [r.device for r in caplog.records if r.getMessage() == "device down"]
    ups = [r.device for r in caplog.records if r.getMessage() == "device up"]
    failing = [f for f in faults if f.flag != "N"]
    assert downs == ["faulty"] * len(failing)  # once per episode, never the healthy one
    assert ups == ["faulty"] * len(failing)


def test_lost_tcp_link_of_one_device_leaves_the_others_alone(tmp_path: Path) -> None:
    """Two TCP links: one drops for two minutes (its server stops, connections reset)."""
    port_a, port_b = free_port(), free_port()
    scenario = write_scenario(tmp_path, {
        "start": START,
        "buses": [{"name": "a", "transport": "tcp", "port": port_a},
                  {"name": "b", "transport": "tcp", "port": port_b}],
        "devices": [
            {"name": "healthy", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": HEALTHY_VALUE}}},
            {"name": "faulty", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": FAULTY_VALUE}}},
        ],
    })
    config = write_config(tmp_path, {
        "plant": {"id": "faults"},
        "points": {"outlet": {}},
        "buses": [{"name": n, "transport": "tcp", "host": "127.0.0.1", "port": p,
                   "timeout": TIMEOUT, "retries": 0} for n, p in (("a", port_a), ("b", port_b))],
        "devices": [{"name": n, "bus": b, "device_id": 1, "profile": "n2o-analyzer-ppm",
                     "poll_interval": POLL, "backoff_max": 10.0, "channels": CHANNELS[n]}
                    for n, b in (("healthy", "a"), ("faulty", "b"))],
    })
    epoch = scenario.epoch
    end = 6 * 60.0

    asyncio.run(interrupt_bus(config, scenario, "b", epoch + 120, epoch + 240, epoch + end))
    readings, minutes = _stored(config)
    _assert_healthy_throughout(readings, minutes, epoch, end)
    during = _between(readings, "faulty.n2o", epoch + 125, epoch + 240)
    assert during and all(r.flag == "B" and r.value is None for r in during)
    assert {r.reason.split(":")[0] for r in during} <= {"no link", "no reply"}
    after = _between(readings, "faulty.n2o", epoch + 255, epoch + end)
    assert len(after) == (end - 255) / POLL
    assert all(r.flag == "N" and r.value == pytest.approx(FAULTY_VALUE) for r in after)


def test_serial_line_that_disappears_and_comes_back(tmp_path: Path, socat: str) -> None:
    """The pty pair is closed (the port file vanishes, as when a USB adapter is pulled) and
    created again: the daemon reopens the port by itself and polls on."""
    config, scenario = _files(tmp_path, "serial", [])
    epoch = scenario.epoch
    end = 6 * 60.0
    port_file = Path(config.buses[0].port)

    async def port_file_follows(state: str) -> None:
        assert await asyncio.to_thread(port_file.exists) == (state == "up")

    asyncio.run(interrupt_bus(config, scenario, "bus", epoch + 120, epoch + 240, epoch + end,
                              port_file_follows))
    readings, _ = _stored(config)
    for channel, value in (("healthy.n2o", HEALTHY_VALUE), ("faulty.n2o", FAULTY_VALUE)):
        before = _between(readings, channel, epoch, epoch + 120)
        assert len(before) == 120 / POLL and all(r.flag == "N" for r in before)
        during = _between(readings, channel, epoch + 125, epoch + 240)
        assert during and all(r.flag == "B" and r.value is None for r in during)
        after = _between(readings, channel, epoch + 255, epoch + end)
        assert len(after) == (end - 255) / POLL, channel
        assert all(r.flag == "N" and r.value == pytest.approx(value) for r in after), channel
