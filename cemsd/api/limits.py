"""Bounded concurrency for heavy requests (decision 0111).

A report or a year of hour columns holds a worker thread, CPU and tens of megabytes for
a second or more; the daemon shares all three. At most `max_heavy_requests` are served
at once; one more gets 503 with Retry-After at once, instead of piling up behind the
others (and their memory) until every client times out.

An ASGI middleware, so the slot is held until the last byte of a streamed answer is sent.
It runs on the API's event loop only: a plain counter needs no lock.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

RETRY_AFTER_SECONDS = 5
BUSY_DESCRIPTION = (f"Too many heavy requests (reports, hour columns) at once: try again "
                    f"after `Retry-After` seconds ({RETRY_AFTER_SECONDS})")


class HeavyRequestLimit:
    """Serves at most `limit` requests to `paths` at once; 503 + Retry-After beyond."""

    def __init__(self, app: App, paths: Collection[str], limit: int) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _busy(send, self.limit)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _busy(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"busy: {limit} heavy request(s) (reports, hour columns) "
                                 f"are being served; retry after {RETRY_AFTER_SECONDS} s"})
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})
