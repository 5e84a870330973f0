"""``python -m tollway.gateway``: the gateway service."""

from __future__ import annotations

import logging

import grpc

from tollway.common.catalog import load_catalog
from tollway.gateway.auth import KeyRing
from tollway.gateway.budget_client import SERVICE_NAME as BUDGET_SERVICE
from tollway.gateway.budget_client import BudgetClient
from tollway.gateway.budgeting import Budgeting
from tollway.gateway.cache_client import CacheClient
from tollway.gateway.calllog import CallLog, RawPolicy
from tollway.gateway.config import GatewayConfig
from tollway.gateway.embed import Embedder
from tollway.gateway.guard.policy import GuardPolicySource
from tollway.gateway.guarding import Guards
from tollway.gateway.insights import Insights
from tollway.gateway.insights_peers import OverviewPeers
from tollway.gateway.insights_service import InsightsServicer
from tollway.gateway.lifecycle import Gateway
from tollway.gateway.prompts_client import SERVICE_NAME as PROMPTS_SERVICE
from tollway.gateway.prompts_client import PromptsClient
from tollway.gateway.retrieval_client import RetrievalClient
from tollway.gateway.router_client import RouterClient
from tollway.gateway.service import GatewayServicer
from tollway.gateway.store import GatewayStore
from tollway.gateway.v1 import gateway_pb2_grpc, insights_pb2_grpc
from tollway.gateway.validation import Limits
from tollway.mesh import clients
from tollway.mesh.background import Background
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.redis import connect, wait_ready
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.mesh.telemetry import tracer_provider, tracing_enabled


def build(cfg: GatewayConfig, mesh: MeshConfig) -> ServiceSpec:
    """The gateway's ServiceSpec (also used by tests to run it in-process)."""
    redis = connect(mesh.redis_url)
    store = GatewayStore(redis, cfg.call_log_maxlen, call_index_ttl_s=cfg.feedback_window_s)
    # grpc.aio channels belong to the event loop they are made in: made in start(), not here.
    channels: list[grpc.aio.Channel] = []
    background = Background(logging.getLogger("tollway.gateway"), jitter=0.1)
    gateway = Gateway(
        KeyRing(store, cfg.auth_cache_ttl_s, mesh.delegation_secret.encode()),
        None,
        store,
        Limits(cfg.max_input_chars, cfg.max_messages, cfg.default_max_tokens),
        cfg.request_timeout_s,
        load_catalog(cfg.catalog),
        settle_delay_s=cfg.budget_settle_delay_s,
    )
    gateway.calls = CallLog(store, raw=RawPolicy.parse(cfg.raw_log_tenants, cfg.raw_log_retention_s))
    if cfg.guard_policy:
        # Read now: a malformed policy file stops the gateway at start, naming the key.
        gateway.guards = Guards(GuardPolicySource(cfg.guard_policy), summariser=gateway.summarise)
    insights = Insights(store, (t.strip() for t in cfg.admin_tenants.split(",") if t.strip()))
    peers = OverviewPeers()

    embedder = Embedder(
        gateway.calls, gateway.catalog, gateway.limits, None, budget_model=cfg.embedding_budget_model
    )

    def add(server: grpc.aio.Server) -> None:
        insights_pb2_grpc.add_InsightsServiceServicer_to_server(InsightsServicer(gateway.keys, insights, peers), server)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(gateway, embedder), server)

    async def start() -> None:
        await wait_ready(redis)
        provider = tracer_provider("gateway", mesh) if tracing_enabled(mesh) else None
        # The console's overview reads budgets, breakers, prompt labels and cache stats on channels of its own.
        channels.extend(peers.connect(
            router=cfg.router_addr, cache=cfg.cache_addr, budget=cfg.budget_addr, prompts=cfg.prompts_addr,
            tracer_provider=provider,
        ))
        channel = clients.channel(cfg.router_addr, tracer_provider=provider)
        channels.append(channel)
        gateway.router = RouterClient(channel)
        if cfg.cache_addr:
            cache_channel = clients.channel(
                cfg.cache_addr, idempotent_services=["tollway.cache.v1.CacheService"], tracer_provider=provider
            )
            channels.append(cache_channel)
            embed_channel = None
            if cfg.embedding_addr:
                embed_channel = clients.channel(
                    cfg.embedding_addr,
                    idempotent_services=["tollway.embedding.v1.EmbeddingService"],
                    tracer_provider=provider,
                )
                channels.append(embed_channel)
            gateway.cache = CacheClient(
                cache_channel,
                embed_channel,
                embedding_model=cfg.embedding_model,
                lookup_timeout_s=cfg.cache_timeout_s,
            )
        if cfg.budget_addr:
            budget_channel = clients.channel(
                cfg.budget_addr, idempotent_services=[BUDGET_SERVICE], tracer_provider=provider
            )
            channels.append(budget_channel)
            gateway.budget = Budgeting(
                BudgetClient(
                    budget_channel, default_max_tokens=cfg.default_max_tokens, timeout_s=cfg.budget_timeout_s
                ),
                store,
                admit_when_unknown=cfg.budget_when_unavailable == "admit",
            )
            # Settlements queued while the budget service was down, charged once it is back.
            background.every(cfg.budget_drain_interval_s, gateway.budget.drain, name="budget outbox drain")
            background.start()
        if cfg.prompts_addr:
            # ResolvePrompt only reads, so the channel may retry it on UNAVAILABLE.
            prompts_channel = clients.channel(
                cfg.prompts_addr, idempotent_services=[PROMPTS_SERVICE], tracer_provider=provider
            )
            channels.append(prompts_channel)
            gateway.prompts = PromptsClient(prompts_channel, timeout_s=cfg.prompts_timeout_s)
        if cfg.retrieval_addr:
            # Search only reads, so the channel may retry it on UNAVAILABLE.
            retrieval_channel = clients.channel(
                cfg.retrieval_addr,
                idempotent_services=["tollway.retrieval.v1.RetrievalService"],
                tracer_provider=provider,
            )
            channels.append(retrieval_channel)
            gateway.retrieval = RetrievalClient(retrieval_channel, timeout_s=cfg.retrieval_timeout_s)
        if gateway.guards is not None:
            guards = gateway.guards

            async def reload_guards() -> None:
                guards.reload()

            background.every(cfg.guard_reload_interval_s, reload_guards, name="guard policy reload")
            background.start()
        if cfg.embedding_addr:
            # The Embed RPC's own channel: its calls carry many texts, the cache's one each.
            embedder_channel = clients.channel(
                cfg.embedding_addr,
                idempotent_services=["tollway.embedding.v1.EmbeddingService"],
                tracer_provider=provider,
            )
            channels.append(embedder_channel)
            embedder.connect(embedder_channel)
            embedder.budget = gateway.budget

    async def stop() -> None:
        await gateway.drain()
        await embedder.drain()
        await background.stop()
        for channel in channels:
            await channel.close()
        await redis.aclose()

    return ServiceSpec(
        name="gateway",
        port=cfg.port,
        add_servicers=add,
        service_names=["tollway.gateway.v1.GatewayService", "tollway.gateway.v1.InsightsService"],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )


def main() -> None:
    run(serve(build(load_config(GatewayConfig, "gateway"), load_config(MeshConfig))))


if __name__ == "__main__":
    main()
