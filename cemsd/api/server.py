"""Serving the API with uvicorn: inside the daemon (ApiComponent, in a thread of its own
with its own event loop, decision 0110) or standalone (`cemsd serve`, read-only). Sealing
final hours is the daemon's own (cemsd/sealing.py).

uvicorn runs on a socket bound here, so a port already in use is our error to report, and
with its signal capture switched off: only the CLI handles signals (uvicorn would replace
the daemon's SIGTERM handler otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread
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
# Threads that run the synchronous routes (database reads, reports): a bounded pool, so a
# burst of requests queues instead of spawning threads that all contend for the GIL.
WORKER_THREADS = 8


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
                                    log_config=None, access_log=settings.access_log,
                                    lifespan="off", server_header=False,
                                    timeout_graceful_shutdown=STOP_SECONDS / 2, **tls))


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
    anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        server.config.app.state.api.heavy.close()


class ApiComponent:
    """The daemon's API, served from a thread of its own with its own event loop: however
    many requests arrive and however long they take, they never run on the loop that polls
    the buses (decision 0110). What it needs from the running daemon (the status page) it
    asks that loop for, as a snapshot (cemsd/status.py). A port that cannot be bound is
    logged and retried; acquisition goes on."""

    name = "api"

    def __init__(self, config: Config) -> None:
        assert config.api is not None
        self.config = config
        self.settings = config.api
        self.db: Database | None = None
        self.server: ApiServer | None = None
        self.live: LiveStatus | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the API's own loop
        self._stopping: asyncio.Event | None = None
        self._tell_supervisor: Callable[..., Any] = lambda *_: None

    async def start(self, daemon: Daemon) -> None:
        from cemsd.status import LiveStatus

        # the operator's status page (/status): snapshots taken on this, the daemon's loop
        daemon_loop = asyncio.get_running_loop()
        self.live = LiveStatus(daemon, daemon_loop)
        # a task of the supervisor's like the others (status, metrics, crash loops); the
        # thread reports to it on the daemon's loop, never waiting for that loop
        daemon.supervisor.adopt(self.name)
        self._tell_supervisor = lambda method, *args: daemon_loop.call_soon_threadsafe(
            getattr(daemon.supervisor, method), self.name, *args)
        # Its own connections: API reads never queue behind the daemon's writes.
        self.db = Database(self.config.storage.database_url)
        running = threading.Event()
        self._thread = threading.Thread(target=self._run_thread, args=(running,),
                                        name="cemsd-api", daemon=True)
        self._thread.start()
        await asyncio.to_thread(running.wait, STARTUP_SECONDS)
        await self._wait_listening()

    def _run_thread(self, running: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            running.set()
            await self._serve_forever(self._stopping)

        try:
            asyncio.run(main())
        except Exception as exc:  # never expected: say so, acquisition goes on without it
            self._tell_supervisor("failed_elsewhere", exc, math.inf)
        finally:
            running.set()

    async def _wait_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_SECONDS
        while not (self.server and self.server.started) and loop.time() < deadline:
            if self._thread is None or not self._thread.is_alive():
                return
            await asyncio.sleep(0.02)

    async def _serve_forever(self, stopping: asyncio.Event) -> None:
        """On the API's loop: listen, serve, and listen again after a failure."""
        assert self.db is not None
        failing = False
        while not stopping.is_set():
            try:
                sock = listen(self.settings.host, self.settings.port)
            except CemsdError as exc:  # the supervisor logs it at ERROR and shows it
                self._tell_supervisor("failed_elsewhere", exc, REBIND_SECONDS)
                failing = True
                await _wait(stopping, REBIND_SECONDS)
                continue
            if failing:
                self._tell_supervisor("running_again")
            failing = False
            self.server = build_server(self.config, self.db, self.settings, self.live)
            log.info("api listening", extra={"host": self.settings.host,
                                              "port": sock.getsockname()[1],
                                              "tls": self.settings.tls})
            try:
                await serve(self.server, sock)
            except Exception as exc:  # e.g. an unreadable certificate: acquiring goes on
                self._tell_supervisor("failed_elsewhere", exc, REBIND_SECONDS)
                failing = True
                await _wait(stopping, REBIND_SECONDS)
            if self.server.should_exit:
                return

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if self.server is not None:
            self.server.should_exit = True  # uvicorn closes connections and returns
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join, STOP_SECONDS)
        if thread.is_alive():  # a request handler stuck in the database: leave it behind
            log.error("api thread did not stop in time", extra={"seconds": STOP_SECONDS})
            return
        assert self.db is not None
        self.db.close()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
