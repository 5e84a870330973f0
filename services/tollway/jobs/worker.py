"""The workers: consumers of the queue's group, each running one job at a time through the gateway.

A job's life on the queue:

1. A worker takes over an entry whose worker has been silent for ``claim_idle_ms`` (XAUTOCLAIM: that
   worker died, or gave the job back after a retryable failure), else reads a new one (XREADGROUP):
   from the main lane (interactive and normal jobs) first, from the batch lane only when the main
   lane has nothing waiting, then it blocks on the main lane for ``poll_ms``.
2. The start script counts the attempt; a job that already ended (cancelled, or finished by a worker
   that died before acknowledging) is only acknowledged. Past ``max_attempts`` it fails.
3. While the gateway call runs, the worker renews its claim every ``heartbeat_ms`` (XCLAIM to
   itself), so a long generation is never taken over while its worker lives, and looks for a cancel.
4. The answer or a final error ends the job (the finish script: once, whoever calls it first), then
   the entry is acknowledged and deleted. A retryable error (UNAVAILABLE, RESOURCE_EXHAUSTED, ...)
   leaves the entry pending: it is tried again once it has been idle ``claim_idle_ms``; the worker
   then waits before its next job, longer after each such failure, so an outage of the gateway does
   not spend the attempts of the whole queue.

The job name is the gateway request id, so the budget reserves and charges a job once however many
times it runs (a repeated reserve finds the first reservation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from tollway.jobs import metrics
from tollway.jobs.store import Entry, JobsStore
from tollway.jobs.types import Job, JobError, State
from tollway.mesh import redis as mesh_redis
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.jobs.worker")

# google.rpc codes worth another attempt: the gateway or a provider was down or busy.
RETRYABLE_CODES = frozenset(
    {2, 4, 8, 10, 13, 14}
)  # UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE


@dataclasses.dataclass
class RunFailure(Exception):
    """The gateway refused or failed a job: a google.rpc code, message and reason."""

    code: int
    message: str
    reason: str

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


# Runs a job through the gateway; returns the serialised CompleteResponse or raises RunFailure.
Runner = Callable[[Job], Awaitable[bytes]]


@frozen
class WorkerSettings:
    workers: int
    claim_idle_ms: int
    heartbeat_ms: int
    max_attempts: int
    retention_ms: int
    poll_ms: int


class Workers:
    """``settings.workers`` consumer loops in this process. ``start()`` then ``stop()``; stop may be
    called before start and more than once. A job running at stop is left pending (not failed), so
    another worker reclaims it."""

    def __init__(self, store: JobsStore, run: Runner, settings: WorkerSettings, clock: Callable[[], int]) -> None:
        self.store = store
        self.run = run
        self.s = settings
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        # Unique per process start: a restarted worker never inherits its predecessor's pending list.
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.completed = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(f"{self.name}-{i}")) for i in range(self.s.workers)]

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    async def _loop(self, consumer: str) -> None:
        # Consecutive retryable failures of this worker. While the gateway (or what it needs) is
        # down, taking job after job would only move the whole queue into the pending list and
        # spend every job's attempts: the worker waits longer after each failure instead (up to
        # claim_idle_ms), and goes back to full speed with the first success.
        failures = 0
        while not self._stop.is_set():
            try:
                entries = (
                    await self.store.reclaim(consumer, self.s.claim_idle_ms)
                    or await self.store.read_new(consumer, "main")
                    or await self.store.read_new(consumer, "batch")
                    or await self.store.read_new(consumer, "main", self.s.poll_ms)
                )
                for entry in entries:
                    if await self._handle(consumer, entry):
                        failures += 1
                        await asyncio.sleep(min(self.s.claim_idle_ms, self.s.poll_ms * 2 ** min(failures, 10)) / 1000)
                    else:
                        failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down, or a bug: log, wait, go on
                if mesh_redis.is_outage(exc):
                    log.warning("jobs worker %s: Redis unavailable (%s); retrying", consumer, exc)
                else:
                    log.exception("jobs worker %s failed; retrying", consumer)
                await asyncio.sleep(self.s.poll_ms / 1000)

    async def _handle(self, consumer: str, entry: Entry) -> bool:
        """Runs one entry's job; True when it failed in a way worth another attempt (left pending)."""
        job_id = entry.job_id
        if not job_id:
            await self.store.ack(entry)
            return False
        outcome = await self.store.start(job_id, self.clock(), self.s.max_attempts)
        if outcome != "run":
            if outcome == "exhausted":
                await self.store.finish(
                    job_id,
                    State.FAILED,
                    self.clock(),
                    self.s.retention_ms,
                    error=JobError(
                        14,
                        f"the job was started {self.s.max_attempts} times without finishing; giving up",
                        "JOB_ATTEMPTS_EXHAUSTED",
                    ),
                )
            await self.store.ack(entry)
            return False
        job = await self.store.get(job_id)
        if job is None:
            await self.store.ack(entry)
            return False
        call = asyncio.create_task(self.run(job))
        started = time.perf_counter()
        cancelled = await self._watch(consumer, entry, call)
        try:
            response = await call
        except asyncio.CancelledError:
            if not cancelled:
                raise  # this worker is stopping: the entry stays pending for another
            await self.store.ack(entry)
            return False
        except RunFailure as f:
            metrics.RUN_FAILURES.labels("retryable" if f.retryable else "final").inc()
            if f.retryable:
                log.info("job %s: retryable failure %s (%s); it will be reclaimed", job_id, f.code, f.reason)
                return True
            metrics.JOBS_ENDED.labels("failed").inc()
            await self.store.finish(
                job_id, State.FAILED, self.clock(), self.s.retention_ms, error=JobError(f.code, f.message, f.reason)
            )
            await self.store.ack(entry)
            return False
        metrics.RUN_SECONDS.observe(time.perf_counter() - started)
        await self.store.finish(job_id, State.SUCCEEDED, self.clock(), self.s.retention_ms, response=response)
        metrics.JOBS_ENDED.labels("succeeded").inc()
        await self.store.ack(entry)
        self.completed += 1
        return False

    async def _watch(self, consumer: str, entry: Entry, call: asyncio.Task[bytes]) -> bool:
        """Renews the claim until the call ends; cancels the call if the job is cancelled.
        Returns True when it cancelled the call for that reason."""
        period = self.s.heartbeat_ms / 1000
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=period)
                if done:
                    return False
                with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                    await self.store.heartbeat(consumer, entry)
                    if await self.store.state(entry.job_id) == State.CANCELLED:
                        call.cancel()
                        return True
        except asyncio.CancelledError:
            call.cancel()
            raise
