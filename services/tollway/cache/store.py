"""Redis layout of the cache; the only module that talks to Redis.

Keys (``{p}`` is the configured prefix, ``tw:cache`` by default)::

    {p}:epoch            random id of this data set (a snapshot from another one is ignored)
    {p}:seq              INCR counter: entry ids, global across namespaces and replicas
    {p}:e:{id}           HASH  one entry (answer, usage, scope ids, expiry, doc ids, vector)
    {p}:k:{key}          STRING tier-1 key -> entry id
    {p}:ns:{ns}          ZSET  entry ids of a namespace by creation time (eviction "oldest")
    {p}:lru:{ns}         ZSET  entry ids of a namespace by last use (eviction "lru")
    {p}:namespaces       SET   namespaces that hold entries
    {p}:doc:{doc}        SET   entry ids grounded by a document
    {p}:tpl:{template}   SET   entry ids rendered from a prompt template
    {p}:exp              ZSET  entry ids by the time they are deleted (end of stale grace)
    {p}:events           STREAM op=a|d, id, ns, n: every add and delete, for the replicas' indexes
    {p}:evseq            INCR counter: n, the event's number (a gap in n means events were trimmed)
    {p}:stats:{ns}       HASH  counters summed over replicas

Every add and delete runs as one Lua script that updates the entry, every secondary
structure and the event stream together, so a replica following the stream never sees
an entry the sets do not know, or the reverse. Entries carry no Redis TTL: the sweeper
(:meth:`CacheStore.expired_ids` + :meth:`CacheStore.delete`) removes them with their
secondary entries and a delete event, which a TTL could not do. The scripts build key
names from the prefix, so on Redis Cluster the prefix is a hash tag (``{tw:cache}``): every key of
the cache is in one slot, on one master, and each script is sent there (its KEYS[1] is the event
stream).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollway.cache.entries import Answer, Entry
from tollway.cache.index import IndexRecord
from tollway.cache.keys import context_tag
from tollway.cache.scope import Scope
from tollway.cache.stats import Counters, Stat
from tollway.mesh.frozen import frozen
from tollway.mesh.redis import hash_tagged

_DELETE_FN = """
local p = ARGV[1]
local maxlen = ARGV[2]
local function delete_entry(id)
  local ekey = p .. ':e:' .. id
  local f = redis.call('HMGET', ekey, 'ns', 'key', 'docs', 'tpl')
  redis.call('ZREM', p .. ':exp', id)
  if not f[1] then return false end
  local ns = f[1]
  redis.call('DEL', ekey)
  local kk = p .. ':k:' .. f[2]
  if redis.call('GET', kk) == id then redis.call('DEL', kk) end
  redis.call('ZREM', p .. ':ns:' .. ns, id)
  redis.call('ZREM', p .. ':lru:' .. ns, id)
  if f[3] then
    for _, d in ipairs(cjson.decode(f[3])) do redis.call('SREM', p .. ':doc:' .. d, id) end
  end
  if f[4] and f[4] ~= '' then redis.call('SREM', p .. ':tpl:' .. f[4], id) end
  if redis.call('ZCARD', p .. ':ns:' .. ns) == 0 then redis.call('SREM', p .. ':namespaces', ns) end
  redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*',
    'op', 'd', 'id', id, 'ns', ns, 'n', redis.call('INCR', p .. ':evseq'))
  return ns
end
"""

_DELETE = (
    _DELETE_FN
    + """
local out = {}
for i = 3, #ARGV do
  local ns = delete_entry(ARGV[i])
  if ns then out[#out + 1] = ARGV[i]; out[#out + 1] = ns end
end
return out
"""
)

# ARGV: p, maxlen, key, ns, created_ms, stale_until_ms, max_entries, eviction, docs_json,
# template, then the entry hash's field/value pairs.
_PUT = (
    _DELETE_FN
    + """
local key, ns = ARGV[3], ARGV[4]
local created, stale_until = ARGV[5], ARGV[6]
local max_entries = tonumber(ARGV[7])
local eviction, docs, tpl = ARGV[8], ARGV[9], ARGV[10]
local replaced = {}
local old = redis.call('GET', p .. ':k:' .. key)
if old then
  local old_ns = delete_entry(old)
  if old_ns then replaced = {old, old_ns} end
end
local id = tostring(redis.call('INCR', p .. ':seq'))
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', p .. ':e:' .. id, unpack(fields))
redis.call('SET', p .. ':k:' .. key, id)
redis.call('ZADD', p .. ':ns:' .. ns, created, id)
redis.call('ZADD', p .. ':lru:' .. ns, created, id)
redis.call('ZADD', p .. ':exp', stale_until, id)
redis.call('SADD', p .. ':namespaces', ns)
for _, d in ipairs(cjson.decode(docs)) do redis.call('SADD', p .. ':doc:' .. d, id) end
if tpl ~= '' then redis.call('SADD', p .. ':tpl:' .. tpl, id) end
redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*',
  'op', 'a', 'id', id, 'ns', ns, 'n', redis.call('INCR', p .. ':evseq'))
local evicted = {}
if max_entries > 0 then
  local over = redis.call('ZCARD', p .. ':ns:' .. ns) - max_entries
  if over > 0 then
    local zkey = p .. ':ns:' .. ns
    if eviction == 'lru' then zkey = p .. ':lru:' .. ns end
    for _, victim in ipairs(redis.call('ZRANGE', zkey, 0, over)) do
      if over <= 0 then break end
      if victim ~= id then
        local vns = delete_entry(victim)
        if vns then evicted[#evicted + 1] = victim; evicted[#evicted + 1] = vns; over = over - 1 end
      end
    end
  end
end
return {id, replaced, evicted}
"""
)

_GET_BY_KEY = """
local id = redis.call('GET', ARGV[1] .. ':k:' .. ARGV[2])
if not id then return false end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
return {id, redis.call('HMGET', ARGV[1] .. ':e:' .. id, unpack(fields))}
"""

_ENTRY_FIELDS = (
    "ns",
    "key",
    "ctx",
    "scope",
    "tenant",
    "user",
    "tpl",
    "ver",
    "query",
    "emb_model",
    "created",
    "expires",
    "stale_until",
    "docs",
    "text",
    "model",
    "provider",
    "finish",
    "in_tok",
    "out_tok",
    "cached_tok",
)
_INDEX_FIELDS = ("ns", "ctx", "scope", "tenant", "user", "expires", "stale_until", "vec")

UNREACHABLE: tuple[type[Exception], ...] = (RedisError, OSError)
"""What a store call raises when Redis cannot be reached or fails the command.

Callers that outlive an outage (the index follower) catch these and try again; the
client library stays behind this module.
"""

EVENTS_START = "0-0"
"""The position before the first event of the stream (read from here to get every event)."""

_STATS = {s.value: s for s in Stat}


@frozen(slots=True)
class PutResult:
    """What one store did: the new id, and entries it removed (id, namespace)."""

    entry_id: int
    replaced: list[tuple[int, str]]
    evicted: list[tuple[int, str]]


@frozen(slots=True)
class Event:
    """One add or delete from the event stream; ``seq`` counts events without gaps."""

    stream_id: str
    op: str
    entry_id: int
    namespace: str
    seq: int


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[Any]) -> list[tuple[int, str]]:
    return [(int(flat[i]), _s(flat[i + 1])) for i in range(0, len(flat), 2)]


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Orders Redis stream ids (``ms-seq``) numerically."""
    ms, _, seq = stream_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _entry(entry_id: int, values: Sequence[bytes | None]) -> Entry | None:
    f = dict(zip(_ENTRY_FIELDS, values, strict=True))
    if f["ns"] is None:
        return None
    return Entry(
        entry_id=entry_id,
        namespace=_s(f["ns"]),
        key=_s(f["key"]),
        context=_s(f["ctx"]),
        scope=Scope(int(f["scope"] or 0)),
        tenant_id=_s(f["tenant"]),
        user_id=_s(f["user"]),
        prompt_template=_s(f["tpl"]),
        prompt_version=_s(f["ver"]),
        query=_s(f["query"]),
        embedding_model=_s(f["emb_model"]),
        created_ms=int(f["created"] or 0),
        expires_ms=int(f["expires"] or 0),
        stale_until_ms=int(f["stale_until"] or 0),
        document_ids=tuple(json.loads(_s(f["docs"]) or "[]")),
        answer=Answer(
            text=_s(f["text"]),
            model=_s(f["model"]),
            provider=_s(f["provider"]),
            finish_reason=int(f["finish"] or 0),
            input_tokens=int(f["in_tok"] or 0),
            output_tokens=int(f["out_tok"] or 0),
            cached_input_tokens=int(f["cached_tok"] or 0),
        ),
    )


def _index_record(entry_id: int, values: Sequence[bytes | None], dim: int) -> tuple[str, IndexRecord] | None:
    f = dict(zip(_INDEX_FIELDS, values, strict=True))
    if f["ns"] is None or not f["vec"]:
        return None
    vector = np.frombuffer(f["vec"], dtype=np.float32)
    if vector.shape[0] != dim:
        return None  # stored by a replica configured with another dimension; never comparable
    return _s(f["ns"]), IndexRecord(
        entry_id=entry_id,
        context=context_tag(_s(f["ctx"])),
        scope=Scope(int(f["scope"] or 0)),
        tenant_id=_s(f["tenant"]),
        user_id=_s(f["user"]),
        expires_ms=int(f["expires"] or 0),
        stale_until_ms=int(f["stale_until"] or 0),
        vector=vector,
    )


class CacheStore:
    """Cache entries, their secondary sets, the event stream and the counters in Redis."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tw:cache", events_maxlen: int = 1_000_000) -> None:
        """Wraps a client made by ``tollway.mesh.redis.connect`` (bytes in, bytes out).

        Args:
            client: The Redis client.
            prefix: Prefix of every key (lets tests and tenants of one Redis stay apart).
            events_maxlen: Approximate length the event stream is trimmed to. A replica that
                falls further behind than this rebuilds its index from the entries.
        """
        self.redis = client
        # On Redis Cluster one hash slot for the whole cache: the scripts name keys from the prefix.
        self.prefix = hash_tagged(client, prefix)
        self.events_maxlen = events_maxlen
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._get_by_key = client.register_script(_GET_BY_KEY)
        self.events_key = f"{self.prefix}:events"

    async def ping(self) -> None:
        """Raises if Redis does not answer."""
        await self.redis.ping()

    async def epoch(self) -> str:
        """The random id of this data set, created on first use."""
        key = f"{self.prefix}:epoch"
        await self.redis.set(key, uuid.uuid4().hex, nx=True)
        return _s(await self.redis.get(key))

    async def put(self, entry: Entry, *, max_entries: int, eviction: str) -> PutResult:
        """Stores ``entry`` (its ``entry_id`` is ignored), replacing any entry with its key.

        Evicts the namespace's first entries in ``eviction`` order ("lru" or "oldest")
        while it holds more than ``max_entries`` (0: no limit).
        """
        docs = json.dumps(list(entry.document_ids))
        fields: dict[str, str | bytes | int] = {
            "ns": entry.namespace,
            "key": entry.key,
            "ctx": entry.context,
            "scope": int(entry.scope),
            "tenant": entry.tenant_id,
            "user": entry.user_id,
            "tpl": entry.prompt_template,
            "ver": entry.prompt_version,
            "query": entry.query,
            "emb_model": entry.embedding_model,
            "created": entry.created_ms,
            "expires": entry.expires_ms,
            "stale_until": entry.stale_until_ms,
            "docs": docs,
            "text": entry.answer.text,
            "model": entry.answer.model,
            "provider": entry.answer.provider,
            "finish": entry.answer.finish_reason,
            "in_tok": entry.answer.input_tokens,
            "out_tok": entry.answer.output_tokens,
            "cached_tok": entry.answer.cached_input_tokens,
        }
        if entry.vector is not None:
            fields["vec"] = np.asarray(entry.vector, dtype=np.float32).tobytes()
        args: list[Any] = [
            self.prefix,
            self.events_maxlen,
            entry.key,
            entry.namespace,
            entry.created_ms,
            entry.stale_until_ms,
            max_entries,
            eviction,
            docs,
            entry.prompt_template,
        ]
        for name, value in fields.items():
            args += [name, value]
        entry_id, replaced, evicted = await self._put(keys=[self.events_key], args=args)
        return PutResult(int(entry_id), _pairs(replaced), _pairs(evicted))

    async def get_by_key(self, key: str) -> Entry | None:
        """The entry stored under a tier-1 key (without its vector), or None."""
        found = await self._get_by_key(keys=[self.events_key], args=[self.prefix, key, *_ENTRY_FIELDS])
        if not found:
            return None
        return _entry(int(found[0]), found[1])

    async def get_entries(self, entry_ids: Sequence[int]) -> dict[int, Entry]:
        """The entries that still exist among ``entry_ids`` (without vectors)."""
        if not entry_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(f"{self.prefix}:e:{entry_id}", _ENTRY_FIELDS)
            rows = await pipe.execute()
        out: dict[int, Entry] = {}
        for entry_id, values in zip(entry_ids, rows, strict=True):
            entry = _entry(entry_id, values)
            if entry is not None:
                out[entry_id] = entry
        return out

    async def index_records(self, entry_ids: Sequence[int], dim: int) -> list[tuple[str, IndexRecord]]:
        """(namespace, index record) of the entries among ``entry_ids`` that exist and have a vector."""
        if not entry_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(f"{self.prefix}:e:{entry_id}", _INDEX_FIELDS)
            rows = await pipe.execute()
        out = []
        for entry_id, values in zip(entry_ids, rows, strict=True):
            record = _index_record(entry_id, values, dim)
            if record is not None:
                out.append(record)
        return out

    async def scan_index_records(self, dim: int, batch: int = 1000) -> AsyncIterator[list[tuple[str, IndexRecord]]]:
        """Every entry with a vector, in batches, namespace by namespace (for a full rebuild)."""
        for namespace in await self.namespaces():
            ids = [int(x) for x in await self.redis.zrange(f"{self.prefix}:ns:{namespace}", 0, -1)]
            for start in range(0, len(ids), batch):
                records = await self.index_records(ids[start : start + batch], dim)
                if records:
                    yield records

    async def delete(self, entry_ids: Iterable[int], chunk: int = 500) -> list[tuple[int, str]]:
        """Deletes entries with their secondary entries, emitting delete events.

        Returns (id, namespace) of the entries that existed. Works in chunks so that a
        large purge does not block Redis for long.
        """
        ids = list(entry_ids)
        out: list[tuple[int, str]] = []
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            flat = await self._delete(keys=[self.events_key], args=[self.prefix, self.events_maxlen, *part])
            out += _pairs(flat)
        return out

    async def ids_for_documents(self, document_ids: Sequence[str]) -> list[int]:
        """Entries grounded by any of ``document_ids``."""
        if not document_ids:
            return []
        members = await self.redis.sunion([f"{self.prefix}:doc:{d}" for d in document_ids])
        return sorted(int(m) for m in members)

    async def ids_for_template(self, template: str, version: str = "") -> list[int]:
        """Entries rendered from ``template`` (only ``version`` of it when given)."""
        ids = sorted(int(m) for m in await self.redis.smembers(f"{self.prefix}:tpl:{template}"))
        if not version or not ids:
            return ids
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.hget(f"{self.prefix}:e:{entry_id}", "ver")
            versions = await pipe.execute()
        return [i for i, v in zip(ids, versions, strict=True) if _s(v) == version]

    async def ids_for_namespace(self, namespace: str) -> list[int]:
        """Every entry of ``namespace``."""
        return [int(x) for x in await self.redis.zrange(f"{self.prefix}:ns:{namespace}", 0, -1)]

    async def namespaces(self) -> list[str]:
        """Namespaces that hold at least one entry."""
        return sorted(_s(x) for x in await self.redis.smembers(f"{self.prefix}:namespaces"))

    async def counts(self, namespaces: Sequence[str]) -> dict[str, int]:
        """Entries stored per namespace."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in namespaces:
                pipe.zcard(f"{self.prefix}:ns:{ns}")
            counts = await pipe.execute()
        return dict(zip(namespaces, (int(c) for c in counts), strict=True))

    async def expired_ids(self, now_ms: int, limit: int = 500) -> list[int]:
        """Entries whose stale grace period ended before ``now_ms``, oldest first."""
        found = await self.redis.zrangebyscore(f"{self.prefix}:exp", "-inf", now_ms, start=0, num=limit)
        return [int(x) for x in found]

    @staticmethod
    def _events(items: Sequence[Any]) -> list[Event]:
        out = []
        for stream_id, fields in items:
            f = {_s(k): _s(v) for k, v in fields.items()}
            out.append(
                Event(_s(stream_id), f.get("op", ""), int(f.get("id") or 0), f.get("ns", ""), int(f.get("n") or 0))
            )
        return out

    async def stream_head(self) -> tuple[str, int]:
        """The id and number of the newest event, or ("0-0", 0) when there is none."""
        newest = self._events(await self.redis.xrevrange(self.events_key, "+", "-", count=1))
        return (newest[0].stream_id, newest[0].seq) if newest else (EVENTS_START, 0)

    async def first_event_after(self, after_id: str) -> Event | None:
        """The oldest event still in the stream that is newer than ``after_id``."""
        found = self._events(await self.redis.xrange(self.events_key, f"({after_id}", "+", count=1))
        return found[0] if found else None

    async def read_events(self, after_id: str, *, count: int = 512, block_ms: int | None = None) -> list[Event]:
        """Events after ``after_id``, waiting up to ``block_ms`` for one when given."""
        reply = await self.redis.xread({self.events_key: after_id}, count=count, block=block_ms)
        if not reply:
            return []
        batches = reply.values() if isinstance(reply, dict) else [items for _, items in reply]
        return [event for items in batches for event in self._events(items)]

    async def flush_stats(self, counters: Counters, touches: Mapping[str, Mapping[int, int]]) -> None:
        """Adds counter deltas and records last-use times (only for entries that still exist)."""
        if not counters and not touches:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns, fields in counters.items():
                for name, delta in fields.items():
                    if isinstance(delta, int):
                        pipe.hincrby(f"{self.prefix}:stats:{ns}", name, delta)
                    else:
                        pipe.hincrbyfloat(f"{self.prefix}:stats:{ns}", name, delta)
            for ns, used in touches.items():
                if used:
                    pipe.zadd(f"{self.prefix}:lru:{ns}", {str(i): t for i, t in used.items()}, xx=True, gt=True)
            await pipe.execute()

    async def read_stats(self, namespaces: Sequence[str]) -> Counters:
        """The summed counters per namespace (missing counters are absent, unknown fields skipped)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in namespaces:
                pipe.hgetall(f"{self.prefix}:stats:{ns}")
            rows = await pipe.execute()
        return {
            ns: {_STATS[name]: float(_s(v)) for k, v in row.items() if (name := _s(k)) in _STATS}
            for ns, row in zip(namespaces, rows, strict=True)
        }

    async def stats_namespaces(self) -> list[str]:
        """Namespaces that have counters (they outlive their entries)."""
        out = []
        async for key in self.redis.scan_iter(match=f"{self.prefix}:stats:*", count=500):
            out.append(_s(key)[len(self.prefix) + 7 :])
        return sorted(out)
