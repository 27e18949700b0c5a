"""Serving the API with uvicorn: inside the daemon (ApiComponent) or standalone
(`cemsd serve`, read-only). Sealing final hours is the daemon's own (cemsd/sealing.py).

uvicorn runs on a socket bound here, so a port already in use is our error to report, and
with its signal capture switched off: only the CLI handles signals (uvicorn would replace
the daemon's SIGTERM handler otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from cemsd.errors import CemsdError
from cemsd.settings.api import ApiConfig
from cemsd.store.database import Database

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.daemon import Daemon
    from cemsd.status import LiveStatus

log = logging.getLogger(__name__)
REBIND_SECONDS = 30.0  # wall time between attempts to listen after a failure
STARTUP_SECONDS = 10.0
STOP_SECONDS = 5.0


class _PlainMessages(logging.Filter):
    """uvicorn adds a terminal-coloured copy of some messages; our log lines carry extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


logging.getLogger("uvicorn.error").addFilter(_PlainMessages())


class ApiServer(uvicorn.Server):
    """uvicorn's server without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(config: Config, db: Database, settings: ApiConfig,
                 live: LiveStatus | None = None) -> ApiServer:
    from cemsd.api.app import create_app

    app = create_app(db, settings, config.plant.tz, config, live)
    tls: dict[str, Any] = {}
    if settings.tls:
        tls = {"ssl_certfile": str(settings.tls_certfile),
               "ssl_keyfile": str(settings.tls_keyfile)}
    return ApiServer(uvicorn.Config(app, host=settings.host, port=settings.port,
                                    log_config=None, access_log=settings.access_log, lifespan="off",
                                    server_header=False, **tls))


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or CemsdError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        raise CemsdError(f"api: cannot listen on {host}:{port}: {exc}") from exc
    return sock


async def serve(server: ApiServer, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()


class ApiComponent:
    """The daemon's API. A port that cannot be bound is logged and retried; acquisition
    goes on."""

    name = "api"

    def __init__(self, config: Config) -> None:
        assert config.api is not None
        self.config = config
        self.settings = config.api
        self.daemon: Daemon | None = None
        self.db: Database | None = None
        self.server: ApiServer | None = None
        self.live: LiveStatus | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, daemon: Daemon) -> None:
        from cemsd.status import LiveStatus

        self.daemon = daemon
        self.live = LiveStatus(daemon)  # the operator's status page (/status)
        # Its own connections: API reads never queue behind the daemon's writes.
        self.db = Database(self.config.storage.database_url)
        self._tasks = [daemon.supervisor.spawn("api", self._serve_forever)]
        await self._wait_listening()

    async def _wait_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_SECONDS
        while not (self.server and self.server.started) and loop.time() < deadline:
            if self._tasks[0].done():
                return
            await asyncio.sleep(0.02)

    async def _serve_forever(self) -> None:
        assert self.db is not None
        failing = False
        while True:
            try:
                sock = listen(self.settings.host, self.settings.port)
            except CemsdError as exc:
                if not failing:
                    log.error("api not serving, retrying", extra={"error": str(exc)})
                failing = True
                await asyncio.sleep(REBIND_SECONDS)
                continue
            if failing:
                log.info("api serving again")
            failing = False
            self.server = build_server(self.config, self.db, self.settings, self.live)
            log.info("api listening", extra={"host": self.settings.host,
                                              "port": sock.getsockname()[1],
                                              "tls": self.settings.tls})
            try:
                await serve(self.server, sock)
            except Exception:  # e.g. an unreadable certificate: keep acquiring, try again
                log.exception("api server failed, retrying")
                await asyncio.sleep(REBIND_SECONDS)
            if self.server.should_exit:
                return

    async def stop(self) -> None:
        if not self._tasks:
            return
        [serving] = self._tasks
        if self.server is not None:
            self.server.should_exit = True  # uvicorn closes connections and returns
        _, pending = await asyncio.wait([serving], timeout=STOP_SECONDS)
        for task in pending:  # waiting to bind again
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        assert self.db is not None
        self.db.close()
