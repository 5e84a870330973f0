"""Helpers for the cache's tests and benches: a private redis-server (never the shared 6379)
and the cache service running in-process on port 0."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import redis

from tollway.cache.cache import Cache, Verifier, wall_clock_ms
from tollway.cache.config import CacheConfig
from tollway.cache.v1 import cache_pb2_grpc
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclasses.dataclass(frozen=True)
class LocalRedis:
    """A running private Redis."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def free_port() -> int:
    """A TCP port nobody listens on right now (on the loopback interface)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_redis(*, appendonly: bool = False, timeout_s: float = 10.0) -> Iterator[LocalRedis]:
    """Starts redis-server on a free loopback port in a temporary directory, stops it after.

    Raises:
        RuntimeError: The server did not answer PING within ``timeout_s``.
    """
    directory = Path(tempfile.mkdtemp(prefix="tollway-cache-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no",
            "--hz", "100",  # blocking reads return closer to their timeout
            "--logfile", str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {port} did not start; see {directory}/redis.log"
                    ) from None
                time.sleep(0.02)
        client.close()
        yield LocalRedis(port, directory, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


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
