"""Redis layout of the retrieval service; the only module that talks to Redis.

Keys (``{p}`` is the configured prefix, ``tw:retrieval`` by default; ``{u}`` is a
collection's uid, new for every creation, so that a collection deleted and created again
never meets the old one's leftovers while they are being removed)::

    {p}:epoch               random id of this data set (a snapshot from another one is ignored)
    {p}:cols                ZSET  collection ids (score 0: lexical order for paging)
    {p}:c:{c}               HASH  collection: uid, model, dim, chunking, fields, desc, created, ens (JSON
                                  ensemble model -> dim, absent when none), ens_unit (what the ensemble
                                  embeds of a sentence window; absent: section); during an embedding-model
                                  migration also next, next_dim, mig_done, mig_total, mig_start
    {p}:u:{u}:docs          ZSET  document ids of the collection (score 0)
    {p}:u:{u}:d:{d}         HASH  document: title, text, meta, sv, hash, ihash, state, chunks,
                                  cids (JSON ids of the indexed chunks), updated, indexed, op
    {p}:u:{u}:k:{chunk}     HASH  chunk: doc, text, title, parent, meta, v:{model} (float32 bytes, one per
                                  model: one more while a migration back-fills, one per ensemble model)
    {p}:lock:{name}         STRING a lock (the replica back-filling a migration; expires)
    {p}:u:{u}:n             STRING chunks indexed in the collection
    {p}:op:{id}             HASH  operation (expires after a day)
    {p}:ingest              STREAM content_changed events (type, c, u, d, h, op, try), consumer group
    {p}:delayed             ZSET  events waiting for their next try (member: JSON, score: due ms)
    {p}:dead                STREAM events that failed every try
    {p}:events              STREAM index changes for every replica's indexes (op=s|x|m, n)
    {p}:evseq               INCR counter: n, the index event's number (a gap means trimming)

Each change to what is indexed (commit of a document's chunks, deletion of a document or a
collection) is one Lua script that updates the keys *and* appends its index event, so a
replica following the stream never sees chunks the keys do not have, or the reverse. The
commit checks that the document still wants this content and that it is not indexed yet:
that is what makes a redelivered event (a worker killed after committing, before
acknowledging) a no-op instead of a second copy of every chunk.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tollway.mesh.frozen import frozen
from tollway.mesh.redis import hash_tagged
from tollway.retrieval.types import (
    Chunk,
    Chunking,
    Collection,
    DocState,
    Document,
    EnsembleUnit,
    FieldType,
    Operation,
    OpState,
    Strategy,
)

UNREACHABLE: tuple[type[Exception], ...] = (RedisError, OSError)
"""What a store call raises when Redis cannot be reached or fails the command."""

EVENTS_START = "0-0"
GROUP = "indexers"

_UPSERT = """
local p, c, d = ARGV[1], ARGV[2], ARGV[3]
local title, text, meta, sv, hash = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local now, op, op_ttl, maxlen = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12]
local uid = redis.call('HGET', p .. ':c:' .. c, 'uid')
if not uid then return {'nocol', ''} end
local dkey = p .. ':u:' .. uid .. ':d:' .. d
local cur = redis.call('HMGET', dkey, 'hash', 'ihash', 'state', 'op')
if cur[1] == hash and cur[2] == hash then
  redis.call('HSET', dkey, 'sv', sv)
  redis.call('HSET', p .. ':op:' .. op, 'c', c, 'd', d, 'h', hash, 'state', 'succeeded', 'unchanged', '1',
    'created', now, 'updated', now, 'tries', '0')
  redis.call('EXPIRE', p .. ':op:' .. op, op_ttl)
  return {'unchanged', op}
end
if cur[1] == hash and cur[3] == 'pending' and cur[4] and redis.call('EXISTS', p .. ':op:' .. cur[4]) == 1 then
  redis.call('HSET', dkey, 'sv', sv)
  return {'pending', cur[4]}
end
redis.call('HSET', dkey, 'title', title, 'text', text, 'meta', meta, 'sv', sv, 'hash', hash,
  'state', 'pending', 'updated', now, 'op', op)
redis.call('ZADD', p .. ':u:' .. uid .. ':docs', 0, d)
redis.call('HSET', p .. ':op:' .. op, 'c', c, 'd', d, 'h', hash, 'state', 'queued', 'created', now,
  'updated', now, 'tries', '0')
redis.call('EXPIRE', p .. ':op:' .. op, op_ttl)
redis.call('XADD', p .. ':ingest', 'MAXLEN', '~', maxlen, '*', 'type', 'content_changed', 'c', c, 'u', uid,
  'd', d, 'h', hash, 'op', op, 'try', '1')
return {'queued', op}
"""

# ARGV: p, maxlen, c, uid, d, hash, now, op, models (JSON list), then per chunk: id, text, title, parent,
# meta and one vector per model.
_COMMIT = """
local p, maxlen, c, uid, d, hash, now, op = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local models = cjson.decode(ARGV[9])
local col = redis.call('HMGET', p .. ':c:' .. c, 'uid', 'model', 'next', 'ens')
if col[1] ~= uid then return {'gone', 0} end
local has = {}
for _, m in ipairs(models) do has[m] = true end
-- Every chunk must carry a vector of the active model, and of the next one during a migration:
-- a chunk without one would be missing from the index after the switch. Likewise one of every
-- ensemble model, whose index holds every chunk too.
if not has[col[2]] or (col[3] and not has[col[3]]) then return {'models', 0} end
if col[4] then
  for m, _ in pairs(cjson.decode(col[4])) do
    if not has[m] then return {'models', 0} end
  end
end
local dkey = p .. ':u:' .. uid .. ':d:' .. d
local cur = redis.call('HMGET', dkey, 'hash', 'ihash', 'cids')
if not cur[1] then return {'gone', 0} end
if cur[1] ~= hash then return {'superseded', 0} end
if cur[2] == hash then return {'unchanged', 0} end
local old = cjson.decode(cur[3] or '[]')
local base = p .. ':u:' .. uid .. ':k:'
for _, id in ipairs(old) do redis.call('DEL', base .. id) end
local new = {}
local step = 5 + #models
for i = 10, #ARGV, step do
  local id = ARGV[i]
  new[#new + 1] = id
  redis.call('HSET', base .. id, 'doc', d, 'text', ARGV[i + 1], 'title', ARGV[i + 2], 'parent', ARGV[i + 3],
    'meta', ARGV[i + 4])
  for j, m in ipairs(models) do redis.call('HSET', base .. id, 'v:' .. m, ARGV[i + 4 + j]) end
end
local encoded = '[]'
if #new > 0 then encoded = cjson.encode(new) end
redis.call('HSET', dkey, 'ihash', hash, 'state', 'indexed', 'chunks', #new, 'indexed', now, 'cids', encoded)
redis.call('INCRBY', p .. ':u:' .. uid .. ':n', #new - #old)
local dropped = '[]'
if #old > 0 then dropped = cjson.encode(old) end
redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*', 'op', 's', 'c', c, 'u', uid, 'd', d,
  'add', encoded, 'drop', dropped, 'n', redis.call('INCR', p .. ':evseq'))
redis.call('HSET', p .. ':op:' .. op, 'state', 'succeeded', 'updated', now, 'chunks', #new, 'embedded', #new)
local had = 0
if cur[2] and cur[2] ~= '' then had = 1 end
return {'indexed', had}
"""

_DELETE_DOC = """
local p, maxlen, c, d = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local uid = redis.call('HGET', p .. ':c:' .. c, 'uid')
if not uid then return {'nocol', 0} end
local dkey = p .. ':u:' .. uid .. ':d:' .. d
local cur = redis.call('HMGET', dkey, 'hash', 'cids', 'op')
if not cur[1] then return {'nodoc', 0} end
local old = cjson.decode(cur[2] or '[]')
local base = p .. ':u:' .. uid .. ':k:'
for _, id in ipairs(old) do redis.call('DEL', base .. id) end
redis.call('DEL', dkey)
redis.call('ZREM', p .. ':u:' .. uid .. ':docs', d)
redis.call('INCRBY', p .. ':u:' .. uid .. ':n', -#old)
if #old > 0 then
  redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*', 'op', 's', 'c', c, 'u', uid, 'd', d,
    'add', '[]', 'drop', cjson.encode(old), 'n', redis.call('INCR', p .. ':evseq'))
end
return {'deleted', #old}
"""

_START_MIGRATION = """
local p, c, model, dim, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local col = redis.call('HMGET', p .. ':c:' .. c, 'uid', 'model', 'next')
if not col[1] then return 'nocol' end
if col[3] then return 'busy' end
if col[2] == model then return 'same' end
local total = redis.call('GET', p .. ':u:' .. col[1] .. ':n') or '0'
redis.call('HSET', p .. ':c:' .. c, 'next', model, 'next_dim', dim, 'mig_done', 0, 'mig_total', total, 'mig_start', now)
return 'started'
"""

# ARGV: p, c, uid, model, then chunk id / vector pairs. Sets a vector of the migration's target
# model on chunks that still exist, and counts them.
_FILL = """
local p, c, uid, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', p .. ':c:' .. c, 'next') ~= model then return -1 end
local base = p .. ':u:' .. uid .. ':k:'
local filled = 0
for i = 5, #ARGV, 2 do
  local key = base .. ARGV[i]
  if redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'v:' .. model) == 0 then
    redis.call('HSET', key, 'v:' .. model, ARGV[i + 1])
    filled = filled + 1
  end
end
redis.call('HINCRBY', p .. ':c:' .. c, 'mig_done', filled)
return filled
"""

_SWITCH_MODEL = """
local p, maxlen, c, uid, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local col = redis.call('HMGET', p .. ':c:' .. c, 'uid', 'model', 'next', 'next_dim')
if col[1] ~= uid or col[3] ~= model then return false end
redis.call('HSET', p .. ':c:' .. c, 'model', model, 'dim', col[4])
redis.call('HDEL', p .. ':c:' .. c, 'next', 'next_dim', 'mig_done', 'mig_total', 'mig_start')
redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*', 'op', 'm', 'c', c, 'u', uid,
  'n', redis.call('INCR', p .. ':evseq'))
return col[2]
"""

_DELETE_COLLECTION = """
local p, maxlen, c = ARGV[1], ARGV[2], ARGV[3]
local uid = redis.call('HGET', p .. ':c:' .. c, 'uid')
if not uid then return false end
redis.call('DEL', p .. ':c:' .. c)
redis.call('ZREM', p .. ':cols', c)
redis.call('XADD', p .. ':events', 'MAXLEN', '~', maxlen, '*', 'op', 'x', 'c', c, 'u', uid,
  'n', redis.call('INCR', p .. ':evseq'))
return uid
"""

_CREATE_COLLECTION = """
local p, maxlen, c = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. ':c:' .. c) == 1 then return false end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', p .. ':c:' .. c, unpack(fields))
redis.call('ZADD', p .. ':cols', 0, c)
return 1
"""

# Retry later: acknowledge this delivery and park the event with its next try number.
_RETRY = """
local p, group, id, due, event, op, tries, now, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  ARGV[7], ARGV[8], ARGV[9]
redis.call('XACK', p .. ':ingest', group, id)
redis.call('XDEL', p .. ':ingest', id)
redis.call('ZADD', p .. ':delayed', due, event)
if redis.call('EXISTS', p .. ':op:' .. op) == 1 then
  redis.call('HSET', p .. ':op:' .. op, 'state', 'queued', 'tries', tries, 'updated', now, 'emsg', err)
end
return 1
"""

# Give up: acknowledge, park in the dead-letter stream, fail the operation and the document.
_DEAD = """
local p, group, id, op, tries, now, code, reason, msg, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local c, uid, d, h = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
redis.call('XACK', p .. ':ingest', group, id)
redis.call('XDEL', p .. ':ingest', id)
redis.call('XADD', p .. ':dead', 'MAXLEN', '~', maxlen, '*', 'c', c, 'u', uid, 'd', d, 'h', h, 'op', op,
  'try', tries, 'reason', reason, 'error', msg, 'failed', now)
if redis.call('EXISTS', p .. ':op:' .. op) == 1 then
  redis.call('HSET', p .. ':op:' .. op, 'state', 'failed', 'tries', tries, 'updated', now, 'ecode', code,
    'ereason', reason, 'emsg', msg)
end
local dkey = p .. ':u:' .. uid .. ':d:' .. d
if redis.call('HGET', dkey, 'hash') == h then redis.call('HSET', dkey, 'state', 'failed') end
return 1
"""

_MOVE_DUE = """
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local due = redis.call('ZRANGEBYSCORE', p .. ':delayed', '-inf', now, 'LIMIT', 0, 100)
for _, event in ipairs(due) do
  local e = cjson.decode(event)
  redis.call('XADD', p .. ':ingest', 'MAXLEN', '~', maxlen, '*', 'type', 'content_changed', 'c', e.c, 'u', e.u,
    'd', e.d, 'h', e.h, 'op', e.op, 'try', tostring(e.try))
  redis.call('ZREM', p .. ':delayed', event)
end
return #due
"""


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _i(value: bytes | str | None) -> int:
    s = _s(value)
    return int(s) if s else 0


@frozen(slots=True)
class IngestEvent:
    """One delivery of a ``content_changed`` event from the ingest stream.

    Attributes:
        stream_id: The entry's id in the stream (what is acknowledged).
        collection_id: The collection.
        uid: The collection's uid when the event was made.
        document_id: The document.
        content_hash: The content to index.
        operation_id: The upsert's operation.
        attempt: Which try this is (1 for the first).
    """

    stream_id: str
    collection_id: str
    uid: str
    document_id: str
    content_hash: str
    operation_id: str
    attempt: int

    def payload(self, attempt: int) -> str:
        """The event as stored for a later try."""
        return json.dumps(
            {
                "c": self.collection_id,
                "u": self.uid,
                "d": self.document_id,
                "h": self.content_hash,
                "op": self.operation_id,
                "try": attempt,
            },
            sort_keys=True,
        )


@frozen(slots=True)
class IndexEvent:
    """One change to what is indexed, from the index event stream.

    ``op`` is ``s`` (a document's chunks changed: ``added`` ids are now in Redis, ``dropped``
    ids are gone) or ``x`` (the collection was deleted).
    """

    stream_id: str
    op: str
    collection_id: str
    uid: str
    document_id: str
    added: list[str]
    dropped: list[str]
    seq: int


@frozen
class StoredCollection:
    """A collection and its uid."""

    collection: Collection
    uid: str


def _ingest_event(stream_id: Any, fields: Mapping[bytes, bytes]) -> IngestEvent:
    return IngestEvent(
        _s(stream_id),
        _s(fields.get(b"c")),
        _s(fields.get(b"u")),
        _s(fields.get(b"d")),
        _s(fields.get(b"h")),
        _s(fields.get(b"op")),
        _i(fields.get(b"try")) or 1,
    )


def _vector_bytes(vector: Any) -> bytes:
    return np.asarray(vector, np.float32).reshape(-1).tobytes()


class RetrievalStore:
    """Collections, documents, chunks, operations and the two streams in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "tw:retrieval",
        events_maxlen: int = 1_000_000,
        operation_ttl_s: int = 86400,
    ) -> None:
        self.redis = client
        # On Redis Cluster one hash slot for all of it: the scripts name keys from the prefix.
        self.prefix = prefix = hash_tagged(client, prefix)
        self.events_maxlen = events_maxlen
        self.operation_ttl_s = operation_ttl_s
        self.events_key = f"{prefix}:events"
        self.ingest_key = f"{prefix}:ingest"
        self.dead_key = f"{prefix}:dead"
        self._upsert = client.register_script(_UPSERT)
        self._commit = client.register_script(_COMMIT)
        self._delete_doc = client.register_script(_DELETE_DOC)
        self._delete_col = client.register_script(_DELETE_COLLECTION)
        self._create_col = client.register_script(_CREATE_COLLECTION)
        self._retry = client.register_script(_RETRY)
        self._dead = client.register_script(_DEAD)
        self._move_due = client.register_script(_MOVE_DUE)
        self._start_migration = client.register_script(_START_MIGRATION)
        self._fill = client.register_script(_FILL)
        self._switch = client.register_script(_SWITCH_MODEL)

    async def epoch(self) -> str:
        """The random id of this data set, created on first use."""
        key = f"{self.prefix}:epoch"
        await self.redis.set(key, uuid.uuid4().hex, nx=True)
        return _s(await self.redis.get(key))

    # --- collections -------------------------------------------------------------------

    async def create_collection(self, col: Collection) -> bool:
        """Stores a new collection. Returns False when the id is taken."""
        c = col.chunking
        fields = [
            "uid", uuid.uuid4().hex,
            "model", col.embedding_model,
            "dim", str(col.dimension),
            "chunking", json.dumps([c.strategy.value, c.max_tokens, c.overlap_tokens, c.parent_max_tokens,
                                  c.sentence_window]),
            "fields", json.dumps({k: v.value for k, v in col.fields.items()}),
            "desc", col.description,
            "created", str(col.created_ms),
        ]  # fmt: skip
        if col.ensemble:
            fields += ["ens", json.dumps(dict(col.ensemble), sort_keys=True)]
        if col.ensemble_unit is not None:
            fields += ["ens_unit", col.ensemble_unit.value]
        done = await self._create_col(
            keys=[self.events_key], args=[self.prefix, self.events_maxlen, col.collection_id, *fields])
        return bool(done)

    async def get_collection(self, collection_id: str, *, counts: bool = True) -> StoredCollection | None:
        """The collection with its uid (and its document and chunk counts), or None."""
        raw = await self.redis.hgetall(f"{self.prefix}:c:{collection_id}")
        if not raw:
            return None
        uid = _s(raw.get(b"uid"))
        docs = chunks = 0
        if counts:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(f"{self.prefix}:u:{uid}:docs")
                pipe.get(f"{self.prefix}:u:{uid}:n")
                docs, chunks = await pipe.execute()
        # Collections stored before sentence windows existed hold four values.
        strategy, max_tokens, overlap, parent, *window = json.loads(_s(raw[b"chunking"]))
        col = Collection(
            collection_id=collection_id,
            embedding_model=_s(raw.get(b"model")),
            dimension=_i(raw.get(b"dim")),
            chunking=Chunking(Strategy(strategy), max_tokens, overlap, parent, window[0] if window else 0),
            fields={k: FieldType(v) for k, v in json.loads(_s(raw.get(b"fields")) or "{}").items()},
            description=_s(raw.get(b"desc")),
            created_ms=_i(raw.get(b"created")),
            document_count=int(docs or 0),
            chunk_count=_i(chunks),
            next_model=_s(raw.get(b"next")),
            next_dimension=_i(raw.get(b"next_dim")),
            backfilled_count=_i(raw.get(b"mig_done")),
            backfill_total=_i(raw.get(b"mig_total")),
            migration_started_ms=_i(raw.get(b"mig_start")),
            ensemble={k: int(v) for k, v in json.loads(_s(raw.get(b"ens")) or "{}").items()},
        )
        if col.ensemble and col.chunking.keyword_on_parent:
            # Sentence-window ensembles stored before the choice existed embedded sections.
            unit = EnsembleUnit(_s(raw.get(b"ens_unit")) or EnsembleUnit.SECTION.value)
            col = dataclasses.replace(col, ensemble_unit=unit)
        return StoredCollection(col, uid)

    async def list_collection_ids(self, after: str, limit: int) -> list[str]:
        """Up to ``limit`` collection ids after ``after`` ("" for the first), in order."""
        start = f"({after}" if after else "-"
        return [_s(x) for x in await self.redis.zrangebylex(f"{self.prefix}:cols", start, "+", 0, limit)]

    async def delete_collection(self, collection_id: str) -> tuple[str, list[str]] | None:
        """Deletes a collection (atomically for readers), then its keys in batches.

        Returns:
            The deleted collection's uid and its document ids, or None when it did not exist.
        """
        stored = await self.redis.hget(f"{self.prefix}:c:{collection_id}", "uid")
        if stored is None:
            return None
        uid = _s(stored)
        doc_ids = [_s(x) for x in await self.redis.zrange(f"{self.prefix}:u:{uid}:docs", 0, -1)]
        gone = await self._delete_col(keys=[self.events_key], args=[self.prefix, self.events_maxlen, collection_id])
        if not gone:
            return None
        base = f"{self.prefix}:u:{uid}:"
        async for keys in self._scan_batches(base + "*"):
            await self.redis.unlink(*keys)
        return uid, doc_ids

    async def _scan_batches(self, pattern: str, count: int = 1000) -> AsyncIterator[list[bytes]]:
        cursor = 0
        while True:
            cursor, keys = await self.redis.scan(cursor, match=pattern, count=count)
            if keys:
                yield keys
            if cursor == 0:
                return

    # --- documents ---------------------------------------------------------------------

    async def upsert(
        self,
        collection_id: str,
        document_id: str,
        *,
        title: str,
        text: str,
        metadata: Mapping[str, Any],
        source_version: str,
        digest: str,
        now_ms: int,
        operation_id: str,
    ) -> tuple[str, str]:
        """Stores a document's latest content and queues it, unless it is indexed or queued.

        Returns:
            (outcome, operation id): ``nocol`` (no such collection), ``unchanged`` (already
            indexed; a finished operation was recorded), ``pending`` (the same content is
            queued: its existing operation) or ``queued`` (a new event).
        """
        outcome, op = await self._upsert(
            keys=[self.events_key],
            args=[
                self.prefix, collection_id, document_id, title, text,
                json.dumps(metadata, sort_keys=True, ensure_ascii=False), source_version, digest, now_ms,
                operation_id, self.operation_ttl_s, self.events_maxlen,
            ]
        )  # fmt: skip
        return _s(outcome), _s(op)

    async def get_document(
        self, uid: str, collection_id: str, document_id: str, *, text: bool = True
    ) -> Document | None:
        """A document, or None."""
        fields = ["title", "meta", "sv", "hash", "ihash", "state", "chunks", "updated", "indexed", "op"]
        if text:
            fields.append("text")
        values = await self.redis.hmget(f"{self.prefix}:u:{uid}:d:{document_id}", fields)
        if values[3] is None:
            return None
        v = dict(zip(fields, values, strict=True))
        return Document(
            collection_id=collection_id,
            document_id=document_id,
            text=_s(v.get("text")),
            title=_s(v["title"]),
            metadata=json.loads(_s(v["meta"]) or "{}"),
            source_version=_s(v["sv"]),
            content_hash=_s(v["hash"]),
            indexed_hash=_s(v["ihash"]),
            state=DocState(_s(v["state"]) or "pending"),
            chunk_count=_i(v["chunks"]),
            updated_ms=_i(v["updated"]),
            indexed_ms=_i(v["indexed"]),
            operation_id=_s(v["op"]),
        )

    async def list_document_ids(self, uid: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` document ids after ``after`` ("" for the first), in order."""
        start = f"({after}" if after else "-"
        return [_s(x) for x in await self.redis.zrangebylex(f"{self.prefix}:u:{uid}:docs", start, "+", 0, limit)]

    async def delete_document(self, collection_id: str, document_id: str) -> tuple[str, int]:
        """Deletes a document and its chunks. Returns (``nocol``|``nodoc``|``deleted``, chunks removed)."""
        outcome, removed = await self._delete_doc(
            keys=[self.events_key], args=[self.prefix, self.events_maxlen, collection_id, document_id])
        return _s(outcome), int(removed)

    async def commit(
        self, event: IngestEvent, chunks: Sequence[Chunk], vectors: Mapping[str, Sequence[Any]], now_ms: int
    ) -> tuple[str, bool]:
        """Replaces a document's indexed chunks with ``chunks`` if it still wants this content.

        Args:
            event: The event being handled.
            chunks: The new chunks (their own ``vector`` is ignored).
            vectors: Per embedding model, one vector per chunk: the active model's, and during a
                migration the target model's too.
            now_ms: The time of the commit.

        Returns:
            (outcome, replaced): ``indexed`` (and whether older chunks were replaced),
            ``unchanged`` (already indexed: nothing written), ``superseded`` (newer content
            was upserted), ``gone`` (the document or collection was deleted) or ``models``
            (the collection's models changed since it was read: embed again).
        """
        models = sorted(vectors)
        args: list[Any] = [
            self.prefix, self.events_maxlen, event.collection_id, event.uid, event.document_id,
            event.content_hash, now_ms, event.operation_id, json.dumps(models),
        ]  # fmt: skip
        for i, c in enumerate(chunks):
            meta = json.dumps(c.metadata, sort_keys=True, ensure_ascii=False)
            args += [c.chunk_id, c.text, c.title, c.parent_text, meta]
            args += [_vector_bytes(vectors[m][i]) for m in models]
        outcome, had = await self._commit(keys=[self.events_key], args=args)
        return _s(outcome), bool(int(had))

    async def chunks(
        self, uid: str, chunk_ids: Sequence[str], dim: int, model: str, ensemble: Mapping[str, int] | None = None
    ) -> list[Chunk]:
        """The chunks of ``chunk_ids`` that still exist, with their vector of ``model`` and of
        every ``ensemble`` model (id -> dimension); a chunk lacking one is left out."""
        if not chunk_ids:
            return []
        extra = sorted((ensemble or {}).items())
        base = f"{self.prefix}:u:{uid}:k:"
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in chunk_ids:
                pipe.hmget(base + cid, "doc", "text", "title", "parent", "meta", f"v:{model}",
                           *(f"v:{m}" for m, _ in extra))  # fmt: skip
            rows = await pipe.execute()
        out = []
        for cid, (doc, text, title, parent, meta, vec, *more) in zip(chunk_ids, rows, strict=True):
            if doc is None or vec is None or any(v is None for v in more):
                continue
            vector = np.frombuffer(vec, np.float32)
            others = {m: np.frombuffer(v, np.float32) for (m, _), v in zip(extra, more, strict=True)}
            if len(vector) != dim or any(len(others[m]) != d for m, d in extra):
                continue
            out.append(Chunk(cid, _s(doc), _s(text), _s(title), _s(parent), json.loads(_s(meta) or "{}"), vector,
                             others))  # fmt: skip
        return out

    async def scan_chunks(
        self, uid: str, dim: int, model: str, batch: int = 1000, ensemble: Mapping[str, int] | None = None
    ) -> AsyncIterator[list[Chunk]]:
        """Every chunk of a collection with its vector of ``model`` (and of each ``ensemble``
        model), in batches (order unspecified)."""
        async for ids in self.scan_chunk_ids(uid, batch):
            yield await self.chunks(uid, ids, dim, model, ensemble)

    async def scan_chunk_ids(self, uid: str, batch: int = 1000) -> AsyncIterator[list[str]]:
        """Every chunk id of a collection, in batches (order unspecified)."""
        prefix = f"{self.prefix}:u:{uid}:k:"
        async for keys in self._scan_batches(prefix + "*", batch):
            yield [_s(k)[len(prefix) :] for k in keys]

    # --- embedding-model migrations --------------------------------------------------------

    async def start_migration(self, collection_id: str, model: str, dim: int, now_ms: int) -> str:
        """Marks a collection as moving to ``model``: ``started``, ``nocol``, ``busy`` or ``same``."""
        return _s(await self._start_migration(args=[self.prefix, collection_id, model, dim, now_ms]))

    async def missing_vectors(self, uid: str, chunk_ids: Sequence[str], model: str) -> list[tuple[str, str]]:
        """(chunk id, indexed text) of the chunks that exist and have no vector of ``model``."""
        base = f"{self.prefix}:u:{uid}:k:"
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in chunk_ids:
                pipe.hmget(base + cid, "text", "title", f"v:{model}")
            rows = await pipe.execute()
        out = []
        for cid, (text, title, vec) in zip(chunk_ids, rows, strict=True):
            if text is not None and vec is None:
                t, h = _s(text), _s(title)
                out.append((cid, f"{h}\n{t}" if h else t))
        return out

    async def fill_vectors(self, collection_id: str, uid: str, model: str, filled: Mapping[str, Any]) -> int:
        """Stores target-model vectors of existing chunks; -1 when the migration is over."""
        args: list[Any] = [self.prefix, collection_id, uid, model]
        for cid, vec in filled.items():
            args += [cid, _vector_bytes(vec)]
        return int(await self._fill(args=args))

    async def switch_model(self, collection_id: str, uid: str, model: str) -> str | None:
        """Makes ``model`` the active one (one step, announced on the index stream).

        Returns the previous model, or None when the migration is no longer the one given.
        """
        old = await self._switch(args=[self.prefix, self.events_maxlen, collection_id, uid, model])
        return _s(old) if old else None

    async def drop_vectors(self, uid: str, chunk_ids: Sequence[str], model: str) -> None:
        """Removes the vectors of a model no longer used."""
        base = f"{self.prefix}:u:{uid}:k:"
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in chunk_ids:
                pipe.hdel(base + cid, f"v:{model}")
            await pipe.execute()

    async def lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Takes (or extends, for its owner) a lock that expires after ``ttl_ms``."""
        key = f"{self.prefix}:lock:{name}"
        if await self.redis.set(key, owner, nx=True, px=ttl_ms):
            return True
        if _s(await self.redis.get(key)) == owner:
            await self.redis.pexpire(key, ttl_ms)
            return True
        return False

    async def unlock(self, name: str, owner: str) -> None:
        """Releases a lock this owner holds."""
        key = f"{self.prefix}:lock:{name}"
        if _s(await self.redis.get(key)) == owner:
            await self.redis.delete(key)

    async def collection_ids(self) -> list[str]:
        return [_s(x) for x in await self.redis.zrange(f"{self.prefix}:cols", 0, -1)]

    # --- operations --------------------------------------------------------------------

    async def get_operation(self, operation_id: str) -> Operation | None:
        raw = await self.redis.hgetall(f"{self.prefix}:op:{operation_id}")
        if not raw:
            return None
        return Operation(
            operation_id=operation_id,
            collection_id=_s(raw.get(b"c")),
            document_id=_s(raw.get(b"d")),
            content_hash=_s(raw.get(b"h")),
            state=OpState(_s(raw.get(b"state")) or "queued"),
            chunk_count=_i(raw.get(b"chunks")),
            embedded_count=_i(raw.get(b"embedded")),
            attempts=_i(raw.get(b"tries")),
            unchanged=_s(raw.get(b"unchanged")) == "1",
            created_ms=_i(raw.get(b"created")),
            updated_ms=_i(raw.get(b"updated")),
            error_code=_i(raw.get(b"ecode")),
            error_reason=_s(raw.get(b"ereason")),
            error_message=_s(raw.get(b"emsg")),
        )

    async def update_operation(self, operation_id: str, **fields: Any) -> None:
        """Sets progress fields of an operation that still exists (``state`` as OpState)."""
        mapping = {k: (v.value if isinstance(v, OpState) else str(v)) for k, v in fields.items()}
        key = f"{self.prefix}:op:{operation_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            exists = (await pipe.execute())[0]
        if exists:
            await self.redis.hset(key, mapping=mapping)

    # --- the ingest stream -------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Creates the consumer group (and the stream) unless they exist."""
        try:
            await self.redis.xgroup_create(self.ingest_key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[IngestEvent]:
        """Events no consumer has been given yet (waits up to ``block_ms`` for one)."""
        reply = await self.redis.xreadgroup(GROUP, consumer, {self.ingest_key: ">"}, count=count, block=block_ms)
        if not reply:
            return []
        batches = reply.values() if isinstance(reply, dict) else [items for _, items in reply]
        out = []
        for items in batches:
            for item in items:
                entries = item if isinstance(item, list) and item and isinstance(item[0], list) else [item]
                for stream_id, fields in entries:
                    if fields:
                        out.append(_ingest_event(stream_id, fields))
        return out

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[IngestEvent, int]]:
        """Takes over events another consumer was given but did not acknowledge within
        ``min_idle_ms`` (it died, or hangs), with how often each was delivered so far."""
        reply = await self.redis.xautoclaim(self.ingest_key, GROUP, consumer, min_idle_ms, "0-0", count=count)
        claimed = reply[1] if len(reply) > 1 else []
        out = []
        for stream_id, fields in claimed:
            if not fields:
                continue
            pending = await self.redis.xpending_range(self.ingest_key, GROUP, stream_id, stream_id, 1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            out.append((_ingest_event(stream_id, fields), deliveries))
        return out

    async def ack(self, event: IngestEvent) -> None:
        """Acknowledges and removes an event that needs nothing more."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.ingest_key, GROUP, event.stream_id)
            pipe.xdel(self.ingest_key, event.stream_id)
            await pipe.execute()

    async def retry_later(self, event: IngestEvent, due_ms: int, now_ms: int, error: str) -> None:
        """Acknowledges this delivery and schedules try ``event.attempt + 1`` at ``due_ms``."""
        attempt = event.attempt + 1
        await self._retry(
            keys=[self.events_key],
            args=[
                self.prefix, GROUP, event.stream_id, due_ms, event.payload(attempt), event.operation_id,
                event.attempt, now_ms, error[:500],
            ]
        )  # fmt: skip

    async def dead_letter(self, event: IngestEvent, now_ms: int, code: int, reason: str, message: str) -> None:
        """Parks an event in the dead-letter stream and fails its operation and document."""
        await self._dead(
            keys=[self.events_key],
            args=[
                self.prefix, GROUP, event.stream_id, event.operation_id, event.attempt, now_ms, code, reason,
                message[:500], self.events_maxlen, event.collection_id, event.uid, event.document_id,
                event.content_hash,
            ]
        )  # fmt: skip

    async def move_due(self, now_ms: int) -> int:
        """Puts delayed events whose time has come back on the ingest stream. Returns how many."""
        return int(await self._move_due(keys=[self.events_key], args=[self.prefix, now_ms, self.events_maxlen]))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The most recent dead letters, oldest first."""
        rows = await self.redis.xrevrange(self.dead_key, count=count)
        return [{_s(k): _s(v) for k, v in fields.items()} for _, fields in reversed(rows)]

    async def pending_count(self) -> int:
        """Events delivered to a consumer and not acknowledged yet."""
        info = await self.redis.xpending(self.ingest_key, GROUP)
        return int(info["pending"]) if info else 0

    async def backlog(self) -> int:
        """Events in the ingest stream plus those waiting for a retry."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.ingest_key)
            pipe.zcard(f"{self.prefix}:delayed")
            a, b = await pipe.execute()
        return int(a) + int(b)

    # --- the index event stream --------------------------------------------------------

    @staticmethod
    def _index_events(items: Sequence[Any]) -> list[IndexEvent]:
        out = []
        for stream_id, f in items:
            out.append(
                IndexEvent(
                    _s(stream_id),
                    _s(f.get(b"op")),
                    _s(f.get(b"c")),
                    _s(f.get(b"u")),
                    _s(f.get(b"d")),
                    json.loads(_s(f.get(b"add")) or "[]"),
                    json.loads(_s(f.get(b"drop")) or "[]"),
                    _i(f.get(b"n")),
                )
            )
        return out

    async def stream_head(self) -> tuple[str, int]:
        """The id and number of the newest index event (``EVENTS_START``, 0 when none)."""
        items = await self.redis.xrevrange(self.events_key, count=1)
        if not items:
            return EVENTS_START, 0
        event = self._index_events(items)[0]
        return event.stream_id, event.seq

    async def first_event_after(self, after_id: str) -> IndexEvent | None:
        items = await self.redis.xrange(self.events_key, min=f"({after_id}" if after_id != EVENTS_START else "-",
                                        count=1)  # fmt: skip
        events = self._index_events(items)
        return events[0] if events else None

    async def read_events(self, after_id: str, *, count: int = 512, block_ms: int | None = None) -> list[IndexEvent]:
        """Index events after ``after_id``, waiting up to ``block_ms`` for one when given."""
        reply = await self.redis.xread({self.events_key: after_id}, count=count, block=block_ms)
        if not reply:
            return []
        batches = reply.values() if isinstance(reply, dict) else [items for _, items in reply]
        return [e for items in batches for e in self._index_events(items[0] if _nested(items) else items)]


def _nested(items: Any) -> bool:
    # redis-py returns [[stream_id, fields], ...] under RESP2 and may nest one level more under RESP3.
    return bool(items) and isinstance(items[0], list) and bool(items[0]) and isinstance(items[0][0], list)


def encode_page_token(last: str) -> str:
    """An opaque page token that resumes after ``last``."""
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The id a page token resumes after, or None when the token is malformed."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
