"""``python -m tollway.cache``: the cache service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc

from tollway.cache.cache import Cache, CacheSettings, Verifier, wall_clock_ms
from tollway.cache.config import CacheConfig
from tollway.cache.index import IndexParams
from tollway.cache.namespaces import BUILTIN_PATH, NamespaceRegistry
from tollway.cache.service import SERVICE_NAME, CacheServicer
from tollway.cache.store import CacheStore
from tollway.cache.sync import IndexSync
from tollway.cache.v1 import cache_pb2_grpc
from tollway.mesh import redis as mesh_redis
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve

log = logging.getLogger("tollway.cache")


def build(
    cfg: CacheConfig,
    mesh: MeshConfig | None = None,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    verifier: Verifier | None = None,
    handle_sighup: bool = False,
) -> tuple[ServiceSpec, Cache]:
    """The cache's ServiceSpec and domain object (tests run it in-process with this).

    Health turns SERVING only after ``on_start``: Redis answered and the index is built.

    Raises:
        NamespaceConfigError: The namespaces file is bad.
    """
    mesh = mesh or load_config(MeshConfig)
    namespaces = NamespaceRegistry(cfg.namespaces_path or BUILTIN_PATH)
    client = mesh_redis.connect(mesh.redis_url)
    store = CacheStore(client, prefix=cfg.key_prefix, events_maxlen=cfg.events_maxlen)
    params = IndexParams(
        dim=cfg.dim,
        m=cfg.hnsw_m,
        ef_construction=cfg.hnsw_ef_construction,
        ef_search=cfg.hnsw_ef_search,
        initial_capacity=cfg.index_initial_capacity,
        k=cfg.search_k,
        max_k=cfg.search_max_k,
    )
    sync = IndexSync(
        store,
        params,
        snapshot_dir=cfg.snapshot_dir or None,
        rebuild_threads=cfg.rebuild_threads,
        follow_block_ms=cfg.follow_block_ms,
    )
    settings = CacheSettings(
        dim=cfg.dim,
        max_verified=cfg.max_verified,
        sweep_interval_s=cfg.sweep_interval_s,
        stats_flush_interval_s=cfg.stats_flush_interval_s,
        namespaces_poll_s=cfg.namespaces_poll_s,
        snapshot_interval_s=cfg.snapshot_interval_s,
    )
    cache = Cache(store, namespaces, sync, settings=settings, verifier=verifier, clock=clock)

    def add(server: grpc.aio.Server) -> None:
        cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(cache), server)

    async def start() -> None:
        await mesh_redis.wait_ready(client)
        await cache.start()
        if handle_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, namespaces.reload)

    async def stop() -> None:
        if handle_sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await cache.stop()
        await client.aclose()

    spec = ServiceSpec(
        name="cache",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, cache


def main() -> None:
    spec, _ = build(load_config(CacheConfig, "cache"), handle_sighup=True)
    run(serve(spec))


if __name__ == "__main__":
    main()
