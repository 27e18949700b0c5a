"""The collector's configuration file (`cemsd collect --config F`): one `[collector]` table,
validated with the same base rules as the edge's configuration (unknown keys refused,
finite numbers, no booleans for numbers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator

from cemsd import standards
from cemsd.config import Plant, pydantic_problems, read_toml
from cemsd.errors import ConfigError
from cemsd.settings.api import ApiConfig
from cemsd.settings.base import Host, SettingsModel

TOPIC_LEVEL = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"


class Broker(SettingsModel):
    """The (central) broker the collector subscribes at, with a persistent session."""

    host: Host = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    # Fixed: the broker keeps the session (subscriptions, queued QoS 1 messages) under it.
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "cemsd-collector"
    username: str | None = None
    password_env: str | None = None  # the password from this environment variable
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 30.0

    def password(self) -> str | None:
        if self.password_env is None:
            return None
        return os.environ.get(self.password_env)


class Collector(SettingsModel):
    database_url: Annotated[str, Field(min_length=1)]  # PostgreSQL: partitions, JSON, locks
    # Edge prefixes are `<topic_root>/<plant>` (the edge's default topic_prefix).
    topic_root: Annotated[str, Field(pattern=TOPIC_LEVEL)] = "cemsd"
    broker: Broker = Broker()
    # Times without an offset in the fleet API, and its local labels (plants of one
    # programme share a zone; every time is stored in UTC).
    timezone: str = standards.DEFAULT_TIMEZONE
    api: ApiConfig | None = None  # the fleet registry API (and /metrics); None: not served
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000  # messages per transaction
    batch_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5  # longest wait to fill one
    # A batch also closes when nothing came for this long: the broker stops sending once
    # its in-flight window (max_inflight_messages) waits for our acknowledgements.
    batch_idle_seconds: Annotated[float, Field(gt=0, le=60)] = 0.05
    # A plant whose newest hour is older than this is reported as lagging (hours).
    lag_alarm_hours: Annotated[float, Field(gt=0, le=24 * 365)] = 3.0
    # Each plant's configuration (its monitoring plan), by plant id: the fleet API's
    # /v1/plants/{plant}/reports need it. A relative path is beside this file.
    plants: dict[Annotated[str, Field(max_length=64)], Path] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return Plant._known_zone(value)

    @field_validator("database_url")
    @classmethod
    def _postgresql(cls, value: str) -> str:
        if not value.startswith("postgresql"):
            raise ValueError("the collector needs PostgreSQL (postgresql+psycopg://...): "
                             "monthly partitions and many writers")
        return value


class CollectorFile(SettingsModel):
    collector: Collector


def load_collector(path: str | Path) -> Collector:
    """Read and validate; ConfigError names the file and every key at fault."""
    path = Path(path)
    raw = read_toml(path)
    try:
        collector = CollectorFile.model_validate(raw).collector
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc, str(path), raw)) from None
    return collector.model_copy(update={"plants": {
        plant: path.parent / file for plant, file in collector.plants.items()}})
