"""OpenAI-compatible HTTP API settings, from ``TOLLWAY_OPENAI_COMPAT_*``."""

from __future__ import annotations

from tollway.mesh.frozen import frozen


@frozen
class OpenAICompatConfig:
    """Attributes:
    port: HTTP port.
    host: Interface to bind; empty means the mesh's TOLLWAY_BIND_HOST.
    gateway_addr: Where GatewayService listens.
    jobs_addr: Where JobsService listens, for /v1/files and /v1/batches; empty: those answer 503.
    max_body_bytes: Largest request body accepted (413 above it).
    metrics_port: Prometheus endpoint port when it runs alone; 0 turns it off (in a process group,
        the group's endpoint serves its metrics).
    """

    port: int = 8090
    host: str = ""
    gateway_addr: str = "127.0.0.1:50051"
    max_body_bytes: int = 1_048_576
    jobs_addr: str = ""
    metrics_port: int = 0
