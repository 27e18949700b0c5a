"""[mqtt]: the broker, credentials, topics and the outbox's retention (docs/MQTT.md); the
publisher is cemsd/mqtt.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, SecretStr

from cemsd.errors import ConfigProblem
from cemsd.settings.base import MAX_DAYS, Host, SettingsModel

if TYPE_CHECKING:
    from cemsd.config import Config


class MqttTls(SettingsModel):
    ca_file: Path | None = None  # None: the system's trusted authorities
    cert_file: Path | None = None  # client certificate, with key_file
    key_file: Path | None = None
    insecure: bool = False  # skip the broker host name check (test benches only)


class MqttConfig(SettingsModel):
    """[mqtt]: the broker, credentials, topics and the outbox's retention."""

    host: Host
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # default 1883, TLS 8883
    client_id: str | None = None  # default cemsd-<plant id>
    username: str | None = None
    # One source of the password at most; a file or the environment keeps it out of the
    # configuration. It is never logged.
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls: MqttTls | None = None
    topic_prefix: str | None = None  # default cemsd/<plant id>
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30  # a silent broker: noticed in <= 2x
    connect_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    publish_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # wait for a PUBACK
    backoff_initial: Annotated[float, Field(gt=0, le=60)] = 1.0  # wall seconds
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # While the broker refuses the credentials, retry this seldom: fixing them takes a person.
    refused_backoff: Annotated[float, Field(gt=0, le=86400)] = 600.0
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100  # rows per drain step
    retention_days: Annotated[float, Field(ge=0, le=MAX_DAYS)] = 7.0  # sent rows kept

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


def mqtt_problems(config: Config) -> list[ConfigProblem]:
    """Cross-checks of [mqtt]: topic prefix, one password source that can be read, files."""
    settings = config.mqtt
    if settings is None:
        return []
    file = str(config.source)
    problems: list[ConfigProblem] = []

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, f"mqtt.{key}", message))

    prefix = topic_prefix(settings, config.plant.id)
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        problem("topic_prefix", "no wildcards (+ #) and no leading or trailing '/'")
    sources = [k for k in ("password", "password_file", "password_env")
               if getattr(settings, k) is not None]
    if len(sources) > 1:
        problem(sources[1], f"give one password source, not {' and '.join(sources)}")
    elif sources and settings.username is None:
        problem(sources[0], "a password needs a username")
    if settings.password_env is not None and settings.password_env not in os.environ:
        problem("password_env", f"environment variable {settings.password_env} is not set")
    files = {"password_file": settings.password_file}
    if settings.tls is not None:
        files |= {f"tls.{k}": getattr(settings.tls, k)
                  for k in ("ca_file", "cert_file", "key_file")}
        if (settings.tls.cert_file is None) != (settings.tls.key_file is None):
            problem("tls.cert_file", "a client certificate needs both cert_file and key_file")
    for key, path in files.items():
        if path is not None and not resolve_path(path, config).is_file():
            problem(key, f"cannot read {resolve_path(path, config)}")
    return problems


def topic_prefix(settings: MqttConfig, plant_id: str) -> str:
    return settings.topic_prefix or f"cemsd/{plant_id}"


def resolve_path(path: Path, config: Config) -> Path:
    """Relative paths in the configuration are relative to its file's folder."""
    return path if path.is_absolute() else Path(config.source).parent / path
