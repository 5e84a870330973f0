"""The gateway's Redis: API keys (hashed) and the call-record stream."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis

KEYS_HASH = "tollway:apikeys"
CALLS_STREAM = "tollway:calls"


class GatewayStore:
    """Every Redis access of the gateway."""

    def __init__(self, client: aioredis.Redis, call_log_maxlen: int = 1_000_000) -> None:
        self.redis = client
        self.call_log_maxlen = call_log_maxlen

    async def put_key(self, key_hash: str, record: Mapping[str, str]) -> None:
        await self.redis.hset(KEYS_HASH, key_hash, json.dumps(dict(record)))

    async def get_key(self, key_hash: str) -> dict[str, str] | None:
        raw = await self.redis.hget(KEYS_HASH, key_hash)
        return None if raw is None else json.loads(raw)

    async def delete_key(self, key_hash: str) -> bool:
        return bool(await self.redis.hdel(KEYS_HASH, key_hash))

    async def list_keys(self) -> list[dict[str, str]]:
        return [json.loads(v) for v in (await self.redis.hgetall(KEYS_HASH)).values()]

    async def append_calls(self, records: Sequence[Mapping[str, str]]) -> None:
        """Appends call records (as ``CallRecord.stream_fields``) in one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(CALLS_STREAM, dict(record), maxlen=self.call_log_maxlen, approximate=True)
            await pipe.execute()

    async def recent_calls(self, count: int = 10) -> list[dict[str, str]]:
        rows = await self.redis.xrevrange(CALLS_STREAM, count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
