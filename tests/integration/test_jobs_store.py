"""The jobs domain over a real, private Redis (no services): retention, ending once, batch counters,
cancelling, paging, the queue's reclaim, and the worker loop with a runner that fails as the gateway
can (a retryable failure is retried from the pending list; a final one fails the job)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.support.polling import eventually
from tests.support.redis_server import LocalRedis, local_redis
from tollway.jobs import metrics
from tollway.jobs.config import JobsConfig
from tollway.jobs.jobs import Jobs, now_ms
from tollway.jobs.store import JobsStore
from tollway.jobs.types import Job, NewJob, Owner, State
from tollway.jobs.worker import RunFailure, Workers, WorkerSettings
from tollway.mesh import redis as mesh_redis
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

pytestmark = pytest.mark.timeout(60)

ACME = Owner("acme", "tw-acme01", "a" * 64)
OTHER = Owner("other", "tw-other1", "b" * 64)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with local_redis() as server:
        yield server


@pytest.fixture
async def store(redis_server: LocalRedis) -> AsyncIterator[JobsStore]:
    client = mesh_redis.connect(redis_server.url)
    await client.flushdb()
    s = JobsStore(client)
    await s.ensure_group()
    yield s
    await client.aclose()


def new(model: str = "m", custom_id: str = "", lane: str = "batch") -> NewJob:
    priority = 3 if lane == "batch" else 2
    return NewJob(b"\x0a\x01m", model, priority, custom_id=custom_id, lane=lane, message_count=1)


async def test_a_finished_job_is_removed_after_the_retention(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig(retention_s=1))
    job = await jobs.submit(ACME, new())
    assert [j.id for j in (await jobs.list(ACME, 10, "")).items] == [job.id]
    assert await store.finish(job.id, State.SUCCEEDED, now_ms(), 1000, response=b"r") == "ok"
    assert (await jobs.get(ACME, job.id)).expire_ms > 0

    async def gone() -> bool:
        try:
            await jobs.get(ACME, job.id)
        except NotFound:
            return True
        return False

    await eventually(gone, timeout_s=5, interval_s=0.1, what="the job removed after its retention")
    assert (await jobs.list(ACME, 10, "")).items == []
    assert await store.list_ids(ACME.tenant, "", 10) == []  # the listing forgot it too


async def test_a_job_ends_once_and_its_batch_counts_it_once(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    batch = await jobs.submit_batch(ACME, [new(custom_id=f"c{i}") for i in range(3)])
    ids = await store.batch_ids(batch.id, 0, 10)
    assert await store.finish(ids[0], State.SUCCEEDED, now_ms(), 60_000) == "ok"
    assert await store.finish(ids[0], State.FAILED, now_ms(), 60_000) == "succeeded"  # already ended
    assert await store.finish(ids[1], State.FAILED, now_ms(), 60_000) == "ok"
    mid = await jobs.get_batch(ACME, batch.id)
    assert (mid.succeeded, mid.failed, mid.cancelled, mid.done) == (1, 1, 0, False)
    cancelled = await jobs.cancel_batch(ACME, batch.id)
    assert (cancelled.succeeded, cancelled.failed, cancelled.cancelled, cancelled.done) == (1, 1, 1, True)
    assert cancelled.cancel_requested
    with pytest.raises(FailedPrecondition):
        await jobs.cancel_batch(ACME, batch.id)
    with pytest.raises(FailedPrecondition, match="already succeeded"):
        await jobs.cancel(ACME, ids[0])
    assert (await jobs.cancel(ACME, ids[2])).state == State.CANCELLED  # idempotent


async def test_another_tenant_sees_nothing(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    job = await jobs.submit(ACME, new())
    batch = await jobs.submit_batch(ACME, [new()])
    with pytest.raises(NotFound):
        await jobs.get(OTHER, job.id)
    with pytest.raises(NotFound):
        await jobs.cancel(OTHER, job.id)
    with pytest.raises(NotFound):
        await jobs.get_batch(OTHER, batch.id)
    assert (await jobs.list(OTHER, 10, "")).items == []
    assert (await jobs.get(ACME, job.id)).state == State.QUEUED  # untouched


async def test_paging_newest_first_with_a_state_filter(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    made = [(await jobs.submit(ACME, new())).id for _ in range(7)]
    for job_id in made[::2]:
        await store.finish(job_id, State.SUCCEEDED, now_ms(), 60_000)
    seen, token = [], ""
    while True:
        page = await jobs.list(ACME, 2, token, State.SUCCEEDED)
        seen += [j.id for j in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(made[::2], reverse=True)
    with pytest.raises(InvalidArgument):
        await jobs.list(ACME, 2, "not-a-token")


async def test_a_submit_with_a_request_id_is_idempotent(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    first = await jobs.submit(ACME, new(), request_id="order-42")
    again = await jobs.submit(ACME, new(), request_id="order-42")
    assert again.id == first.id
    assert len((await jobs.list(ACME, 10, "")).items) == 1
    with pytest.raises(InvalidArgument):
        await jobs.submit(ACME, new(), request_id="has spaces")


async def test_a_silent_worker_s_entry_is_reclaimed_by_another(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    job = await jobs.submit(ACME, new())
    [entry] = await store.read_new("worker-a", "batch", 100)
    assert entry.job_id == job.id
    assert await store.reclaim("worker-b", 60_000) == []  # worker-a is not silent long enough
    await asyncio.sleep(0.05)  # the idle time itself is what is tested
    assert await store.reclaim("worker-b", 10) == [entry]
    assert await store.heartbeat("worker-b", entry)
    await store.ack(entry)
    assert not await store.heartbeat("worker-b", entry)
    assert await store.queue_depth() == (0, 0)


async def test_workers_retry_retryable_failures_and_fail_final_ones(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    calls: dict[str, int] = {}

    async def run(job: Job) -> bytes:
        calls[job.model] = calls.get(job.model, 0) + 1
        if job.model == "flaky" and calls[job.model] == 1:
            raise RunFailure(14, "gateway down", "GATEWAY_UNAVAILABLE")
        if job.model == "bad":
            raise RunFailure(3, "model 'bad' is unknown", "UNKNOWN_MODEL")
        if job.model == "down":
            raise RunFailure(14, "still down", "GATEWAY_UNAVAILABLE")
        return b"answer"

    settings = WorkerSettings(
        workers=2, claim_idle_ms=200, heartbeat_ms=50, max_attempts=3, retention_ms=60_000, poll_ms=50
    )
    workers = Workers(store, run, settings, now_ms)
    before = {k: metrics.RUN_FAILURES.labels(k)._value.get() for k in ("retryable", "final")}
    flaky = await jobs.submit(ACME, new("flaky"))
    bad = await jobs.submit(ACME, new("bad"))
    down = await jobs.submit(ACME, new("down"))
    workers.start()
    try:

        async def ended() -> bool:
            states = [(await jobs.get(ACME, j.id)).state for j in (flaky, bad, down)]
            return all(s.done for s in states)

        await eventually(ended, timeout_s=20, interval_s=0.05, what="every job ended")
    finally:
        await workers.stop()
    f, b, d = [await jobs.get(ACME, j.id) for j in (flaky, bad, down)]
    assert (f.state, f.attempts, f.response) == (State.SUCCEEDED, 2, b"answer")
    assert (b.state, b.attempts) == (State.FAILED, 1)
    assert b.error is not None
    assert (b.error.code, b.error.reason) == (3, "UNKNOWN_MODEL")
    assert (d.state, d.attempts) == (State.FAILED, 3)
    assert d.error is not None
    assert d.error.reason == "JOB_ATTEMPTS_EXHAUSTED"
    assert calls == {"flaky": 2, "bad": 1, "down": 3}
    after = {k: metrics.RUN_FAILURES.labels(k)._value.get() - before[k] for k in before}
    assert after == {"retryable": 1 + 3, "final": 1}
    assert await store.queue_depth() == (0, 0)


async def test_the_main_lane_goes_before_the_batch_lane(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    batch = await jobs.submit_batch(ACME, [new(custom_id=f"c{i}") for i in range(3)])
    urgent = await jobs.submit(ACME, new(lane="main"))
    order: list[str] = []

    async def run(job: Job) -> bytes:
        order.append(job.id)
        return b"ok"

    settings = WorkerSettings(
        workers=1, claim_idle_ms=1000, heartbeat_ms=100, max_attempts=3, retention_ms=60_000, poll_ms=50
    )
    workers = Workers(store, run, settings, now_ms)
    workers.start()
    try:
        await eventually(lambda: len(order) == 4, timeout_s=10, what="every job run")
    finally:
        await workers.stop()
    assert order[0] == urgent.id  # submitted last, run first
    assert order[1:] == await store.batch_ids(batch.id, 0, 10)


async def test_a_request_that_cannot_run_is_refused_at_submit(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    with pytest.raises(InvalidArgument) as err:
        await jobs.submit(ACME, NewJob(b"", "", 3))
    assert [f for f, _ in err.value.violations] == ["request.model", "request.messages"]
    with pytest.raises(InvalidArgument) as err:
        await jobs.submit_batch(ACME, [new(), NewJob(b"", "m", 3)])
    assert [f for f, _ in err.value.violations] == ["items[1].request.messages"]
    await jobs.submit(ACME, NewJob(b"", "", 3, has_prompt_ref=True))  # the prompt brings both
    assert await store.queue_depth() == (1, 0)  # only that one was queued


async def _every_page(list_page: Callable[[str], Awaitable[Any]]) -> list[str]:
    """The ids of every page, following next_page_token from the first."""
    seen, token = [], ""
    while True:
        page = await list_page(token)
        seen += [item.id for item in page.items]
        token = page.next_page_token
        if not token:
            return seen


async def test_batches_list_newest_first_and_a_batch_id_is_a_page_token(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    made = [(await jobs.submit_batch(ACME, [new()])).id for _ in range(5)]
    await jobs.submit_batch(OTHER, [new()])
    assert await _every_page(lambda token: jobs.list_batches(ACME, 2, token)) == made[::-1]
    assert [b.id for b in (await jobs.list_batches(ACME, 10, made[2])).items] == made[1::-1]
    with pytest.raises(InvalidArgument):
        await jobs.list_batches(ACME, 10, "nope")


async def test_files_list_newest_first_by_purpose_and_deleted_or_expired_ones_drop_out(store: JobsStore) -> None:
    jobs = Jobs(store, JobsConfig())
    made = [(await jobs.create_file(ACME, f"f{i}.jsonl", "batch" if i % 2 else "other", b"x")).id for i in range(5)]
    await jobs.create_file(OTHER, "theirs.jsonl", "batch", b"y")
    seen = await _every_page(lambda token: jobs.list_files(ACME, 2, token))
    assert seen == made[::-1]  # newest first, every page; the other tenant's file is not among them
    assert all(f.content == b"" for f in (await jobs.list_files(ACME, 10, "")).items)  # descriptions only
    assert [f.id for f in (await jobs.list_files(ACME, 10, "", purpose="batch")).items] == [made[3], made[1]]

    await jobs.delete_file(ACME, made[4])
    with pytest.raises(NotFound):
        await jobs.get_file(ACME, made[4])
    with pytest.raises(NotFound):
        await jobs.delete_file(OTHER, made[3])  # another tenant's file reads as missing and stays
    assert (await jobs.get_file(ACME, made[3])).content == b"x"
    # A file the retention removed leaves the listing, and its id the index.
    await store.r.delete(f"{store.p}:file:{made[0]}")
    assert [f.id for f in (await jobs.list_files(ACME, 10, "")).items] == made[3:0:-1]
    assert made[0].encode() not in await store.r.zrange(f"{store.p}:files:{ACME.tenant}", 0, -1)
    with pytest.raises(InvalidArgument):
        await jobs.list_files(ACME, 10, "nope")


async def test_a_job_a_worker_starts_at_once_is_answered_as_queued(store: JobsStore) -> None:
    # A worker can take a job the moment it is queued; its submitter is answered with the job as
    # queued, not with whatever the worker made of it meanwhile (the stack test saw RUNNING).
    jobs = Jobs(store, JobsConfig())
    submit = store.submit

    async def taken_at_once(job_id: str, *args: Any) -> str:
        stored = await submit(job_id, *args)
        assert await store.start(stored, now_ms(), 3) == "run"
        return stored

    store.submit = taken_at_once  # type: ignore[method-assign]
    job = await jobs.submit(ACME, new())
    assert job.state == State.QUEUED and job.attempts == 0
    assert (await jobs.get(ACME, job.id)).state == State.RUNNING
    # The same request id again: the job as it is now, not as it was queued.
    store.submit = submit  # type: ignore[method-assign]
    first = await jobs.submit(ACME, new(), request_id="once")
    assert await store.start(first.id, now_ms(), 3) == "run"
    again = await jobs.submit(ACME, new(), request_id="once")
    assert again.id == first.id and again.state == State.RUNNING
