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
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

# Connection refused or reset, or a command past its deadline; in a cluster also a failover in
# progress (CLUSTERDOWN, TRYAGAIN, a MOVED the client has not caught up with yet).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterError,
)

# `redis+cluster://host:port,host:port,...`: Redis Cluster seed nodes (any of them will do; the
# client learns the rest and the slot map from them).
CLUSTER_SCHEME = "redis+cluster"

# A command waits this long for its reply. Blocking reads (XREAD BLOCK) must block for less:
# the cache's index follower blocks 1 s.
COMMAND_TIMEOUT_S = 2.0


class PackedConnection(aioredis.Connection):
    """redis-py's asyncio connection with commands packed by hiredis, in C.

    redis-py packs an asyncio command in Python, argument by argument (an encode and a bytes join
    each, the join growing with the command): a call record or a budget script costs more there
    than on the wire. Its synchronous client already packs with hiredis; this does the same, with
    the same rules (``str`` as UTF-8, numbers as their ``repr``, anything else refused).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # A bytearray or memoryview (hiredis takes bytes only), else a value redis-py refuses too.
            if any(isinstance(a, bytearray | memoryview) for a in args):
                return [
                    hiredis.pack_command(tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args))
                ]
            bad = next((a for a in args if isinstance(a, bool) or not isinstance(a, str | bytes | int | float)), None)
            raise redis_errors.DataError(
                f"Invalid input of type: {type(bad).__name__!r}. Convert to a bytes, string, int or float first."
            ) from None


def connect(
    url: str, *, command_timeout_s: float = COMMAND_TIMEOUT_S, connect_timeout_s: float = 2.0
) -> aioredis.Redis:
    """Returns a pooled asyncio client for ``url`` (bytes in, bytes out).

    Args:
        url: ``redis://host:port/db``, or ``redis+cluster://host:port,host:port`` for Redis Cluster
            (redis-py's cluster client: commands go to the node that owns their key's slot, and
            every multi-key script and pipeline of the stores keeps its keys in one slot with a
            hash tag).
        command_timeout_s: Longest wait for a command's reply (the socket read timeout).
        connect_timeout_s: Longest wait for a new connection.

    Raises:
        ValueError: A cluster URL names no node, or a node is not HOST:PORT; the message quotes it.
    """
    if url.startswith(CLUSTER_SCHEME + "://"):
        # Typed as the plain client: the stores use the commands both share.
        return _cluster(url, command_timeout_s, connect_timeout_s)  # type: ignore[return-value]
    return aioredis.Redis.from_url(
        url,
        # Plain TCP only: rediss:// and unix:// keep the connection class their scheme needs.
        **({"connection_class": PackedConnection} if url.startswith("redis://") else {}),
        decode_responses=False,
        socket_keepalive=True,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=command_timeout_s,
        health_check_interval=30,
        max_connections=256,
    )


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a ``redis+cluster://`` URL.

    Raises:
        ValueError: It names no node, or a node is not HOST:PORT.
    """
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for item in filter(None, netloc.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"TOLLWAY_REDIS_URL has value {url!r}: {item!r} is not HOST:PORT")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"TOLLWAY_REDIS_URL has value {url!r}: name at least one node (redis+cluster://HOST:PORT,...)")
    return nodes


def _cluster(url: str, command_timeout_s: float, connect_timeout_s: float) -> RedisCluster:
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.password:
        options["password"] = parts.password
    if parts.username:
        options["username"] = parts.username
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        decode_responses=False,
        socket_keepalive=True,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=command_timeout_s,
        health_check_interval=30,
        max_connections=256,
        **options,
    )


def hash_tagged(client: aioredis.Redis, prefix: str) -> str:
    """``prefix`` as a Redis Cluster hash tag (``{tw:cache}``) when ``client`` is a cluster client.

    For a store whose Lua scripts name keys from its prefix: every key then sits in one slot, on
    one master. On a single Redis the prefix stays as it is, so the keys of an existing
    deployment keep their names.
    """
    if isinstance(client, RedisCluster) and not (prefix.startswith("{") and prefix.endswith("}")):
        return "{" + prefix + "}"
    return prefix


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
    if isinstance(client, RedisCluster):
        where = ",".join(f"{n.host}:{n.port}" for n in client.startup_nodes.values())
    else:
        kwargs = client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host')}:{kwargs.get('port')}"
    raise ConnectionError(f"Redis at {where} did not answer PING within {timeout_s}s: {last}")
