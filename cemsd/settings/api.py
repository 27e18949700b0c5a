"""The `[api]` configuration section and its cross-checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import Field, model_validator

from cemsd.errors import ConfigProblem
from cemsd.settings.base import Host, SettingsModel

if TYPE_CHECKING:
    from cemsd.config import Config


class ApiConfig(SettingsModel):
    """Serve the API from the daemon; `cemsd serve` reads it too."""

    host: Host = "127.0.0.1"  # loopback: put a TLS reverse proxy in front, or set tls_*
    port: Annotated[int, Field(ge=1, le=65535)] = 8480
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    default_page_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    max_page_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    # uvicorn's line per request: off by default (a status screen polling every few seconds
    # wrote ~17k journal lines a day); errors are logged either way
    access_log: bool = False
    # Heavy requests (reports, year pulls of hour columns) served at once; more get 503
    # with Retry-After: each holds CPU and memory the daemon shares (decision 0111).
    max_heavy_requests: Annotated[int, Field(ge=1, le=64)] = 2
    max_report_days: Annotated[int, Field(ge=1, le=3660)] = 366  # span of one /v1/reports

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size may not exceed max_page_size")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None


def api_problems(config: Config) -> list[ConfigProblem]:
    """The certificate files must be readable where the daemon starts."""
    api = config.api
    if api is None or not api.tls:
        return []
    return [
        ConfigProblem(str(config.source), f"api.{key}", f"no readable file at {path}")
        for key, path in (("tls_certfile", api.tls_certfile), ("tls_keyfile", api.tls_keyfile))
        if path is None or not Path(path).is_file()
    ]
