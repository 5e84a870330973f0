"""The jobs service's Redis: the only module here that talks to it.

Keys (``{p}`` is the configured prefix)::

    {p}:job:<id>          HASH    one job (fields below); expires ``retention`` after it ends
    {p}:job:<id>:hooks    LIST    its webhook attempts as "ms|status|error"; expires with it
    {p}:tenant:<tenant>   ZSET    a tenant's single jobs, all score 0, ids in time order (lex range)
    {p}:idem:<tenant>:<r> STRING  the job a submit with request id <r> made
    {p}:queue             STREAM  one entry per job to run ({id}) at priority interactive or normal;
                                  consumer group ``workers``
    {p}:queue:batch       STREAM  the same for priority batch: workers read it only when the first
                                  stream has nothing waiting, so a big batch never holds up a job
    {p}:batch:<id>        HASH    a batch's counts; expires ``retention`` after its last item ends
    {p}:batches:<tenant>  ZSET    a tenant's batch ids, all score 0, in time order (lex range)
    {p}:batch:<id>:items  LIST    its job ids in order; expires with it
    {p}:hooks:due         ZSET    job ids whose webhook is due, by due time (ms); a deliverer leases
                                  one by moving its score ahead
    {p}:deadletter        STREAM  webhooks that failed every attempt ({job, tenant, url})
    {p}:file:<id>         HASH    a stored file; expires ``retention`` after it was stored
    {p}:files:<tenant>    ZSET    a tenant's file ids, all score 0, in time order (lex range); an id
                                  whose file expired is dropped when a listing meets it

A job ends exactly once: the finish script changes nothing when the job has already ended, and the
batch counters, the expiry and the webhook schedule move in that same script.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tollway.jobs.types import Batch, Delivery, Job, JobError, NewJob, Owner, State, StoredFile

GROUP = "workers"
LANES = ("main", "batch")


class Entry(NamedTuple):
    """A queue entry: its stream, its id there, and the job it runs."""

    stream: str
    id: str
    job_id: str


# KEYS: job, hooks-due ZSET. ARGV: now_ms, max_attempts.
# Returns 'run' (attempts counted, state running), 'exhausted', 'missing' or the ended state.
_START = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[2]) then return 'exhausted' end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_ms', ARGV[1], 'attempts', attempts + 1)
return 'run'
"""

# KEYS: job, job hooks list, hooks-due ZSET. ARGV: state, now_ms, retention_ms, response, code,
# message, reason. Returns 'ok' or the state the job had already ended in ('missing' if gone).
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
local now = tonumber(ARGV[2])
local ret = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'ended_ms', now, 'expire_ms', now + ret,
  'resp', ARGV[4], 'err_code', ARGV[5], 'err_msg', ARGV[6], 'err_reason', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ret)
redis.call('PEXPIRE', KEYS[2], ret)
local hook = redis.call('HGET', KEYS[1], 'webhook')
if hook and hook ~= '' then
  redis.call('HSET', KEYS[1], 'hook_state', 'pending')
  redis.call('ZADD', KEYS[3], now, redis.call('HGET', KEYS[1], 'id'))
end
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch and batch ~= '' then
  local bkey = ARGV[8] .. batch
  if redis.call('EXISTS', bkey) == 1 then
    local field = ({succeeded='ok', failed='failed', cancelled='cancelled'})[ARGV[1]]
    redis.call('HINCRBY', bkey, field, 1)
    local b = redis.call('HMGET', bkey, 'total', 'ok', 'failed', 'cancelled')
    if tonumber(b[2]) + tonumber(b[3]) + tonumber(b[4]) >= tonumber(b[1]) then
      redis.call('HSET', bkey, 'ended_ms', now, 'expire_ms', now + ret)
      redis.call('PEXPIRE', bkey, ret)
      redis.call('PEXPIRE', bkey .. ':items', ret)
    end
  end
end
return 'ok'
"""

# KEYS: hooks-due ZSET. ARGV: now_ms, lease_ms, count. Leases up to `count` due jobs: each gets
# its score moved to now + lease, so another deliverer takes it only if this one dies.
_LEASE_HOOKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return due
"""


def _s(v: bytes | None) -> str:
    return v.decode() if v else ""


def _i(v: bytes | None) -> int:
    return int(v) if v else 0


class JobsStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "{tw:jobs}") -> None:
        self.r = client
        self.p = prefix
        self.queue = f"{prefix}:queue"
        self.streams = {"main": self.queue, "batch": f"{prefix}:queue:batch"}
        self.due = f"{prefix}:hooks:due"
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._lease = client.register_script(_LEASE_HOOKS)

    def _job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def _batch(self, batch_id: str) -> str:
        return f"{self.p}:batch:{batch_id}"

    async def ensure_group(self) -> None:
        """Creates the queues and their consumer group unless they exist."""
        for stream in self.streams.values():
            try:
                await self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- writes ---------------------------------------------------------------------------------

    def _job_fields(self, job_id: str, owner: Owner, new: NewJob, webhook: str, now_ms: int) -> dict[str, str | bytes]:
        return {
            "id": job_id,
            "tenant": owner.tenant,
            "key_id": owner.key_id,
            "key_hash": owner.key_sha256,
            "state": State.QUEUED.value,
            "req": new.request,
            "model": new.model,
            "prio": str(new.priority),
            "webhook": webhook,
            "custom_id": new.custom_id,
            "created_ms": str(now_ms),
            "attempts": "0",
        }

    def queued(self, job_id: str, owner: Owner, new: NewJob, webhook: str, now_ms: int) -> Job:
        """The job :meth:`submit` just stored under ``job_id``, as stored (read back, it may be
        running already: a worker can take it the moment it is queued)."""
        fields = self._job_fields(job_id, owner, new, webhook, now_ms)
        return _job({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}, [])

    async def submit(
        self, job_id: str, owner: Owner, new: NewJob, webhook: str, now_ms: int, request_id: str, retention_ms: int
    ) -> str:
        """Stores and queues one job, in one transaction. With ``request_id``, a job an earlier
        submit made under it wins: its id is returned and nothing is written."""
        if request_id:
            idem = f"{self.p}:idem:{owner.tenant}:{request_id}"
            if not await self.r.set(idem, job_id, nx=True, px=retention_ms):
                existing = await self.r.get(idem)
                if existing is not None:
                    return existing.decode()
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self._job(job_id), mapping=self._job_fields(job_id, owner, new, webhook, now_ms))  # type: ignore[arg-type]
            pipe.zadd(f"{self.p}:tenant:{owner.tenant}", {job_id: 0})
            pipe.xadd(self.streams[new.lane], {"id": job_id})
            await pipe.execute()
        return job_id

    async def submit_batch(
        self,
        batch_id: str,
        job_ids: Sequence[str],
        owner: Owner,
        items: Sequence[NewJob],
        webhook: str,
        now_ms: int,
        input_file: str,
        labels: dict[str, str],
    ) -> None:
        """Stores the batch, its jobs and their queue entries in one transaction: a batch is
        queued whole or not at all."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._batch(batch_id),
                mapping={
                    "id": batch_id,
                    "tenant": owner.tenant,
                    "total": str(len(items)),
                    "ok": "0",
                    "failed": "0",
                    "cancelled": "0",
                    "created_ms": str(now_ms),
                    "input_file": input_file,
                    "labels": json.dumps(labels),
                },
            )
            for i, (job_id, new) in enumerate(zip(job_ids, items, strict=True)):
                fields = self._job_fields(job_id, owner, new, webhook, now_ms)
                fields["batch"], fields["idx"] = batch_id, str(i)
                pipe.hset(self._job(job_id), mapping=fields)  # type: ignore[arg-type]
            pipe.rpush(self._batch(batch_id) + ":items", *job_ids)
            pipe.zadd(f"{self.p}:batches:{owner.tenant}", {batch_id: 0})
            for job_id, new in zip(job_ids, items, strict=True):
                pipe.xadd(self.streams[new.lane], {"id": job_id})
            await pipe.execute()

    async def start(self, job_id: str, now_ms: int, max_attempts: int) -> str:
        """Marks a job running and counts the attempt; see ``_START`` for the answers."""
        return (await self._start(keys=[self._job(job_id), self.due], args=[now_ms, max_attempts])).decode()

    async def finish(
        self,
        job_id: str,
        state: State,
        now_ms: int,
        retention_ms: int,
        response: bytes = b"",
        error: JobError | None = None,
    ) -> str:
        """Ends a job unless it has ended already: 'ok', or the state it ended in ('missing')."""
        err = error or JobError(0, "", "")
        out = await self._finish(
            keys=[self._job(job_id), self._job(job_id) + ":hooks", self.due],
            args=[state.value, now_ms, retention_ms, response, err.code, err.message, err.reason, f"{self.p}:batch:"],
        )
        return out.decode()

    async def set_cancel_requested(self, batch_id: str) -> None:
        await self.r.hset(self._batch(batch_id), "cancel", "1")

    # -- the queue ------------------------------------------------------------------------------

    async def read_new(self, consumer: str, lane: str, block_ms: int | None = None) -> list[Entry]:
        """At most one new entry of a lane's stream for ``consumer``; [] at once (``block_ms`` None)
        or after ``block_ms``."""
        stream = self.streams[lane]
        got = await self.r.xreadgroup(GROUP, consumer, {stream: ">"}, count=1, block=block_ms)
        return [Entry(stream, e.decode(), _s(f.get(b"id"))) for _, entries in got or [] for e, f in entries]

    async def reclaim(self, consumer: str, min_idle_ms: int) -> list[Entry]:
        """At most one entry whose worker has been silent ``min_idle_ms``, now ``consumer``'s (the
        main lane's first)."""
        for stream in self.streams.values():
            _, claimed, *_ = await self.r.xautoclaim(stream, GROUP, consumer, min_idle_ms, "0-0", count=1)
            found = [Entry(stream, e.decode(), _s(f.get(b"id"))) for e, f in claimed if f]
            if found:
                return found
        return []

    async def heartbeat(self, consumer: str, entry: Entry) -> bool:
        """Renews ``consumer``'s claim on an entry (its idle time goes back to 0). False when the
        entry is no longer pending (acknowledged, or deleted)."""
        got = await self.r.xclaim(entry.stream, GROUP, consumer, 0, [entry.id], justid=True)
        return bool(got)

    async def ack(self, entry: Entry) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xack(entry.stream, GROUP, entry.id)
            pipe.xdel(entry.stream, entry.id)
            await pipe.execute()

    async def queue_depth(self) -> tuple[int, int]:
        """(entries never read, entries read and not acknowledged), over both lanes."""
        lag = pending = 0
        for stream in self.streams.values():
            for g in await self.r.xinfo_groups(stream):
                if g["name"] in (GROUP, GROUP.encode()):
                    lag += int(g.get("lag") or 0)
                    pending += int(g["pending"])
        return lag, pending

    # -- reads ----------------------------------------------------------------------------------

    async def state(self, job_id: str) -> State | None:
        raw = await self.r.hget(self._job(job_id), "state")
        return State(raw.decode()) if raw else None

    async def get(self, job_id: str) -> Job | None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._job(job_id))
            pipe.lrange(self._job(job_id) + ":hooks", 0, -1)
            h, hooks = await pipe.execute()
        return _job(h, hooks) if h else None

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._job(job_id))
                pipe.lrange(self._job(job_id) + ":hooks", 0, -1)
            raw = await pipe.execute()
        return [_job(raw[i], raw[i + 1]) if raw[i] else None for i in range(0, len(raw), 2)]

    async def list_ids(self, tenant: str, before: str, count: int) -> list[str]:
        """Up to ``count`` of a tenant's single job ids, newest first, older than ``before`` ("": from the newest)."""
        top = f"({before}" if before else "+"
        ids = await self.r.zrange(f"{self.p}:tenant:{tenant}", top, "-", desc=True, bylex=True, offset=0, num=count)
        return [i.decode() for i in ids]

    async def forget(self, tenant: str, job_ids: Sequence[str]) -> None:
        """Drops listed ids whose jobs the retention removed."""
        if job_ids:
            await self.r.zrem(f"{self.p}:tenant:{tenant}", *job_ids)

    async def _ids_before(self, key: str, before: str, count: int) -> list[str]:
        """Up to ``count`` ids of a time-ordered index, newest first, older than ``before`` ("": from the newest)."""
        top = f"({before}" if before else "+"
        ids = await self.r.zrange(key, top, "-", desc=True, bylex=True, offset=0, num=count)
        return [i.decode() for i in ids]

    async def list_batch_ids(self, tenant: str, before: str, count: int) -> list[str]:
        """Up to ``count`` of a tenant's batch ids, newest first, older than ``before`` ("": from the newest)."""
        return await self._ids_before(f"{self.p}:batches:{tenant}", before, count)

    async def forget_batches(self, tenant: str, batch_ids: Sequence[str]) -> None:
        """Drops listed batch ids that the retention removed."""
        if batch_ids:
            await self.r.zrem(f"{self.p}:batches:{tenant}", *batch_ids)

    async def batch_ids(self, batch_id: str, start: int, count: int) -> list[str]:
        return [i.decode() for i in await self.r.lrange(self._batch(batch_id) + ":items", start, start + count - 1)]

    async def get_batch(self, batch_id: str) -> Batch | None:
        h = await self.r.hgetall(self._batch(batch_id))
        if not h:
            return None
        return Batch(
            id=_s(h.get(b"id")),
            tenant=_s(h.get(b"tenant")),
            total=_i(h.get(b"total")),
            succeeded=_i(h.get(b"ok")),
            failed=_i(h.get(b"failed")),
            cancelled=_i(h.get(b"cancelled")),
            created_ms=_i(h.get(b"created_ms")),
            ended_ms=_i(h.get(b"ended_ms")),
            expire_ms=_i(h.get(b"expire_ms")),
            cancel_requested=h.get(b"cancel") == b"1",
            input_file=_s(h.get(b"input_file")),
            labels=json.loads(h.get(b"labels") or b"{}"),
        )

    # -- webhooks -------------------------------------------------------------------------------

    async def lease_due_hooks(self, now_ms: int, lease_ms: int, count: int) -> list[str]:
        return [i.decode() for i in await self._lease(keys=[self.due], args=[now_ms, lease_ms, count])]

    async def record_delivery(
        self, job_id: str, d: Delivery, outcome: str, next_due_ms: int, dead_letter: dict[str, str]
    ) -> None:
        """Appends an attempt; ``outcome`` "delivered" or "dead_lettered" ends the schedule, "pending"
        moves the job's next attempt to ``next_due_ms``."""
        key = self._job(job_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.rpush(key + ":hooks", f"{d.attempt_ms}|{d.http_status}|{d.error}")
            pipe.hset(key, "hook_state", outcome)
            if outcome == "pending":
                pipe.zadd(self.due, {job_id: next_due_ms})
            else:
                pipe.zrem(self.due, job_id)
            if outcome == "dead_lettered":
                pipe.xadd(f"{self.p}:deadletter", dead_letter, maxlen=100_000, approximate=True)
            # The attempts list lives as long as its job.
            ttl = await self.r.pttl(key)
            if ttl > 0:
                pipe.pexpire(key + ":hooks", ttl)
            await pipe.execute()

    async def drop_hook(self, job_id: str) -> None:
        await self.r.zrem(self.due, job_id)

    # -- files ----------------------------------------------------------------------------------

    async def put_file(self, f: StoredFile, retention_ms: int) -> None:
        key = f"{self.p}:file:{f.id}"
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "tenant": f.tenant,
                    "filename": f.filename,
                    "purpose": f.purpose,
                    "size": str(f.size_bytes),
                    "created_ms": str(f.created_ms),
                    "content": f.content,
                },
            )
            pipe.pexpire(key, retention_ms)
            pipe.zadd(f"{self.p}:files:{f.tenant}", {f.id: 0})
            await pipe.execute()

    async def list_file_ids(self, tenant: str, before: str, count: int) -> list[str]:
        """Up to ``count`` of a tenant's file ids, newest first, older than ``before`` ("": from the newest)."""
        return await self._ids_before(f"{self.p}:files:{tenant}", before, count)

    async def files_without_content(self, file_ids: Sequence[str]) -> list[StoredFile | None]:
        """Each file's description (its content left in Redis), None for one that expired; one round trip."""
        fields = ("tenant", "filename", "purpose", "size", "created_ms")
        async with self.r.pipeline(transaction=False) as pipe:
            for file_id in file_ids:
                pipe.hmget(f"{self.p}:file:{file_id}", fields)
            rows = await pipe.execute()
        return [
            None if row[0] is None else StoredFile(file_id, _s(row[0]), _s(row[1]), _s(row[2]), _i(row[3]), _i(row[4]))
            for file_id, row in zip(file_ids, rows, strict=True)
        ]

    async def forget_files(self, tenant: str, file_ids: Sequence[str]) -> None:
        """Drops listed file ids whose file the retention removed."""
        if file_ids:
            await self.r.zrem(f"{self.p}:files:{tenant}", *file_ids)

    async def delete_file(self, tenant: str, file_id: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.p}:file:{file_id}")
            pipe.zrem(f"{self.p}:files:{tenant}", file_id)
            await pipe.execute()

    async def get_file(self, file_id: str) -> StoredFile | None:
        h = await self.r.hgetall(f"{self.p}:file:{file_id}")
        if not h:
            return None
        return StoredFile(
            id=file_id,
            tenant=_s(h.get(b"tenant")),
            filename=_s(h.get(b"filename")),
            purpose=_s(h.get(b"purpose")),
            size_bytes=_i(h.get(b"size")),
            created_ms=_i(h.get(b"created_ms")),
            content=h.get(b"content") or b"",
        )


def _delivery(raw: bytes) -> Delivery:
    ms, status, error = raw.decode().split("|", 2)
    return Delivery(int(ms), int(status), error)


def _job(h: dict[bytes, bytes], hooks: list[bytes]) -> Job:
    code = _i(h.get(b"err_code"))
    return Job(
        id=_s(h.get(b"id")),
        owner=Owner(_s(h.get(b"tenant")), _s(h.get(b"key_id")), _s(h.get(b"key_hash"))),
        state=State(_s(h.get(b"state"))),
        request=h.get(b"req") or b"",
        model=_s(h.get(b"model")),
        priority=_i(h.get(b"prio")),
        webhook_url=_s(h.get(b"webhook")),
        batch_id=_s(h.get(b"batch")),
        batch_index=_i(h.get(b"idx")),
        custom_id=_s(h.get(b"custom_id")),
        created_ms=_i(h.get(b"created_ms")),
        started_ms=_i(h.get(b"started_ms")),
        ended_ms=_i(h.get(b"ended_ms")),
        expire_ms=_i(h.get(b"expire_ms")),
        attempts=_i(h.get(b"attempts")),
        response=h.get(b"resp") or b"",
        error=JobError(code, _s(h.get(b"err_msg")), _s(h.get(b"err_reason"))) if code else None,
        webhook_state=_s(h.get(b"hook_state")),
        deliveries=tuple(_delivery(d) for d in hooks),
    )
