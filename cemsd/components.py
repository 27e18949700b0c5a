"""Which optional parts of the daemon run, from the configuration.

Each feature (outputs, QA/QC schedulers) adds its component here; the daemon starts them
in this order after the pipeline exists and stops them in reverse order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cemsd.config import Config

if TYPE_CHECKING:
    from cemsd.daemon import Component


def configured_components(config: Config) -> list[Component]:
    components: list[Component] = []
    if config.metrics is not None:  # first started, last stopped: watches the others' stop
        from cemsd.metrics import MetricsServer

        components.append(MetricsServer(config.metrics))
    from cemsd.qaqc.component import Qaqc
    from cemsd.reduction.bypass import BypassMonitor
    from cemsd.sealing import Sealer

    components.append(Qaqc(config))
    components.append(BypassMonitor(config))
    if config.mqtt is not None:
        from cemsd.mqtt import MqttPublisher

        components.append(MqttPublisher(config, config.mqtt))
    # after the outputs: its first chain head goes out, and its last one before they stop
    components.append(Sealer(config))
    from cemsd.hj212.uplink import PlatformUplink

    components.extend(PlatformUplink(config, p) for p in config.hj212 if p.enabled)
    if config.api is not None:
        from cemsd.api.server import ApiComponent

        components.append(ApiComponent(config))
    return components
