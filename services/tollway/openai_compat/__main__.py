"""``python -m tollway.openai_compat``: the OpenAI-compatible HTTP API."""

from __future__ import annotations

import uvicorn
from prometheus_client import start_http_server

from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.httpserver import HeadWithBodyProtocol
from tollway.mesh.telemetry import setup_logging, tracer_provider, tracing_enabled
from tollway.mesh.tracing import TraceContextMiddleware
from tollway.openai_compat.config import OpenAICompatConfig
from tollway.openai_compat.dispatch import Dispatch
from tollway.openai_compat.service import OpenAICompatApp

# Above Envoy's upstream idle timeout (tollway.edge.envoy_config.UPSTREAM_IDLE_TIMEOUT_S, 60 s):
# Envoy, not this server, closes an idle connection, so it never sends a request on one this
# server is closing (uvicorn's default of 5 s made that race a 503 under bursts; issue 13).
KEEP_ALIVE_S = 75


def main() -> None:
    cfg = load_config(OpenAICompatConfig, "openai_compat")
    mesh = load_config(MeshConfig)
    setup_logging("openai_compat", mesh)
    if tracing_enabled(mesh):
        tracer_provider("openai_compat", mesh)  # before the app: its gateway channel then carries the trace
    app = TraceContextMiddleware(
        Dispatch(OpenAICompatApp(cfg.gateway_addr, cfg.max_body_bytes, cfg.jobs_addr)), "openai_compat"
    )
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=mesh.metrics_host)
    uvicorn.run(
        app,
        host=cfg.host or mesh.bind_host,
        port=cfg.port,
        loop="uvloop",
        http=HeadWithBodyProtocol,
        access_log=False,
        # Nothing reads the client's address (Envoy's X-Forwarded-For): no middleware to rewrite it.
        proxy_headers=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


if __name__ == "__main__":
    main()
