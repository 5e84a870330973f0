"""``python -m tollway.jobs``: the jobs service (its API, its workers and its webhook deliverer)."""

from __future__ import annotations

import dataclasses
import logging

import grpc

from tollway.common.delegation import check_secret
from tollway.jobs import metrics
from tollway.jobs.auth import Callers
from tollway.jobs.config import JobsConfig
from tollway.jobs.delivery import Deliverer
from tollway.jobs.gateway_client import GatewayClient
from tollway.jobs.jobs import Jobs, now_ms
from tollway.jobs.service import SERVICE_NAME, JobsServicer, job_json
from tollway.jobs.store import JobsStore
from tollway.jobs.types import Owner
from tollway.jobs.v1 import jobs_pb2_grpc
from tollway.jobs.worker import Workers, WorkerSettings
from tollway.mesh import clients
from tollway.mesh import redis as mesh_redis
from tollway.mesh.background import Background
from tollway.mesh.config import ConfigError, MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.mesh.telemetry import tracer_provider, tracing_enabled


@dataclasses.dataclass
class Parts:
    """What a running jobs service is made of (tests and benches reach in here)."""

    jobs: Jobs
    store: JobsStore
    workers: Workers | None = None
    deliverer: Deliverer | None = None
    gateway: GatewayClient | None = None


def build(cfg: JobsConfig, mesh: MeshConfig | None = None) -> tuple[ServiceSpec, Parts]:
    """The jobs service's ServiceSpec and parts.

    Raises:
        ConfigError: ``TOLLWAY_DELEGATION_SECRET`` is missing or too short (workers could not call
            the gateway as the submitting key).
    """
    mesh = mesh or load_config(MeshConfig)
    secret = mesh.delegation_secret.encode()
    try:
        check_secret(secret)
    except ValueError as exc:
        raise ConfigError(f"{exc} The jobs service needs it to run jobs as the key that submitted them.") from None
    client = mesh_redis.connect(mesh.redis_url)
    store = JobsStore(client, cfg.key_prefix)
    jobs = Jobs(store, cfg)
    parts = Parts(jobs, store)
    channels: list[grpc.aio.Channel] = []

    async def lookup(api_key: str) -> Owner:
        assert parts.gateway is not None, "the gateway client is made in on_start"
        return await parts.gateway.caller(api_key)

    callers = Callers(lookup, cfg.auth_cache_ttl_s)
    background = Background(logging.getLogger("tollway.jobs"), jitter=0.1)

    async def sample_queue() -> None:
        waiting, pending = await store.queue_depth()
        metrics.QUEUE_WAITING.set(waiting)
        metrics.QUEUE_PENDING.set(pending)

    def add(server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobsServiceServicer_to_server(JobsServicer(jobs, callers), server)

    async def start() -> None:
        await mesh_redis.wait_ready(client)
        await store.ensure_group()
        provider = tracer_provider("jobs", mesh) if tracing_enabled(mesh) else None
        # Only GetCaller may be retried by the channel; a job's Complete is retried by the queue.
        channel = clients.channel(cfg.gateway_addr, tracer_provider=provider)
        channels.append(channel)
        parts.gateway = GatewayClient(channel, secret, cfg.job_timeout_s)
        parts.workers = Workers(
            store,
            parts.gateway.run,
            WorkerSettings(
                workers=cfg.workers,
                claim_idle_ms=cfg.claim_idle_ms,
                heartbeat_ms=cfg.heartbeat_ms,
                max_attempts=cfg.max_attempts,
                retention_ms=cfg.retention_s * 1000,
                poll_ms=cfg.poll_ms,
            ),
            now_ms,
        )
        parts.workers.start()
        background.every(5.0, sample_queue, name="queue depth")
        background.start()
        if cfg.webhook_secret:
            parts.deliverer = Deliverer(
                store,
                job_json,
                cfg.webhook_secret.encode(),
                jobs.urls,
                max_attempts=cfg.webhook_max_attempts,
                backoff_ms=cfg.webhook_backoff_ms,
                backoff_max_ms=cfg.webhook_backoff_max_ms,
                timeout_s=cfg.webhook_timeout_s,
                poll_ms=min(cfg.poll_ms, 500),
                clock=now_ms,
            )
            parts.deliverer.start()

    async def stop() -> None:
        await background.stop()
        if parts.workers is not None:
            await parts.workers.stop()
        if parts.deliverer is not None:
            await parts.deliverer.stop()
        for channel in channels:
            await channel.close()
        await client.aclose()

    spec = ServiceSpec(
        name="jobs",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, parts


def main() -> None:
    spec, _ = build(load_config(JobsConfig, "jobs"))
    run(serve(spec))


if __name__ == "__main__":
    main()
