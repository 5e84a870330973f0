"""Router settings, from ``TOLLWAY_ROUTER_*``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """Attributes:
    port: gRPC port (``TOLLWAY_ROUTER_PORT``).
    metrics_port: Prometheus port; 0 turns it off.
    catalog: Path of the model catalog YAML.
    """

    port: int = 50055
    metrics_port: int = 0
    catalog: str = "deploy/models.yaml"
