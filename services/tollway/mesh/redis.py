"""The one way services connect to Redis.

Every command has a deadline: a Redis that stops answering (a stopped process keeps its
connections open) makes the command fail with ``redis.exceptions.TimeoutError`` after
``command_timeout_s`` instead of hanging the request. :data:`OUTAGE_ERRORS` are the errors
that mean "Redis is unreachable or stalled"; :mod:`tollway.mesh.errors` reports them as
UNAVAILABLE naming Redis, and callers with a degraded path catch them.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

# Connection refused or reset, or a command past its deadline.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError)

# A command waits this long for its reply. Blocking reads (XREAD BLOCK) must block for less:
# the cache's index follower blocks 1 s.
COMMAND_TIMEOUT_S = 2.0


def connect(
    url: str, *, command_timeout_s: float = COMMAND_TIMEOUT_S, connect_timeout_s: float = 2.0
) -> aioredis.Redis:
    """Returns a pooled asyncio client for ``url`` (bytes in, bytes out).

    Args:
        url: ``redis://host:port/db``.
        command_timeout_s: Longest wait for a command's reply (the socket read timeout).
        connect_timeout_s: Longest wait for a new connection.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_keepalive=True,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=command_timeout_s,
        health_check_interval=30,
        max_connections=256,
    )


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is unreachable or stalled (not that a command was wrong)."""
    return isinstance(exc, OUTAGE_ERRORS)


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
