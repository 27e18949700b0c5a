"""The daemon's local control socket: how technicians' commands reach the running daemon.

The daemon owns every Modbus link, so `cemsd calibrate` and `cemsd maintenance` do not
open their own: they send one request to a Unix socket in the state directory (mode 0660:
the daemon's user and group) and print the daemon's progress lines and result.

Protocol: the client writes one JSON object and a newline, e.g.
    {"op": "calibrate", "channel": "inlet-analyzer.n2o", "kind": "zero", ...}
and reads JSON lines back: any number of {"progress": "..."} then exactly one
{"ok": true, "result": {...}} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from cemsd.errors import CemsdError
from cemsd.store.location import MAX_SOCKET_PATH

log = logging.getLogger(__name__)

Reply = Callable[[str], Awaitable[None]]
Handler = Callable[[dict[str, Any], Reply], Awaitable[Any]]
MAX_REQUEST_BYTES = 64 * 1024


class ControlError(CemsdError):
    """The control socket could not be used (daemon not running, bad reply)."""


class ControlServer:
    """Serves the ops the daemon registers, one JSON request per connection."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if len(str(self.path)) > MAX_SOCKET_PATH:
            raise ControlError(f"control socket path too long ({len(str(self.path))} > "
                               f"{MAX_SOCKET_PATH}): set [qaqc] control_socket to a shorter path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ControlError(f"another daemon is listening on {self.path}")
            self.path.unlink()  # left over from a daemon that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message, default=str).encode() + b"\n")
            await writer.drain()

        async def progress(text: str) -> None:
            with contextlib.suppress(ConnectionError):
                await send({"progress": text})

        try:
            request = json.loads(await reader.readline())
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            handler = self.handlers.get(str(request.get("op")))
            if handler is None:
                raise CemsdError(f"unknown op {request.get('op')!r} "
                                 f"(ops: {', '.join(sorted(self.handlers))})")
            result = await handler(request, progress)
            await send({"ok": True, "result": result})
        except (CemsdError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(ConnectionError):
                await send({"ok": False, "error": str(exc)})
        except ConnectionError:
            pass
        except Exception as exc:  # a bug must not kill the daemon; the client hears of it
            log.exception("control request failed")
            with contextlib.suppress(ConnectionError):
                await send({"ok": False, "error": f"internal error: {exc!r}"})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def request(path: Path, payload: dict[str, Any], timeout: float = 3600.0
            ) -> Iterator[dict[str, Any]]:
    """Send one request; yield the daemon's reply lines as they come (blocking client)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ControlError(f"the daemon is not running (no control socket at {path}): "
                           f"{exc.strerror}") from None
    with sock, sock.makefile("rb") as lines:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        for line in lines:
            yield json.loads(line)


async def request_async(path: Path, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The same for asyncio callers (tests, other components): all reply lines."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        return [json.loads(line) async for line in reader]
    finally:
        writer.close()
