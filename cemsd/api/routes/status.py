"""The operator's status page: `GET /status` is a static page (HTML, CSS and JavaScript
shipped with the package, no build step, nothing fetched from elsewhere) that asks for a
token and then polls `GET /v1/status` (token required) every few seconds.

`/v1/status` is the page's own data, collected from the running daemon (cemsd/status.py):
it is left out of the registry's OpenAPI document and answers 503 where no daemon runs
(`cemsd serve`).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from cemsd.errors import StorageError
from cemsd.settings.api import ApiConfig

STATIC = files("cemsd.api") / "static"
ASSETS = {"status.html": "text/html; charset=utf-8", "status.css": "text/css; charset=utf-8",
          "status.js": "text/javascript; charset=utf-8"}
# The page loads only its own files and talks only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    body = (STATIC / name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers=PAGE_HEADERS)


def page_routes() -> APIRouter:
    """The page itself: public, it holds no data."""
    router = APIRouter(include_in_schema=False)

    @router.get("/status")
    def page() -> Response:
        return _asset("status.html")

    @router.get("/status/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS or name == "status.html":
            raise HTTPException(status_code=404)
        return _asset(name)

    return router


def routes(settings: ApiConfig) -> APIRouter:
    """The page's data: behind the token like every /v1 route."""
    router = APIRouter(include_in_schema=False)

    @router.get("/status")
    async def status(request: Request) -> Any:
        live = request.app.state.live
        if live is None:
            raise HTTPException(status_code=503, detail="live status needs the running daemon "
                                                        "(cemsd run with [api]), not cemsd serve")
        try:
            data = await live.collect(request.app.state.api.db)
        except StorageError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        from cemsd.api.routes.keys import signing_info

        data["signing"] = signing_info(request)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    return router
