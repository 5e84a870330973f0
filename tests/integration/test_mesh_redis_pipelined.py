"""``tollway.mesh.redis.pipelined`` and ``PackedConnection``'s send on a real Redis: replies in
order and raw, an error reply returned in its place with the rest still run, a connection the
server dropped while idle replaced once, a stalled Redis an outage error, and the connection
never left out of step with its replies."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from tests.support.redis_server import TEST_REDIS, LocalRedis, local_redis
from tollway.mesh.redis import connect, is_outage, pipelined

pytestmark = pytest.mark.skipif(TEST_REDIS == "cluster", reason="pipelined is for a plain client")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with local_redis() as s:
        yield s


@pytest.fixture
async def client(server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    c = connect(server.url, command_timeout_s=0.5)
    await c.flushdb()
    yield c
    await c.aclose()


async def test_replies_come_raw_and_in_order(client: aioredis.Redis) -> None:
    replies = await pipelined(
        client,
        [("SET", "k", "v"), ("INCRBY", "n", 5), ("GET", "k"), ("XADD", "s", "MAXLEN", "~", 10, "*", "f", b"\x00x")],
    )
    assert replies[:3] == [b"OK", 5, b"v"]
    assert isinstance(replies[3], bytes) and b"-" in replies[3]  # a stream id
    assert (await client.xrange("s"))[0][1] == {b"f": b"\x00x"}


async def test_an_error_reply_takes_its_place_and_the_rest_still_runs(client: aioredis.Redis) -> None:
    replies = await pipelined(client, [("SET", "k", "v"), ("INCR", "k"), ("SET", "after", "1")])
    assert replies[0] == b"OK" and replies[2] == b"OK"
    assert isinstance(replies[1], redis_errors.ResponseError) and "not an integer" in str(replies[1])
    # The connection went back to the pool in step: the next command reads its own reply.
    assert await client.get("after") == b"1"


async def test_an_unknown_script_is_a_noscript_reply(client: aioredis.Redis) -> None:
    (reply,) = await pipelined(client, [("EVALSHA", "0" * 40, 0)])
    assert isinstance(reply, redis_errors.NoScriptError)


async def test_a_connection_the_server_dropped_while_idle_is_replaced(client: aioredis.Redis) -> None:
    await client.set("warm", "1")  # one pooled connection, now idle
    await client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
    assert await pipelined(client, [("SET", "k", "again"), ("GET", "k")]) == [b"OK", b"again"]


async def test_a_stalled_redis_is_an_outage_and_the_connection_is_not_reused(
    client: aioredis.Redis, server: LocalRedis
) -> None:
    await client.set("k", "1")
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(redis_errors.TimeoutError) as err:
            await pipelined(client, [("SET", "k", "2"), ("GET", "k")])
        assert is_outage(err.value)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    # The stalled batch's replies arrive late on the dropped connection, not on the next command's.
    assert await pipelined(client, [("GET", "k"), ("SET", "k", "3"), ("GET", "k")]) == [b"2", b"OK", b"3"]
    assert await client.get("k") == b"3"


async def test_a_plain_command_is_sent_on_a_packed_connection(client: aioredis.Redis) -> None:
    # PackedConnection.send_packed_command: the same commands through redis-py's own client.
    async with client.pipeline(transaction=False) as pipe:
        pipe.set("a", "1").incr("a").get("a")
        assert await pipe.execute() == [True, 2, b"2"]
    assert await client.delete("a") == 1
