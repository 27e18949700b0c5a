"""Running the collector: its schema migrated, the MQTT collector and (with
`[collector.api]`) the fleet registry API on one event loop, until told to stop. The
routes are synchronous, so FastAPI runs them in worker threads, off the loop that
collects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from zoneinfo import ZoneInfo

from cemsd.fleet.collector import Collector
from cemsd.fleet.settings import Collector as CollectorSettings
from cemsd.fleet.store import FleetStore

log = logging.getLogger(__name__)


class CollectorService:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.store = FleetStore(settings.database_url)
        self.collector = Collector(settings, self.store)
        self.server = None
        self.sock: socket.socket | None = None

    def prepare(self) -> None:
        """Migrate, bind the API's port: every failure before anything runs (CemsdError)."""
        from cemsd.api.server import ApiServer, listen

        self.store.upgrade()
        api = self.settings.api
        if api is None:
            return
        import uvicorn

        from cemsd.fleet.api import create_app

        app = create_app(self.store, api, ZoneInfo(self.settings.timezone), self.collector,
                         self.settings.plants)
        self.sock = listen(api.host, api.port)
        self.server = ApiServer(uvicorn.Config(app, host=api.host, port=api.port,
                                               log_config=None, access_log=api.access_log,
                                               lifespan="off", server_header=False))

    @property
    def api_port(self) -> int | None:
        return None if self.sock is None else int(self.sock.getsockname()[1])

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.collector.run(), name="collector")]
        if self.server is not None and self.sock is not None:
            tasks.append(asyncio.create_task(self.server.serve(sockets=[self.sock]),
                                             name="fleet-api"))
        log.info("collector started", extra={"database": self.store.db.location,
                                             "api_port": self.api_port})
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.close()
            self.store.close()

    def stop(self) -> None:
        self.collector.stop()
        if self.server is not None:
            self.server.should_exit = True
