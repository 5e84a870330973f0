"""``python -m tollway.router``: the router service."""

from __future__ import annotations

import grpc

from tollway.mesh.config import load_config
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.router.catalog import load_catalog
from tollway.router.config import RouterConfig
from tollway.router.engine import Router
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.service import RouterServicer
from tollway.router.v1 import router_pb2_grpc


def build(cfg: RouterConfig) -> tuple[ServiceSpec, Router]:
    """The router's ServiceSpec (also used by tests to run it in-process)."""
    router = Router(load_catalog(cfg.catalog), {"openai_compat": OpenAICompatAdapter()})

    def add(server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)

    async def stop() -> None:
        for adapter in router.adapters.values():
            await adapter.aclose()

    spec = ServiceSpec(
        name="router",
        port=cfg.port,
        add_servicers=add,
        service_names=["tollway.router.v1.RouterService"],
        on_stop=stop,
        metrics_port=cfg.metrics_port,
    )
    return spec, router


def main() -> None:
    spec, _ = build(load_config(RouterConfig, "router"))
    run(serve(spec))


if __name__ == "__main__":
    main()
