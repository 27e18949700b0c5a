"""`cemsd run` as systemd runs it, in real processes: SIGTERM in the middle of a busy
simulated hour (a dead device, no MQTT broker, no HJ 212 platform) ends in order and in
bounded time, and the restarted daemon leaves no minute lost or duplicated; SIGHUP with a
broken configuration keeps the daemon running on the old one, SIGHUP with a good one
puts it in force with an audit record; SIGHUPs and a SIGTERM during a reload."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cemsd.clock import SharedClockFile
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import database, free_port, wait_for, write_toml
from ops_helpers import START, NotifyListener, cemsd_command, plant, scenario

SPEED = 300.0
STOP_AT = 3600 + 12 * 60 + 23  # 01:12:23 plant time: mid-minute, mid-hour
END = 2 * 3600
LIVE = ("analyzer.n2o", "flow.velocity", "inlet.n2o_kg_h")  # derived mass too
EPOCH = datetime.fromisoformat(START).timestamp()


def _start_sim(tmp: Path, scene: dict[str, Any], clock_path: Path) -> subprocess.Popen[bytes]:
    path = write_toml(tmp / "scenario.toml", scene)
    return subprocess.Popen(cemsd_command("sim", "--scenario", str(path), "--clock-file",
                                          str(clock_path)), stdin=subprocess.DEVNULL)


def _daemon(config: Path, clock_path: Path, start: str, until: str, speed: float,
            notify: NotifyListener, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "2000000"}
    with log.open("ab") as err:
        return subprocess.Popen(
            cemsd_command("run", "--config", str(config), "--accelerate", str(speed),
                          "--clock-file", str(clock_path), "--start", start, "--until", until),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat()


def _stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sigterm_mid_hour_stops_in_order_and_the_restart_loses_no_minute(
        tmp_path: Path) -> None:
    live_port, dead_port = free_port(), free_port()
    outputs = {
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "backoff_max": 0.5},  # no broker
        "hj212": [{"name": "epb", "host": "127.0.0.1", "port": free_port(),  # no platform
                   "mn": "MN" + "0" * 22, "pw": "123456", "reconnect_max_s": 1.0,
                   "codes": {"inlet.n2o_kg_h": "a99002"}}],
    }
    config_path = write_toml(tmp_path / "cemsd.toml",
                             plant(tmp_path, live_port, dead_port, **outputs))
    clock_path = tmp_path / "clock"
    clock = SharedClockFile(clock_path, create=True)
    clock.write(EPOCH)
    log = tmp_path / "daemon.log"
    first_notify, second_notify = NotifyListener(), NotifyListener()
    sim = _start_sim(tmp_path, scenario(live_port, dead_port), clock_path)
    first = second = None
    try:
        first = _daemon(config_path, clock_path, START, _iso(EPOCH + END), SPEED,
                        first_notify, log)
        first_notify.wait_for(lambda: first_notify.times("READY", "1"), timeout=60)
        wait_for(lambda: clock.read() >= EPOCH + STOP_AT, timeout=90)
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        stopped_in = time.monotonic() - sent
        stopped_at = clock.read()
        # systemd starts it again a moment later (RestartSec; a second of simulated time)
        second = _daemon(config_path, clock_path, _iso(stopped_at + 1), _iso(EPOCH + END),
                         SPEED, second_notify, log)
        assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        _stop(first, second)
        sim.terminate()
        sim.wait(timeout=10)
        first_notify.close()
        second_notify.close()

    text = log.read_text()
    assert first.returncode == 0, text[-3000:]
    assert stopped_in < 30, stopped_in  # bounded, with a dead device and outputs down
    assert first_notify.keys_in_order()[:2] in (["READY", "WATCHDOG"], ["WATCHDOG", "READY"])
    assert first_notify.values("STOPPING") == ["1"]
    assert "stopping: signal SIGTERM" in first_notify.values("STATUS")
    assert 'stopping reason="signal SIGTERM"' in text and "mqtt output stopped" in text
    print(f"SIGTERM at {stopped_at - EPOCH:.0f} s simulated; exited after {stopped_in:.1f} s")

    db = database(_config(config_path))
    runs = db._fetch(schema.daemon_runs.select().order_by(schema.daemon_runs.c.id))
    minutes = db.aggregates_between(schema.minutes, 0, 2e9)
    hours = db.aggregates_between(schema.hours, 0, 2e9)
    readings = db.readings_between(0, 2e9)
    outbox = db._fetch(select(schema.mqtt_outbox.c.topic, schema.mqtt_outbox.c.period_start)
                       .where(schema.mqtt_outbox.c.period == "minute"))
    db.close()
    assert [(r.exit_reason, r.stopped_at is not None) for r in runs] == [
        ("signal SIGTERM", True), ("reached --until", True)]

    every_minute = [EPOCH + 60 * k for k in range(END // 60)]
    per_key = Counter((m.channel, m.ts.timestamp()) for m in minutes)
    assert not [k for k, n in per_key.items() if n > 1]  # nothing closed twice
    minutes = [m for m in minutes if m.ts.timestamp() < EPOCH + END]
    readings = [r for r in readings if r.ts.timestamp() < EPOCH + END]
    for channel in LIVE:
        mine = [m for m in minutes if m.channel == channel]
        assert sorted(m.ts.timestamp() for m in mine) == every_minute, channel
        assert all(m.flag == "N" for m in mine), channel
    # SIGTERM loses nothing but the downtime: every raw minute has all its readings (a
    # poll every 2 s) except at most the poll due during the restart's second, and no
    # reading is stored twice.
    stop_minute = stopped_at // 60 * 60
    for channel in LIVE[:2]:
        counts = {m.ts.timestamp(): m.n_valid for m in minutes if m.channel == channel}
        assert {n for t, n in counts.items() if t != stop_minute} == {30}, channel
        assert counts[stop_minute] >= 29
        times = [r.ts.timestamp() for r in readings if r.channel == channel]
        assert len(times) == len(set(times)) >= END // 2 - 1
    # the dead device: its minutes exist once each, invalid (B), across the restart too
    stack = sorted(m.ts.timestamp() for m in minutes if m.channel == "stack.n2o")
    assert stack == every_minute
    assert {m.flag for m in minutes if m.channel == "stack.n2o"} == {"B"}
    analyzer_hours = [h for h in hours if h.channel == "analyzer.n2o"
                      and h.ts.timestamp() < EPOCH + END]
    assert [(h.ts.timestamp() - EPOCH, h.n_valid) for h in analyzer_hours] == [(0, 60),
                                                                                (3600, 60)]
    assert runs[0].stopped_at.timestamp() == stopped_at  # time stood still while stopping
    # the MQTT outbox (broker down all along) holds each minute's message exactly once
    queued = Counter((topic.rsplit("/", 1)[1], start.timestamp()) for topic, start in outbox
                     if start.timestamp() < EPOCH + END)
    for channel in (*LIVE, "stack.n2o"):
        assert sorted(t for (c, t), n in queued.items() if c == channel and n == 1) == \
            every_minute, channel


def _config(path: Path):  # type: ignore[no-untyped-def]
    from cemsd.config import load_config

    return load_config(path)


def _count(db_url: str, channel: str) -> int:
    db = Database(db_url)
    try:
        return sum(r.channel == channel for r in db.readings_between(0, 2e9))
    except Exception:  # not created yet
        return 0
    finally:
        db.close()


def test_sighup_refuses_a_broken_config_and_applies_a_good_one(tmp_path: Path) -> None:
    live_port, dead_port = free_port(), free_port()
    scene = scenario(live_port, dead_port)
    scene["devices"].append({"name": "spare", "bus": "a", "device_id": 3,
                             "profile": "n2o-analyzer", "signals": {"n2o": {"base": 40.0}}})
    original = plant(tmp_path, live_port, dead_port)
    config_path = write_toml(tmp_path / "cemsd.toml", original)
    db_url = _config(config_path).storage.database_url
    clock_path = tmp_path / "clock"
    clock = SharedClockFile(clock_path, create=True)
    clock.write(EPOCH)
    log = tmp_path / "daemon.log"
    notify = NotifyListener()
    sim = _start_sim(tmp_path, scene, clock_path)
    daemon = None
    try:
        daemon = _daemon(config_path, clock_path, START, "+1d", 30.0, notify, log)
        notify.wait_for(lambda: notify.times("READY", "1"), timeout=60)
        wait_for(lambda: _count(db_url, "analyzer.n2o") > 20, timeout=60)

        # A broken file: refused with every problem named; the daemon runs on.
        broken = json.loads(json.dumps(original))
        broken["devices"][0]["poll_interval"] = -1
        broken["devices"][1]["colour"] = "blue"
        write_toml(config_path, broken)
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in log.read_text(), timeout=30)
        refused = next(line for line in log.read_text().splitlines() if "reload refused" in line)
        assert "devices[analyzer].poll_interval" in refused and "devices[flow].colour" in refused
        before = _count(db_url, "analyzer.n2o")
        wait_for(lambda: _count(db_url, "analyzer.n2o") > before + 10, timeout=60)
        assert daemon.poll() is None and notify.times("RELOADING", "1") == []

        # A good file: the analyzer slower, a new device; in force after RELOADING/READY.
        changed = json.loads(json.dumps(original))
        changed["devices"][0]["poll_interval"] = 4.0
        changed["devices"].append({"name": "spare", "bus": "a", "device_id": 3,
                                   "profile": "n2o-analyzer", "poll_interval": 2.0})
        write_toml(config_path, changed)
        reloaded_from = clock.read()
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for(lambda: len(notify.times("READY", "1")) == 2, timeout=60)
        wait_for(lambda: _count(db_url, "spare.n2o") > 10, timeout=60)
        assert daemon.poll() is None

        # Two SIGHUPs at once, then SIGHUP and SIGTERM at once: no harm, a clean stop.
        daemon.send_signal(signal.SIGHUP)
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for(lambda: len(notify.times("READY", "1")) >= 3, timeout=60)
        assert daemon.poll() is None
        readies = len(notify.times("READY", "1"))
        daemon.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        _stop(daemon)
        sim.terminate()
        sim.wait(timeout=10)
        notify.close()

    text = log.read_text()
    assert len(notify.times("READY", "1")) <= readies + 1  # at most the reload under way
    assert notify.values("STOPPING") == ["1"]
    db = Database(db_url)
    a = schema.audit_log.c
    slow = [row.ts.timestamp() for row in db.readings_between(reloaded_from + 10, 2e9)
            if row.channel == "analyzer.n2o" and row.ts.timestamp() > reloaded_from + 10]
    changes = db._fetch(select(a.action, a.after).where(a.action.like("config.%"))
                        .order_by(a.id))
    runs = db._fetch(schema.daemon_runs.select().order_by(schema.daemon_runs.c.id))
    minutes = db.aggregates_between(schema.minutes, 0, 2e9)
    db.close()
    # the new poll interval is in force: readings 4 s apart on the 4 s grid
    assert slow and {round(t) % 4 for t in slow} == {0}
    assert all(b - a == 4.0 for a, b in itertools.pairwise(slow))
    # the audit log has the configuration at start and the change, with its text
    assert [c.action for c in changes] == ["config.load", "config.change"]
    assert '"spare"' in json.loads(changes[1].after)["text"]
    assert runs[0].exit_reason == "reloading the configuration"
    # the SIGTERM stopped the daemon, or the reload it interrupted, and nothing ran after
    assert runs[-1].exit_reason in ("signal SIGTERM", "reloading the configuration")
    assert 'stop requested reason="signal SIGTERM"' in text
    after_stop = text[text.rindex("stop requested"):].splitlines()
    assert not [line for line in after_stop if "reloading the configuration file" in line]
    assert "cemsd.daemon stopped" in after_stop[-1] or "during_reload=True" in after_stop[-1]
    assert len(runs) >= 3 and all(run.stopped_at is not None for run in runs)
    assert not [k for k, n in Counter((m.channel, m.ts) for m in minutes).items() if n > 1]
    assert "reloading the configuration" in text
