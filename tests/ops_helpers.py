"""Test helpers for operations: a stand-in for systemd's notification socket, and a small
plant (a live analyzer and flow meter on one bus, an analyzer that never answers on
another)."""

from __future__ import annotations

import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

START = "2026-06-01T00:00:00+08:00"


class NotifyListener:
    """What systemd does with $NOTIFY_SOCKET: receive datagrams (on an abstract address,
    as systemd's own), here in a thread of its own so a blocked event loop cannot hide or
    delay what was sent. Each message is kept with its monotonic arrival time."""

    def __init__(self) -> None:
        self.address = f"@cemsd-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str | None = None) -> list[float]:
        with self._lock:
            return [t for t, f in self.messages if key in f and (value is None or f[key] == value)]

    def values(self, key: str, since: float = float("-inf")) -> list[str]:
        """The values of `key` that arrived after monotonic time `since`."""
        with self._lock:
            return [f[key] for t, f in self.messages if key in f and t > since]

    def keys_in_order(self) -> list[str]:
        """The kinds of message in arrival order (READY, WATCHDOG, STOPPING, ...), repeats
        of the same kind folded."""
        order: list[str] = []
        with self._lock:
            for _, fields in self.messages:
                kind = next((k for k in ("READY", "RELOADING", "STOPPING", "WATCHDOG")
                             if k in fields), None)
                if kind and (not order or order[-1] != kind):
                    order.append(kind)
        return order

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not received in time; got {self.keys_in_order()}")
            time.sleep(0.02)

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._sock.close()


def cemsd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cemsd", *args]


def plant(tmp: Path, live_port: int, dead_port: int, **extra: Any) -> dict[str, Any]:
    """A live N2O analyzer and a flow meter (derived N2O mass at `inlet`) on bus "a", an
    outlet analyzer on bus "b" that never answers. Poll every 2 s, short timeouts."""
    quick = {"timeout": 0.2, "retries": 0}
    return {
        "plant": {"id": "ops", "name": "Ops test plant", "timezone": "Asia/Shanghai"},
        "storage": {"state_dir": str(tmp / "state"), "batch_seconds": 0.2},
        "points": {"inlet": {"duct_area_m2": 1.0, "temperature_default_c": 20.0,
                             "pressure_default_kpa": 0.0, "moisture_default_pct": 0.0},
                   "outlet": {}},
        "buses": [{"name": "a", "transport": "tcp", "host": "127.0.0.1", "port": live_port,
                   **quick},
                  {"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": dead_port,
                   **quick}],
        "devices": [
            {"name": "analyzer", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-percent",
             "poll_interval": 2.0, "backoff_max": 1.0},
            {"name": "flow", "bus": "a", "device_id": 2, "profile": "stack-flow-meter",
             "poll_interval": 2.0, "backoff_max": 1.0, "point": "inlet",
             "channels": {k: {"enabled": False} for k in
                          ("temperature", "pressure", "moisture", "volume_flow")}},
            {"name": "stack", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "poll_interval": 2.0, "backoff_max": 60.0},
        ],
        **extra,
    }


def scenario(live_port: int, dead_port: int) -> dict[str, Any]:
    """The instruments of plant(); the stack analyzer is silent from the start."""
    return {
        "start": START,
        "buses": [{"name": "a", "transport": "tcp", "port": live_port},
                  {"name": "b", "transport": "tcp", "port": dead_port}],
        "devices": [
            {"name": "analyzer", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0, "ramp_per_hour": 0.5, "noise": 0.1}}},
            {"name": "flow", "bus": "a", "device_id": 2, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 3.0, "noise": 0.02}}},
            {"name": "stack", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-ppm"},
        ],
        "events": [{"device": "stack", "kind": "no_reply", "start": 0}],
    }
