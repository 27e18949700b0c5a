"""MQTT output against a real mosquitto broker, with the daemon on a virtual clock.

- The broker is killed (SIGKILL) for half an hour of simulated time and restarted: every
  minute and hourly message of the run arrives, in outbox order, each at least once;
  any duplicate must be a message whose batch was handed to the broker more than once.
- A connection cut between daemon and broker (a proxy drops it, no DISCONNECT) while a
  backlog drains: the broker publishes the retained last will "offline", the daemon
  re-publishes "online" on reconnect and resends what was not acknowledged.
- The outbox survives a daemon restart; TLS with a password works and a wrong password
  is reported without the password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import delete, select

from cemsd.clock import VirtualClock
from cemsd.config import Config
from cemsd.errors import ConfigError
from cemsd.mqtt import MqttPublisher
from cemsd.outbox import Outbox
from cemsd.periods import local_label, utc_label
from cemsd.store import schema
from helpers import RunningDaemon, database, free_port, write_config, write_scenario
from mqtt_helpers import CuttableProxy, Mosquitto, Subscriber, retained, wait_until
from simulators.scenario import Scenario

START = "2026-06-01T00:00:00+08:00"  # local midnight: hours close on the hour
MINUTE, HOUR = 60.0, 3600.0
PLANT = "mq"
TOPICS = f"cemsd/{PLANT}/#"


def _plant(tmp: Path, mqtt: dict[str, Any], analyzers: int = 1) -> tuple[Config, Scenario]:
    sim_port = free_port()
    names = [f"analyzer{i}" for i in range(1, analyzers + 1)]
    scenario = write_scenario(tmp, {
        "start": START, "seed": 5,
        "buses": [{"name": "a", "transport": "tcp", "port": sim_port}],
        "devices": [{"name": name, "bus": "a", "device_id": i, "profile": _profile(i),
                     "signals": {"n2o": {"base": 40.0 * i, "noise": 1.0}}}
                    for i, name in enumerate(names, 1)],
    })
    config = write_config(tmp, {
        "plant": {"id": PLANT, "timezone": "Asia/Shanghai"},
        "points": {"outlet": {}},
        "buses": [{"name": "a", "transport": "tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [{"name": name, "bus": "a", "device_id": i, "profile": _profile(i),
                     "poll_interval": 5.0} for i, name in enumerate(names, 1)],
        "mqtt": {"host": "127.0.0.1", "backoff_initial": 0.05, "backoff_max": 0.5,
                 "keepalive": 10, "connect_timeout": 2.0, "batch_size": 50, **mqtt},
    })
    return config, scenario


def _profile(device_id: int) -> str:
    """The first analyzer measures the outlet (a derived mass series follows), others have
    no role."""
    return "n2o-analyzer-ppm" if device_id == 1 else "n2o-analyzer"


def _publisher(run: RunningDaemon) -> MqttPublisher:
    return next(c for c in run.daemon.components if isinstance(c, MqttPublisher))


async def _unsent(run: RunningDaemon) -> int:
    assert run.daemon.store is not None
    return await run.daemon.store.call(Outbox(run.daemon.store.db).unsent_count)


def _outbox_rows(config: Config) -> list[Any]:
    db = database(config)
    try:
        with db.engine.connect() as conn:
            return list(conn.execute(select(schema.mqtt_outbox).order_by(schema.mqtt_outbox.c.id)))
    finally:
        db.close()


def _delete_outbox_rows(config: Config, period_start: Any) -> int:
    db = database(config)
    try:
        with db.engine.begin() as conn:
            c = schema.mqtt_outbox.c
            return conn.execute(delete(schema.mqtt_outbox)
                                .where(c.period_start == period_start)).rowcount
    finally:
        db.close()


def _stored(config: Config, table: Any) -> list[Any]:
    db = database(config)
    try:
        with db.engine.connect() as conn:
            return list(conn.execute(select(table).order_by(table.c.ts, table.c.channel)))
    finally:
        db.close()


def _check_delivery(sub: Subscriber, rows: list[Any]) -> int:
    """Every outbox row arrived; first arrivals in id order; duplicates only of rows that
    went out in more than one batch. Returns the number of duplicates."""
    ids = [m.body["id"] for m in sub.data()]
    assert all(r.sent_at is not None for r in rows), "an acknowledged row is not marked sent"
    assert set(ids) == {r.id for r in rows}, "messages missing or unknown"
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen), "first arrivals out of outbox order"
    attempts = {r.id: r.attempts for r in rows}
    duplicates = {i: n - 1 for i, n in Counter(ids).items() if n > 1}
    unexplained = [i for i in duplicates if attempts[i] < 2]
    assert not unexplained, f"duplicates of rows published only once: {unexplained}"
    by_id = {m.body["id"]: m for m in sub.data()}
    for row in rows:  # the topic and payload the outbox holds, plus the id
        assert by_id[row.id].topic == row.topic
        assert by_id[row.id].body == {"id": row.id, **json.loads(row.payload)}
    return sum(duplicates.values())


def _check_periods_published(config: Config, sub: Subscriber) -> None:
    """Each stored minute and hour is one message on its topic with its stored values."""
    tz = config.plant.tz
    for kind, table in (("minute", schema.minutes), ("hour", schema.hours)):
        stored = _stored(config, table)
        assert stored, f"no {kind} stored"
        messages = {(m.body["channel"], m.body["start"]): m for m in sub.data()
                    if m.topic.startswith(f"cemsd/{PLANT}/{kind}/")}
        assert len(messages) == len(stored)
        for row in stored:
            ts = row.ts.timestamp()
            message = messages[(row.channel, utc_label(ts))]
            assert message.topic == f"cemsd/{PLANT}/{kind}/{row.channel}"
            body = message.body
            assert body["local_start"] == local_label(ts, tz)
            assert (body["value"], body["flag"], body["n_valid"], body["n_expected"],
                    body["unit"], body["reason"]) == (row.value, row.flag, row.n_valid,
                                                      row.n_expected, row.unit, row.reason)
            assert body["valid"] == (row.flag == "N")


@pytest.fixture
def broker(tmp_path: Path) -> Mosquitto:
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()


async def test_broker_killed_and_restarted_loses_nothing(tmp_path: Path,
                                                         broker: Mosquitto) -> None:
    config, scenario = _plant(tmp_path, {"port": broker.port})
    t0 = scenario.epoch
    kill_at, restart_at = t0 + 50 * MINUTE + 30, t0 + 80 * MINUTE + 30  # across 01:00
    end = t0 + 2 * HOUR + 90
    async with Subscriber(broker.port, TOPICS) as sub:
        broker.save()  # the subscriber's persistent session survives the kill
        async with RunningDaemon(config, scenario, until=end) as run:
            publisher = _publisher(run)
            with run.clock.participant():  # simulated time stands still while we act
                await run.clock.sleep_until(kill_at)
                await _wait_drained(run, sub)
                sent_before = len(sub.data())
                broker.kill()
                await run.clock.sleep_until(restart_at)
                await run.closed_through(restart_at)
                # Everything closed during the outage waits in the outbox: the 30 minutes
                # from 00:50 and the hour 00:00, one message per channel each.
                minutes = [r for r in _stored(config, schema.minutes)
                           if kill_at - 30 <= r.ts.timestamp() < restart_at - 30]
                hours = [r for r in _stored(config, schema.hours) if r.ts.timestamp() == t0]
                assert len(minutes) == 30 * len(hours) and hours
                assert await _unsent(run) == len(minutes) + len(hours)
                assert not publisher.connected
                assert len(sub.data()) == sent_before  # nothing arrived meanwhile
                broker.start()  # same port, the subscriber's session restored
            await run.finished()
        rows = _outbox_rows(config)
        await wait_until(lambda: {m.body["id"] for m in sub.data()} >= {r.id for r in rows},
                         what="every outbox message delivered")
        # the "offline" of the daemon's stop may come after the outbox's last message
        await wait_until(lambda: any(m.body["state"] == "offline" for m in sub.status()
                                     if not m.retain), what="the daemon's offline status")
    duplicates = _check_delivery(sub, rows)
    # Killed while idle (all acknowledged), so nothing had to go out twice.
    assert duplicates == 0
    _check_periods_published(config, sub)
    live = [m.body for m in sub.status() if not m.retain]
    assert [s["state"] for s in live] == ["online", "online", "offline"]
    assert live[-1]["reason"] == "stopped"
    assert publisher.connections == 2


async def _wait_drained(run: RunningDaemon, sub: Subscriber) -> None:
    for _ in range(1000):
        if await _unsent(run) == 0:
            break
        await asyncio.sleep(0.02)
    assert run.daemon.store is not None
    rows = await run.daemon.store.call(Outbox(run.daemon.store.db).next_batch, 1)
    assert rows == []
    total = len(_outbox_rows(run.daemon.config))
    await wait_until(lambda: len({m.body["id"] for m in sub.data()}) == total,
                     what="subscriber caught up")


async def test_cut_connection_last_will_online_again_and_resend(tmp_path: Path,
                                                               broker: Mosquitto) -> None:
    proxy = CuttableProxy(broker.port)
    await proxy.start()
    proxy.refusing = True  # the daemon's link is down from the start: a backlog builds
    config, scenario = _plant(tmp_path, {"port": proxy.port}, analyzers=2)
    t0 = scenario.epoch
    status = f"cemsd/{PLANT}/status"
    try:
        async with Subscriber(broker.port, TOPICS) as sub:
            async with RunningDaemon(config, scenario, until=t0 + 2 * HOUR + 90) as run:
                publisher = _publisher(run)
                with run.clock.participant():
                    await run.clock.sleep_until(t0 + 2 * HOUR + 30)
                    backlog = await _unsent(run)
                    assert backlog > 500
                    proxy.refusing = False
                    await wait_until(lambda: len(sub.data()) >= 120, what="drain under way")
                    proxy.cut()  # no DISCONNECT: the broker must publish the last will
                    proxy.refusing = True
                    await wait_until(lambda: _states(sub)[-1:] == ["offline"],
                                     what="last will")
                    assert sub.status()[-1].body["reason"] == "connection lost"
                    newcomer = await retained(broker.port, status)
                    assert newcomer.retain and newcomer.body["state"] == "offline"
                    assert 0 < await _unsent(run) < backlog
                    proxy.refusing = False
                    await wait_until(lambda: _states(sub)[-1:] == ["online"],
                                     what="online re-published")
                    newcomer = await retained(broker.port, status, "test-retained-2")
                    assert newcomer.retain and newcomer.body["state"] == "online"
                await run.finished()
            rows = _outbox_rows(config)
            await wait_until(lambda: {m.body["id"] for m in sub.data()} >= {r.id for r in rows},
                             what="every outbox message delivered")
            await wait_until(lambda: _states(sub)[-1:] == ["offline"],
                             what="the daemon's offline status at its stop")
    finally:
        await proxy.stop()
    duplicates = _check_delivery(sub, rows)
    resent = sum(1 for r in rows if r.attempts > 1)
    # The cut came mid-batch: rows handed over but not acknowledged went out again. Each
    # duplicate is one of those; some of them never reached the broker the first time.
    assert duplicates <= resent
    print(f"cut mid-drain: {len(rows)} messages, {resent} resent, {duplicates} duplicates")
    _check_periods_published(config, sub)
    assert publisher.connections == 2
    assert _states(sub) == ["online", "offline", "online", "offline"]


def _states(sub: Subscriber) -> list[str]:
    return [m.body["state"] for m in sub.status() if not m.retain]


async def test_outbox_survives_a_daemon_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started: the first run has no broker
    config, scenario = _plant(tmp_path, {"port": broker.port})
    t0 = scenario.epoch
    first_end, second_end = t0 + 20 * MINUTE + 30, t0 + HOUR + 30
    async with RunningDaemon(config, scenario, until=first_end) as run:
        await run.finished()
    stored_first = len(_stored(config, schema.minutes))
    unsent_first = [r.id for r in _outbox_rows(config) if r.sent_at is None]
    heads = [r for r in _outbox_rows(config) if r.topic.endswith("/chain/head")]
    assert len(heads) == 1 and heads[0].retain  # the chain head (the config.load record)
    # the minutes, the chain's first link (`chain.links`, for a central witness) and its
    # head, the channel list published at start
    assert stored_first > 0 and len(unsent_first) == stored_first + 3
    assert sum(r.topic.endswith("/events/channels") for r in _outbox_rows(config)) == 1
    # As if the daemon had died between storing its last minute and appending the
    # minute's messages (two transactions): the restart must add them.
    last_minute = max(r.period_start for r in _outbox_rows(config) if r.period_start)
    lost = _delete_outbox_rows(config, last_minute)
    unsent_first = unsent_first[:-lost]
    broker.start()
    try:
        async with Subscriber(broker.port, TOPICS) as sub:
            clock = VirtualClock(first_end)
            async with RunningDaemon(config, scenario, until=second_end, clock=clock) as run:
                await run.finished()
            rows = _outbox_rows(config)
            await wait_until(lambda: {m.body["id"] for m in sub.data()} >= {r.id for r in rows},
                             what="every outbox message delivered")
    finally:
        broker.stop()
    assert _check_delivery(sub, rows) == 0
    ids = [m.body["id"] for m in sub.data()]
    assert ids[: len(unsent_first)] == unsent_first  # the first run's backlog went out first
    added = [m.body for m in sub.data()[len(unsent_first):len(unsent_first) + lost]]
    assert {b["start"] for b in added} == {utc_label(last_minute.timestamp())}
    assert len(rows) > len(unsent_first) + lost
    _check_periods_published(config, sub)  # every stored minute, the re-added ones too


# --- TLS and credentials ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1 (openssl)."""
    base = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=base, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=cemsd test CA", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (base / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return {name: base / name for name in ("ca.pem", "server.pem", "server.key")}


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    """mosquitto's password file with user cemsd, password s3cret-pw."""
    path = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", "-c",
                    str(path), "cemsd", "s3cret-pw"], check=True, capture_output=True)
    return path


async def test_tls_with_password_and_a_wrong_password(
    tmp_path: Path, certificates: dict[str, Path], passwords: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Mosquitto(tmp_path / "broker", extra=(
        f"cafile {certificates['ca.pem']}", f"certfile {certificates['server.pem']}",
        f"keyfile {certificates['server.key']}", "allow_anonymous false",
        f"password_file {passwords}"))
    broker.start()
    monkeypatch.setenv("CEMSD_TEST_MQTT_PASSWORD", "wrong-pw-123")
    (tmp_path / "ca.pem").write_bytes(certificates["ca.pem"].read_bytes())
    mqtt = {"port": broker.port, "username": "cemsd", "password_env": "CEMSD_TEST_MQTT_PASSWORD",
            "tls": {"ca_file": "ca.pem"}}  # relative to the configuration file
    config, scenario = _plant(tmp_path, mqtt)
    t0 = scenario.epoch
    try:
        caplog.set_level(logging.DEBUG)
        async with RunningDaemon(config, scenario, until=t0 + 5 * MINUTE + 30) as run:
            await run.finished()
        assert not _publisher(run).connections
        refused = [r for r in caplog.records
                   if r.getMessage().startswith("mqtt broker refused the credentials")]
        assert refused and refused[0].levelno == logging.ERROR
        assert "authori" in str(getattr(refused[0], "error", "")).lower()
        assert _publisher(run).refused is not None
        assert "wrong-pw-123" not in caplog.text and "wrong-pw-123" not in repr(config)
        backlog = len(_outbox_rows(config))
        assert backlog > 0

        monkeypatch.setenv("CEMSD_TEST_MQTT_PASSWORD", "s3cret-pw")
        received: list[dict[str, Any]] = []
        tls = aiomqtt.TLSParameters(ca_certs=str(certificates["ca.pem"]))
        async with aiomqtt.Client("127.0.0.1", broker.port, username="cemsd",
                                  password="s3cret-pw", tls_params=tls) as client:
            await client.subscribe(TOPICS, qos=1)
            clock = VirtualClock(t0 + 5 * MINUTE + 30)
            async with RunningDaemon(config, scenario, until=t0 + 8 * MINUTE + 30,
                                     clock=clock) as run:
                await run.finished()
            total = len(_outbox_rows(config))
            async with asyncio.timeout(20):
                async for message in client.messages:
                    received.append(json.loads(bytes(message.payload).decode()))  # type: ignore[arg-type]
                    if received[-1].get("state") == "offline":  # the stopped daemon's last word
                        break
    finally:
        broker.stop()
    assert [r["id"] for r in received if "id" in r] == list(range(1, total + 1))
    assert [r["state"] for r in received if "state" in r] == ["online", "offline"]
    assert total > backlog
    assert "s3cret-pw" not in caplog.text


# --- configuration ---------------------------------------------------------------------------


def test_mqtt_configuration_problems_are_reported(tmp_path: Path) -> None:
    os.environ.pop("CEMSD_TEST_NOT_SET", None)
    mqtt = {"host": "broker", "password": "a", "password_file": "missing.txt",
            "topic_prefix": "cemsd/+/x", "tls": {"cert_file": "client.pem"}}
    with pytest.raises(ConfigError) as caught:
        _plant(tmp_path, mqtt)
    found = [(p.path, p.message) for p in caught.value.problems]
    assert {path for path, _ in found} == {"mqtt.topic_prefix", "mqtt.password_file",
                                           "mqtt.tls.cert_file"}
    assert ("mqtt.password_file", "give one password source, not password and "
            "password_file") in found
    assert ("mqtt.tls.cert_file",
            "a client certificate needs both cert_file and key_file") in found
    with pytest.raises(ConfigError) as caught:
        _plant(tmp_path, {"host": "b", "username": "u", "password_env": "CEMSD_TEST_NOT_SET",
                          "qos": 2})
    assert {p.path for p in caught.value.problems} == {"mqtt.qos"}  # schema first
    with pytest.raises(ConfigError) as caught:
        _plant(tmp_path, {"host": "b", "username": "u", "password_env": "CEMSD_TEST_NOT_SET"})
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("mqtt.password_env", "environment variable CEMSD_TEST_NOT_SET is not set")]


def test_defaults_follow_the_plant(tmp_path: Path) -> None:
    config, _ = _plant(tmp_path, {"password": "hidden-1", "username": "u"})
    publisher = MqttPublisher(config, config.mqtt)  # type: ignore[arg-type]
    assert publisher.topics.status == f"cemsd/{PLANT}/status"
    assert config.mqtt is not None and config.mqtt.broker_port == 1883
    assert "hidden-1" not in repr(config) and "hidden-1" not in str(config.mqtt)


def test_event_messages_are_strict_json_on_a_safe_topic(tmp_path: Path) -> None:
    config, _ = _plant(tmp_path, {})
    topics = MqttPublisher(config, config.mqtt).topics  # type: ignore[arg-type]
    at = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
    message = topics.event_message("bypass/valve #1", {"active": True, "since": at,
                                                       "flow": float("nan"), "path": [1.5]},
                                   at.timestamp())
    assert message.topic == f"cemsd/{PLANT}/events/bypass_valve__1"
    assert json.loads(message.payload) == {
        "plant": PLANT, "kind": "bypass/valve #1", "at": "2026-06-01T06:00:00Z",
        "data": {"active": True, "since": str(at), "flow": None, "path": [1.5]}}
    assert (message.qos, message.retain) == (1, False)


async def test_refused_credentials_are_an_error_visible_in_status_and_metrics(
    tmp_path: Path, passwords: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password is not an unreachable broker: logged at ERROR as a refusal, shown
    in the status and the metrics, and retried at refused_backoff, not every few seconds."""
    from cemsd.metrics import Metrics
    from cemsd.qaqc.views import fault_lines
    from cemsd.status import LiveStatus

    broker = Mosquitto(tmp_path / "broker", extra=("allow_anonymous false",
                                                    f"password_file {passwords}"))
    broker.start()
    config, scenario = _plant(tmp_path, {"port": broker.port, "username": "cemsd",
                                         "password": "wrong-pw", "backoff_max": 60.0,
                                         "refused_backoff": 0.5})
    caplog.set_level(logging.INFO)

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.getMessage().startswith("mqtt broker refused the credentials")]

    try:
        clock = VirtualClock(scenario.epoch, speed=1.0)
        async with RunningDaemon(config, scenario, until=scenario.epoch + 3600,
                                 clock=clock) as run:
            await wait_until(lambda: len(refusals()) >= 3, what="three refusals")
            metrics = Metrics()
            metrics.attach(run.daemon)
            snapshot = await metrics.refresh()
            assert run.daemon.store is not None
            status = await LiveStatus(run.daemon).collect(run.daemon.store.db)
            run.daemon.request_stop("test over")
            await run.finished()
    finally:
        broker.stop()
    assert all(r.levelno == logging.ERROR for r in refusals())
    assert "not authori" in str(getattr(refusals()[0], "error", "")).lower()
    assert not any(r.getMessage() == "mqtt broker unreachable" for r in caplog.records)
    assert snapshot.mqtt_refused and snapshot.mqtt_connected is False
    assert "authori" in status["outputs"]["mqtt_refused"].lower()
    assert fault_lines(status)[0].startswith("MQTT broker REFUSES the credentials: ")
    assert "wrong-pw" not in caplog.text
