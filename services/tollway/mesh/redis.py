"""The one way services connect to Redis.

Every command has a deadline: a Redis that stops answering (a stopped process keeps its
connections open) makes the command fail with ``redis.exceptions.TimeoutError`` after
``command_timeout_s`` instead of hanging the request. :data:`OUTAGE_ERRORS` are the errors
that mean "Redis is unreachable or stalled"; :mod:`tollway.mesh.errors` reports them as
UNAVAILABLE naming Redis, and callers with a degraded path catch them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
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

# Settings of every redis-server Tollway starts (the launcher's, the k8s manifests'; the tests' too).
# A budget reservation's record is a hash of ~24 fields, two of them 150-300 bytes (its counters and
# its metadata). Above 64 bytes a value turns a hash from Redis's compact listpack into a hashtable of
# ~2.5x the memory, and records are kept a day (bench/redis_memory.py). Every hash of Tollway that
# could be a listpack stays within the entry limit (128), so a longer value limit costs at most a scan
# of 128 short entries per field read.
SERVER_SETTINGS: tuple[str, ...] = ("--hash-max-listpack-value", "1024")


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

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        """redis-py's send, its deadline kept by ``asyncio.timeout`` (a timer) rather than
        ``asyncio.wait_for``, which in Python 3.11 makes a task for every command sent."""
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            async with asyncio.timeout(self.socket_timeout):
                await self._send_packed_command(command)
        except TimeoutError:  # before OSError, of which it is a subclass
            await self.disconnect(nowait=True)
            raise redis_errors.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise redis_errors.ConnectionError(f"Error {exc.errno} while writing to socket. {exc.strerror}.") from exc
        except BaseException:
            # Part of the command may be on the wire: the connection cannot be trusted any more.
            await self.disconnect(nowait=True)
            raise


Command = Sequence[str | bytes | int | float]


async def pipelined(client: aioredis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Sends ``commands`` in one write on one pooled connection and returns their raw replies
    (bytes, ints, lists), an error reply as its ``ResponseError`` rather than raised.

    redis-py's pipeline spends Python on each command (its argument handling, a timer for every
    reply, reply callbacks, a SCRIPT EXISTS round trip before any EVALSHA); a batch of call
    records is hundreds of commands. Here they are packed by hiredis in one go and their replies
    read under one deadline. For a plain client only (a cluster client splits by slot).

    A connection that fails before any reply arrived (a pooled connection the server closed while
    idle) is replaced and the batch sent once more; a failure after that raises, as then some
    commands may have run.

    Raises:
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError: see :data:`OUTAGE_ERRORS`.
    """
    packed = [hiredis.pack_command(tuple(c)) for c in commands]
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = await pool.get_connection()
        replies: list[Any] = []
        try:
            await conn.send_packed_command(packed)
            async with asyncio.timeout(conn.socket_timeout):
                for _ in packed:
                    try:
                        # math.inf: no timer of its own, the batch's deadline above covers it.
                        replies.append(await conn.read_response(timeout=math.inf))
                    except redis_errors.ResponseError as exc:
                        replies.append(exc)
            return replies
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise redis_errors.TimeoutError(f"no reply from Redis within {conn.socket_timeout}s") from None
        except redis_errors.ConnectionError:
            await conn.disconnect(nowait=True)
            if attempt or replies:
                raise
        except BaseException:
            await conn.disconnect(nowait=True)  # replies left unread would answer the next command
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


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
