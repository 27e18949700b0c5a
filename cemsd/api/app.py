"""The FastAPI application: read-only, versioned under /v1, token required except /health."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from cemsd import __version__
from cemsd.api.auth import require_token
from cemsd.api.heavy import HeavyWork
from cemsd.api.limits import HeavyRequestLimit
from cemsd.api.listing import ApiContext
from cemsd.api.routes import ROUTES, status
from cemsd.errors import StorageError
from cemsd.settings.api import ApiConfig
from cemsd.store.database import Database

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.status import LiveStatus

log = logging.getLogger(__name__)
API_PREFIX = "/v1"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
HEAVY_PATHS = (f"{API_PREFIX}/reports", f"{API_PREFIX}/hours/columns")
# What every route behind the token may answer besides its own codes.
PROTECTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown token (`WWW-Authenticate: Bearer`)"},
    403: {"description": "The token was revoked"},
    503: {"description": "The database is unavailable"},
}

DESCRIPTION = """Validated CEMS data of one plant for the carbon registry: hourly values with
flags, valid-minute counts and substitutions, minute values, QA/QC records, and the hash
chain over finalised hours (docs/TAMPER-EVIDENCE.md). Read-only. Every endpoint except
`/health` needs `Authorization: Bearer <token>`. Times without an offset are plant time.
Lists are paged: pass `next_cursor` back as `cursor` until it is null."""


def create_app(db: Database, settings: ApiConfig, tz: ZoneInfo,
               config: Config | None = None, live: LiveStatus | None = None) -> FastAPI:
    """`config`: for period reports; `live`: the running daemon's status for the operator's
    page (None: `cemsd serve`)."""
    app = FastAPI(title="cemsd registry API", version=__version__, description=DESCRIPTION,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.api = ApiContext(db, tz, settings,
                               HeavyWork(db.url, settings.max_heavy_requests))
    app.state.config = config
    app.state.live = live
    app.add_exception_handler(StorageError, _database_unavailable)
    app.add_middleware(HeavyRequestLimit, paths=HEAVY_PATHS,  # type: ignore[arg-type]
                       limit=settings.max_heavy_requests)

    @app.get("/health", summary="Liveness and database reachability (no token)",
             responses={503: {"description": "The database cannot be reached"}})
    def health(request: Request) -> JSONResponse:
        try:
            db.fetch(select(1))
        except StorageError as exc:
            return JSONResponse({"status": "degraded", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    protected = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)],
                          responses=PROTECTED_RESPONSES)
    for routes in ROUTES:
        protected.include_router(routes(settings))

    @protected.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    app.include_router(protected)
    app.include_router(status.page_routes())
    return app


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("api: database error", extra={"path": request.url.path, "error": str(exc)})
    return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)
