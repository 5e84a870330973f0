"""The gateway's Redis: API keys (hashed), the call-record stream, and the budget outbox
(settlements waiting for the budget service) with each tenant's policy while it is down.

Call insights (issue 17) keep, next to the global stream:
- ``tollway:calls:tenant:<tenant>``: the tenant's own stream (what a tenant key lists), each record as
  one JSON field ``r`` (one argument to encode instead of two per field: half the write's CPU);
- ``tollway:call:<request_id>``: the call's attribution (tenant, day, dimensions) as JSON, for feedback;
- ``tollway:raw:<request_id>``: the raw prompt and answer, only where the tenant allows, with a TTL;
- ``tollway:usage:<tenant>:<day>:<dimension>``: running totals, a field per dimension value holding
  its measures packed as comma-separated integers, bumped once per batch;
- ``tollway:feedback:<request_id>``: the latest feedback on a call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from tollway.mesh.redis import Command, hash_tagged, pipelined

KEYS_HASH = "tollway:apikeys"
CALLS_STREAM = "tollway:calls"
# Commits, releases and charges the budget service could not take yet; AOF keeps them.
BUDGET_OUTBOX = "tollway:budget:outbox"
BUDGET_POLICY_HASH = "tollway:budget:when_unavailable"
TENANT_CALLS = "tollway:calls:tenant:"
CALL_INDEX = "tollway:call:"
RAW_CALL = "tollway:raw:"
# The usage totals and feedback: the feedback script moves a call's totals with its score, so on a
# Redis Cluster they share one hash tag (INSIGHTS_TAG, see ``hash_tagged``); a single Redis keeps
# these names.
INSIGHTS_TAG = "tollway:insights"
USAGE = "tollway:usage:"
USAGE_TENANTS = "tollway:usage:tenants"
FEEDBACK = "tollway:feedback:"

# Adds packed measures ("1,20,5,...") to the fields of hash KEYS[1] element by element, then sets
# its TTL (ARGV[1]); ARGV[2..] are (field, packed amounts) pairs. One packed field per dimension
# value keeps a hash small (a query parses one string per value), and one script call per hash
# per batch replaces a command per value and measure.
_BUMP = """
for i = 2, #ARGV, 2 do
  local add = ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local have, out, j = {}, {}, 0
    for x in string.gmatch(cur, '[^,]+') do have[#have + 1] = tonumber(x) end
    for x in string.gmatch(add, '[^,]+') do j = j + 1; out[j] = string.format('%d', (have[j] or 0) + tonumber(x)) end
    for m = j + 1, #have do out[m] = string.format('%d', have[m]) end
    add = table.concat(out, ',')
  end
  redis.call('HSET', KEYS[1], ARGV[i], add)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""
# Replaces a call's feedback and moves the totals of the call's day by the difference, atomically
# (a repeated or changed score counts once). KEYS: the feedback hash, then one usage hash per
# dimension. ARGV: score (milli), comment, time, ttl_s, the 1-based positions of the feedback count
# and score sum in the packed measures, the number of measures, then the field (dimension value)
# in each usage hash. Returns 1 when an earlier score was replaced.
_FEEDBACK = """
local old = redis.call('HGET', KEYS[1], 'score_milli')
local delta = tonumber(ARGV[1]) - (old and tonumber(old) or 0)
local pc, ps, nm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
for k = 2, #KEYS do
  local cur = redis.call('HGET', KEYS[k], ARGV[6 + k])
  local have = {}
  if cur then for x in string.gmatch(cur, '[^,]+') do have[#have + 1] = tonumber(x) end end
  for m = #have + 1, nm do have[m] = 0 end
  if not old then have[pc] = have[pc] + 1 end
  have[ps] = have[ps] + delta
  local out = {}
  for m = 1, #have do out[m] = string.format('%d', have[m]) end
  redis.call('HSET', KEYS[k], ARGV[6 + k], table.concat(out, ','))
end
redis.call('HSET', KEYS[1], 'score_milli', ARGV[1], 'comment', ARGV[2], 'time', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return old and 1 or 0
"""


class GatewayStore:
    """Every Redis access of the gateway."""

    def __init__(
        self,
        client: aioredis.Redis,
        call_log_maxlen: int = 1_000_000,
        *,
        tenant_calls_maxlen: int = 100_000,
        usage_ttl_s: int = 400 * 86400,
        call_index_ttl_s: int = 30 * 86400,
    ) -> None:
        self.redis = client
        self.call_log_maxlen = call_log_maxlen
        self.tenant_calls_maxlen = tenant_calls_maxlen
        self.usage_ttl_s = usage_ttl_s
        self.call_index_ttl_s = call_index_ttl_s
        self._bump = client.register_script(_BUMP)
        self._feedback = client.register_script(_FEEDBACK)
        tag = hash_tagged(client, INSIGHTS_TAG)
        self._clustered = clustered = tag != INSIGHTS_TAG
        self._usage = f"{tag}:usage:" if clustered else USAGE
        self._usage_tenants = f"{tag}:usage:tenants" if clustered else USAGE_TENANTS
        self._feedback_key = f"{tag}:feedback:" if clustered else FEEDBACK

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

    async def append_calls(
        self,
        records: Sequence[Mapping[str, str]],
        *,
        usage: Mapping[tuple[str, str, str], Mapping[str, Sequence[int]]] | None = None,
        index: Mapping[str, Mapping[str, str]] | None = None,
        raw: Mapping[str, tuple[str, str, int]] | None = None,
    ) -> None:
        """Appends call records (as ``CallRecord.stream_fields``) in one pipelined round trip.

        Args:
            records: The records; each also goes to its tenant's stream when ``index`` is given.
            usage: Measures to add, per (tenant, day, dimension), per dimension value.
            index: Each call's attribution, by request id (kept ``call_index_ttl_s``).
            raw: (prompt, answer, retention in seconds) by request id, for tenants that allow it.
        """
        commands: list[Command] = []
        for record in records:
            xadd: list[str | bytes | int] = ["XADD", CALLS_STREAM, "MAXLEN", "~", self.call_log_maxlen, "*"]
            for pair in record.items():
                xadd += pair
            commands.append(xadd)
            if index is not None:
                commands.append(
                    (
                        "XADD", TENANT_CALLS + record["tenant"], "MAXLEN", "~", self.tenant_calls_maxlen, "*",
                        "r", orjson.dumps(record),
                    )
                )  # fmt: skip
        for request_id, attribution in (index or {}).items():
            # One JSON string with its TTL: one command per call instead of HSET + EXPIRE.
            commands.append(("SET", CALL_INDEX + request_id, orjson.dumps(attribution), "EX", self.call_index_ttl_s))
        for request_id, (prompt, answer, ttl_s) in (raw or {}).items():
            commands.append(("HSET", RAW_CALL + request_id, "prompt", prompt, "response", answer))
            commands.append(("EXPIRE", RAW_CALL + request_id, ttl_s))
        if usage:
            commands.append(("SADD", self._usage_tenants, *{tenant for tenant, _, _ in usage}))
        bumps = []
        for (tenant, day, dimension), values in (usage or {}).items():
            args: list[str | int] = [self.usage_ttl_s]
            for value, measures in values.items():
                args += [value, ",".join(map(str, measures))]
            bumps.append(([f"{self._usage}{tenant}:{day}:{dimension}"], args))
        if self._clustered:
            # redis-py's cluster pipeline sends each command to its slot's node; it refuses scripts:
            # each bump runs on its own (one slot, see INSIGHTS_TAG).
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                await pipe.execute()
            await asyncio.gather(*(self._bump(keys=keys, args=args) for keys, args in bumps))
            return
        commands += [("EVALSHA", self._bump.sha, len(keys), *keys, *args) for keys, args in bumps]
        replies = await pipelined(self.redis, commands)
        for reply, (keys, args) in zip(replies[len(replies) - len(bumps) :], bumps, strict=True):
            if isinstance(reply, NoScriptError):  # Redis restarted empty: load the script, bump again
                await self._bump(keys=keys, args=args)
        failed = next((r for r in replies if isinstance(r, ResponseError) and not isinstance(r, NoScriptError)), None)
        if failed is not None:
            raise failed

    async def usage_tenants(self) -> list[str]:
        """Every tenant with usage totals, sorted."""
        return sorted(t.decode() for t in await self.redis.smembers(self._usage_tenants))

    async def usage_totals(
        self, tenants: Sequence[str], days: Sequence[str], dimension: str
    ) -> dict[tuple[str, str], dict[str, list[int]]]:
        """One dimension's totals of each (tenant, day) that has any, in one round trip: the
        measures of each value, unpacked."""
        pairs = [(t, d) for t in tenants for d in days]
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant, day in pairs:
                pipe.hgetall(f"{self._usage}{tenant}:{day}:{dimension}")
            rows = await pipe.execute()
        return {
            pair: {k.decode(): list(map(int, v.split(b","))) for k, v in row.items()}
            for pair, row in zip(pairs, rows, strict=True)
            if row
        }

    async def calls_page(self, tenant: str | None, before: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` records, newest first, older than stream id ``before`` ("" for the newest).

        Args:
            tenant: The tenant whose stream to read; None reads every tenant's (the global stream).
        """
        top = f"({before}" if before else "+"
        if tenant is not None:
            rows = await self.redis.xrevrange(TENANT_CALLS + tenant, max=top, min="-", count=count)
            return [(i.decode(), json.loads(fields[b"r"])) for i, fields in rows]
        rows = await self.redis.xrevrange(CALLS_STREAM, max=top, min="-", count=count)
        return [(i.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for i, fields in rows]

    async def call_extras(self, request_ids: Sequence[str]) -> list[tuple[bool, int | None]]:
        """For each call, in one round trip: whether its raw text is still kept (not expired),
        and its feedback score in thousandths (None without feedback)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.exists(RAW_CALL + request_id)
                pipe.hget(self._feedback_key + request_id, "score_milli")
            replies = await pipe.execute()
        return [
            (bool(replies[i]), None if replies[i + 1] is None else int(replies[i + 1]))
            for i in range(0, len(replies), 2)
        ]

    async def find_call(
        self, tenant: str, request_id: str, around_ms: int, window_ms: int = 5000
    ) -> dict[str, str] | None:
        """The record of ``request_id`` in the tenant's stream, looked for among the entries
        written within ``window_ms`` of ``around_ms`` (the index keeps when its batch was written)."""
        rows = await self.redis.xrange(
            TENANT_CALLS + tenant, min=str(max(around_ms - window_ms, 0)), max=str(around_ms + window_ms)
        )
        wanted = orjson.dumps(request_id)  # as append_calls wrote it
        for _, fields in rows:
            # Cheap test on the text first: most entries of the window are other calls.
            if wanted in fields[b"r"]:
                record: dict[str, str] = json.loads(fields[b"r"])
                if record.get("request_id") == request_id:
                    return record
        return None

    async def raw_call(self, request_id: str) -> dict[str, str] | None:
        """The raw prompt and answer of a call, or None when never kept or expired."""
        row = await self.redis.hgetall(RAW_CALL + request_id)
        return {k.decode(): v.decode() for k, v in row.items()} or None

    async def call_attribution(self, request_id: str) -> dict[str, str] | None:
        """A call's attribution as ``append_calls`` indexed it, or None (unknown or too old)."""
        raw = await self.redis.get(CALL_INDEX + request_id)
        return None if raw is None else json.loads(raw)

    async def put_feedback(
        self,
        request_id: str,
        tenant: str,
        day: str,
        score_milli: int,
        comment: str,
        targets: Sequence[tuple[str, str]],
        positions: tuple[int, int],
        measure_count: int,
    ) -> bool:
        """Stores a call's feedback and moves its day's totals; True when it replaced earlier feedback.

        Args:
            targets: (dimension, value) of each total the call counts under.
            positions: Where the feedback count and score sum sit in the packed measures (0-based).
            measure_count: How many measures a packed field holds.
        """
        usage = (f"{self._usage}{tenant}:{day}:{dimension}" for dimension, _ in targets)
        keys = [self._feedback_key + request_id, *usage]
        args: list[str | int] = [score_milli, comment, str(int(time.time())), self.call_index_ttl_s]
        args += [positions[0] + 1, positions[1] + 1, measure_count, *(value for _, value in targets)]
        return bool(await self._feedback(keys=keys, args=args))

    async def feedback(self, request_id: str) -> dict[str, str] | None:
        """The latest feedback on a call, or None."""
        row = await self.redis.hgetall(self._feedback_key + request_id)
        return {k.decode(): v.decode() for k, v in row.items()} or None

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
