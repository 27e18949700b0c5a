"""A real mosquitto broker for tests, a TCP proxy that can cut a client's connection, and a
subscriber that records every message it receives (duplicates included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from helpers import free_port

MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto:
    """mosquitto on 127.0.0.1 with a private config, persistence in its own folder.

    Persistence is on so a subscriber's persistent session (its subscription and the QoS 1
    messages queued while it is away) survives a kill -9 once saved with `save()`.
    """

    def __init__(self, base: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = base / "mosquitto.log"
        self.conf = base / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            *(extra or ("allow_anonymous true",)),
            "persistence true",
            f"persistence_location {base}/",
            "max_queued_messages 0",  # no cap on what waits for an offline subscriber
            "user root" if os.geteuid() == 0 else "",  # keep access to the temporary folder
            f"log_dest file {self.log}",
            "log_type all",
        ]) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.log_text()[-2000:]}")
            time.sleep(0.05)

    def save(self) -> None:
        """Write the persistence database now (SIGUSR1) and wait until it is written."""
        assert self.process is not None
        before = self.log_text().count("Saving in-memory database")
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self.log_text().count("Saving in-memory database") == before:
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not save its database")
            time.sleep(0.05)
        time.sleep(0.2)  # the log line comes before the file is complete

    def kill(self) -> None:
        """kill -9: no goodbye to anyone, nothing saved."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class CuttableProxy:
    """TCP forwarder on 127.0.0.1: `cut()` drops every connection abruptly (no MQTT
    DISCONNECT, like a crashed client or a broken link); while `refusing`, new connections
    are closed at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.refusing = False
        self.connections = 0
        self._transports: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._transports += [writer, up_writer]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)

    def cut(self) -> None:
        for writer in self._transports:
            writer.transport.abort()
        self._transports.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@dataclass
class Received:
    topic: str
    body: dict[str, Any]
    retain: bool


@dataclass
class Subscriber:
    """Subscribes to `topic` with QoS 1 on a persistent session and records every message,
    reconnecting when the broker goes away (the broker keeps its queue meanwhile)."""

    port: int
    topic: str
    client_id: str = "test-subscriber"
    messages: list[Received] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id,
                                          clean_session=False, keepalive=10) as client:
                    self.connections += 1
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = bytes(message.payload or b"").decode()  # type: ignore[arg-type]
                        self.messages.append(Received(str(message.topic), json.loads(payload),
                                                      message.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def data(self) -> list[Received]:
        """Outbox messages (they carry an id), in arrival order."""
        return [m for m in self.messages if "id" in m.body]

    def status(self) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith("/status")]


async def retained(port: int, topic: str, client_id: str = "test-retained") -> Received:
    """What a newcomer sees on `topic`: the retained message."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = bytes(message.payload or b"").decode()  # type: ignore[arg-type]
                return Received(str(message.topic), json.loads(payload), message.retain)
    raise AssertionError("unreachable")


async def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Wall-clock wait in the event loop (the daemon keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)
