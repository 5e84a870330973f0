"""The gateway's Redis: API keys (hashed), the call-record stream, and the budget outbox
(settlements waiting for the budget service) with each tenant's policy while it is down."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis

KEYS_HASH = "tollway:apikeys"
CALLS_STREAM = "tollway:calls"
# Commits, releases and charges the budget service could not take yet; AOF keeps them.
BUDGET_OUTBOX = "tollway:budget:outbox"
BUDGET_POLICY_HASH = "tollway:budget:when_unavailable"


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

    async def list_keys_with_hashes(self) -> list[tuple[str, dict[str, str]]]:
        """Every key as (its hash, its record): what revoking by key id needs."""
        rows = await self.redis.hgetall(KEYS_HASH)
        return [(h.decode() if isinstance(h, bytes) else h, json.loads(v)) for h, v in rows.items()]

    async def append_calls(self, records: Sequence[Mapping[str, str]]) -> None:
        """Appends call records (as ``CallRecord.stream_fields``) in one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(CALLS_STREAM, dict(record), maxlen=self.call_log_maxlen, approximate=True)
            await pipe.execute()

    async def recent_calls(self, count: int = 10) -> list[dict[str, str]]:
        rows = await self.redis.xrevrange(CALLS_STREAM, count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]

    async def add_budget_pending(self, fields: Mapping[str, str]) -> None:
        """Appends a settlement for the budget service to the durable outbox."""
        await self.redis.xadd(BUDGET_OUTBOX, dict(fields))

    async def budget_pending(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """The oldest ``count`` outbox entries as ``(entry id, fields)``."""
        rows = await self.redis.xrange(BUDGET_OUTBOX, count=count)
        return [(i.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for i, fields in rows]

    async def remove_budget_pending(self, entry_ids: Sequence[str]) -> None:
        """Deletes settled outbox entries."""
        if entry_ids:
            await self.redis.xdel(BUDGET_OUTBOX, *entry_ids)

    async def set_budget_policy(self, tenant: str, admit: bool) -> None:
        """Remembers whether ``tenant``'s requests are admitted while the budget service is down."""
        await self.redis.hset(BUDGET_POLICY_HASH, tenant, "admit" if admit else "refuse")

    async def budget_policy(self, tenant: str) -> bool | None:
        """The remembered policy of ``tenant`` (True: admit), or None when never learned."""
        raw = await self.redis.hget(BUDGET_POLICY_HASH, tenant)
        return None if raw is None else raw == b"admit"
