"""The one way services connect to Redis."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis


def connect(url: str) -> aioredis.Redis:
    """Returns a pooled asyncio client for ``url`` (bytes in, bytes out)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_keepalive=True,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        max_connections=256,
    )


async def wait_ready(client: aioredis.Redis, timeout_s: float = 10.0) -> None:
    """Waits until Redis answers PING.

    Raises:
        ConnectionError: Redis did not answer within ``timeout_s``; the message names the URL.
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            await client.ping()
            return
        except Exception as exc:  # every connection failure looks different; keep the last
            last = exc
            await asyncio.sleep(0.05)
    kwargs = client.connection_pool.connection_kwargs
    raise ConnectionError(
        f"Redis at {kwargs.get('host')}:{kwargs.get('port')} did not answer PING within {timeout_s}s: {last}"
    )
