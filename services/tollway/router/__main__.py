"""``python -m tollway.router``: the router service."""

from __future__ import annotations

import dataclasses
import logging

import grpc

from tollway.common.catalog import CatalogError, CatalogSource
from tollway.common.tokens import count_tokens
from tollway.mesh import redis as mesh_redis
from tollway.mesh.background import Background
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.router import metrics
from tollway.router.balancer import Balancer
from tollway.router.breaker import Breakers, BreakerSettings
from tollway.router.config import RouterConfig
from tollway.router.engine import Router
from tollway.router.limits import ProviderLimits
from tollway.router.policy import BACKGROUND, INTERACTIVE
from tollway.router.providers.anthropic import AnthropicAdapter
from tollway.router.providers.gemini import GeminiAdapter
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.service import RouterServicer
from tollway.router.store import RedisBreakerStore, RedisLimitStore
from tollway.router.v1 import router_pb2_grpc

SERVICE_NAME = "tollway.router.v1.RouterService"
log = logging.getLogger("tollway.router")


def build(cfg: RouterConfig, mesh: MeshConfig | None = None) -> tuple[ServiceSpec, Router]:
    """The router's ServiceSpec (also used by tests to run it in-process).

    Health turns SERVING only after Redis answered PING (when breakers are on). Provider limits
    use the same client lazily: only a deployment that states limits sends anything to Redis,
    and if Redis cannot be reached the call is allowed (see :mod:`tollway.router.limits`).

    Raises:
        CatalogError: The catalog file is missing or malformed; the message names the key.
    """
    mesh = mesh or load_config(MeshConfig)
    client = mesh_redis.connect(mesh.redis_url) if cfg.breakers or cfg.provider_limits else None
    settings = BreakerSettings(
        failure_threshold=cfg.breaker_failure_threshold,
        error_rate=cfg.breaker_error_rate,
        window_s=cfg.breaker_window_s,
        min_requests=cfg.breaker_min_requests,
        cooldown_s=cfg.breaker_cooldown_s,
        refused_cooldown_s=min(cfg.breaker_refused_cooldown_s, cfg.breaker_cooldown_s),
        probe_timeout_s=cfg.breaker_probe_timeout_s,
        local_view_s=cfg.breaker_local_view_s,
    )
    store = RedisBreakerStore(client) if client is not None and cfg.breakers else None
    limit_store = RedisLimitStore(client) if client is not None and cfg.provider_limits else None
    router = Router(
        CatalogSource(cfg.catalog),
        {"openai_compat": OpenAICompatAdapter(), "anthropic": AnthropicAdapter(), "gemini": GeminiAdapter()},
        breakers=Breakers(store, settings),
        balancer=Balancer(),
        policies={
            "interactive": dataclasses.replace(INTERACTIVE, max_wait_s=cfg.interactive_max_wait_s),
            "background": dataclasses.replace(
                BACKGROUND, base_backoff_s=cfg.background_base_backoff_s, max_backoff_s=cfg.background_max_backoff_s
            ),
        },
        deadline_s={"interactive": cfg.interactive_deadline_s, "background": cfg.background_deadline_s},
        limits=ProviderLimits(limit_store),
        limit_wait_s={"interactive": cfg.interactive_limit_wait_s, "background": cfg.background_limit_wait_s},
    )
    background = Background(log)
    background.every(cfg.catalog_reload_s, lambda: _reload(router), name="catalog reload")  # 0 disables
    if store is not None:
        background.every(cfg.breaker_refresh_s, lambda: _refresh(router), name="breaker refresh")

    def add(server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)

    async def start() -> None:
        # Load the tokenizer now: the first request must not pay for it (~0.5 s).
        count_tokens("warm up")
        if client is not None and cfg.breakers:
            await mesh_redis.wait_ready(client)
        background.start()

    async def stop() -> None:
        await background.stop()
        for adapter in router.adapters.values():
            await adapter.aclose()
        await router.breakers.close()
        if client is not None:
            await client.aclose()

    spec = ServiceSpec(
        name="router",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, router


async def _reload(router: Router) -> None:
    try:
        if router.source.reload_if_changed():
            metrics.CATALOG_RELOADS.labels("ok").inc()
    except CatalogError:
        metrics.CATALOG_RELOADS.labels("error").inc()


async def _refresh(router: Router) -> None:
    await router.breakers.snapshots(sorted({d.key for d in router.catalog.deployments()}))


def main() -> None:
    spec, _ = build(load_config(RouterConfig, "router"))
    run(serve(spec))


if __name__ == "__main__":
    main()
