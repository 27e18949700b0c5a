"""[metrics]: where the Prometheus endpoint listens; the endpoint is cemsd/metrics.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cemsd.settings.base import Host, SettingsModel


class MetricsConfig(SettingsModel):
    """[metrics]: where the Prometheus endpoint listens."""

    address: Host = "127.0.0.1"  # loopback by default: the endpoint has no authentication
    port: Annotated[int, Field(ge=0, le=65535)] = 9108  # 0: any free port
