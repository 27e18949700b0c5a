"""How fast the MQTT outbox drains a backlog to a local mosquitto (messages per second).

A backlog of minute messages is written to a fresh SQLite outbox, then the daemon's
publisher connects to a private mosquitto on 127.0.0.1 and sends it all (QoS 1, marked
sent after each PUBACK). For scale: a plant with 30 series produces 30 messages a minute,
so a day without a broker is about 43,000 messages. Usage:
    .venv/bin/python bench/bench_mqtt_drain.py [--messages 20000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from cemsd.clock import WallClock
from cemsd.config import load_config
from cemsd.mqtt import MqttPublisher
from cemsd.outbox import Outbox, OutboxMessage
from cemsd.store.database import Database
from cemsd.store.writer import Store

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from benchlib import free_port, machine_info, wait_port  # noqa: E402


def start_broker(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = base / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return broker, port


async def drain(base: Path, port: int, messages: int, batch: int) -> float:
    text = (REPO / "config" / "demo.toml").read_text()
    text += f'\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\nbatch_size = {batch}\n'
    (base / "cemsd.toml").write_text(text)
    config = load_config(base / "cemsd.toml")
    db = Database(f"sqlite:///{base / 'cemsd.db'}")
    db.upgrade()
    payload = json.dumps({"channel": "outlet.n2o_kg_h", "value": 50.4867, "flag": "N"})
    Outbox(db).append([OutboxMessage(f"cemsd/demo/minute/ch{i % 30}", payload)
                       for i in range(messages)], time.time())
    store = Store(db)
    daemon = SimpleNamespace(store=store, clock=WallClock(), period_listeners=[],
                             event_listeners=[])
    publisher = MqttPublisher(config, config.mqtt)  # type: ignore[arg-type]
    started = time.perf_counter()
    await publisher.start(daemon)  # type: ignore[arg-type]
    while await store.call(publisher.outbox.unsent_count):  # noqa: ASYNC110 - a DB count
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    await publisher.stop()
    await store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cemsd-bench-mqtt-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            elapsed = asyncio.run(drain(Path(tmp), port, args.messages, args.batch))
        finally:
            broker.terminate()
            broker.wait()
    print(machine_info())
    print(f"drained "
          f"{args.messages} messages (batch {args.batch}) in {elapsed:.2f} s = "
          f"{args.messages / elapsed:.0f} messages/s")


if __name__ == "__main__":
    main()
