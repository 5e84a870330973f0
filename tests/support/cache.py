"""The cache service running in this process on port 0, for the cache's tests (with a Redis from
`tests.support.redis_server`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tollway.cache.cache import Cache, Verifier, wall_clock_ms
from tollway.cache.config import CacheConfig
from tollway.cache.v1 import cache_pb2_grpc
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server


@dataclasses.dataclass
class RunningCache:
    """A cache service running in this process on a real grpc.aio server."""

    cache: Cache
    stub: cache_pb2_grpc.CacheServiceStub
    channel: grpc.aio.Channel
    port: int
    health: Any


@contextlib.asynccontextmanager
async def running_cache(
    redis_url: str,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    verifier: Verifier | None = None,
    **config: Any,
) -> AsyncIterator[RunningCache]:
    """Builds the cache exactly as ``python -m tollway.cache`` does and serves it on port 0.

    Args:
        redis_url: The Redis to use.
        clock: Current Unix time in ms (pass a controllable one to test expiry).
        verifier: The second check (default: the installed one).
        **config: CacheConfig fields (``key_prefix`` keeps tests sharing a Redis apart).
    """
    from tollway.cache.__main__ import build  # here, so importing this module stays light

    spec, cache = build(CacheConfig(**config), MeshConfig(redis_url=redis_url), clock=clock, verifier=verifier)
    server, port, health = await create_server(spec, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RunningCache(cache, cache_pb2_grpc.CacheServiceStub(channel), channel, port, health)
    finally:
        await channel.close()
        await server.stop(None)
        assert spec.on_stop is not None
        await spec.on_stop()
