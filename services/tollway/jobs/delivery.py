"""Delivers finished jobs to their webhooks: signed, tried again with backoff, then dead-lettered.

A finished job with a webhook is put on the due schedule by the same script that ends it, so a
delivery cannot be lost between the two. Every replica runs one deliverer; a deliverer leases due
jobs (moving them ahead by ``lease_ms``), so two never deliver the same attempt at once, and a job
whose deliverer dies is due again when the lease runs out. Every attempt is recorded on the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import httpx

from tollway.jobs import metrics, webhooks
from tollway.jobs.store import JobsStore
from tollway.jobs.types import Delivery, Job
from tollway.mesh import redis as mesh_redis
from tollway.mesh.errors import InvalidArgument

log = logging.getLogger("tollway.jobs.delivery")

# Renders a finished job as the JSON body a receiver gets (the Job message, proto JSON).
Render = Callable[[Job], bytes]


class Deliverer:
    """One delivery loop. ``start()`` then ``stop()`` (safe before start and more than once)."""

    def __init__(
        self,
        store: JobsStore,
        render: Render,
        secret: bytes,
        urls: webhooks.UrlPolicy,
        *,
        max_attempts: int,
        backoff_ms: int,
        backoff_max_ms: int,
        timeout_s: float,
        poll_ms: int,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.render = render
        self.secret = secret
        self.urls = urls
        self.max_attempts = max_attempts
        self.backoff_ms = backoff_ms
        self.backoff_max_ms = backoff_max_ms
        self.timeout_s = timeout_s
        self.poll_s = poll_ms / 1000
        self.clock = clock
        # A lease outlives one attempt (its timeout) with room to record it.
        self.lease_ms = int(timeout_s * 1000) * 2 + 5_000
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        # No redirects: a 3xx to an internal address would get around the allow-list.
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            try:
                due = await self.store.lease_due_hooks(self.clock(), self.lease_ms, 16)
                if due:
                    await asyncio.gather(*(self.deliver(job_id) for job_id in due))
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if mesh_redis.is_outage(exc):
                    log.warning("webhook deliverer: Redis unavailable (%s); retrying", exc)
                else:
                    log.exception("webhook deliverer failed; retrying")
            await asyncio.sleep(self.poll_s)

    async def deliver(self, job_id: str) -> None:
        """Makes one attempt for a leased job and records it."""
        job = await self.store.get(job_id)
        if job is None or not job.webhook_url or job.webhook_state in ("delivered", "dead_lettered"):
            await self.store.drop_hook(job_id)
            return
        status, error = await self._post(job)
        attempt = Delivery(self.clock(), status, error)
        n = len(job.deliveries) + 1
        if not error:
            outcome = "delivered"
        elif n >= self.max_attempts:
            outcome = "dead_lettered"
            log.warning("webhook of job %s dead-lettered after %d attempts: %s", job_id, n, error)
        else:
            outcome = "pending"
        metrics.WEBHOOK_DELIVERIES.labels("retry" if outcome == "pending" else outcome).inc()
        next_due = self.clock() + webhooks.backoff_ms(n, self.backoff_ms, self.backoff_max_ms)
        await self.store.record_delivery(
            job_id,
            attempt,
            outcome,
            next_due,
            {"job": f"jobs/{job_id}", "tenant": job.owner.tenant, "url": job.webhook_url, "error": error},
        )

    async def _post(self, job: Job) -> tuple[int, str]:
        """(HTTP status, "" on a 2xx or why not)."""
        assert self._client is not None
        try:
            await self.urls.check(job.webhook_url)  # the host may resolve elsewhere by now
        except InvalidArgument as exc:
            return 0, exc.message
        body = self.render(job)
        headers = webhooks.signed_headers(self.secret, body, f"jobs/{job.id}", self.clock() / 1000)
        try:
            reply = await self._client.post(job.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return 0, f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= reply.status_code < 300:
            return reply.status_code, ""
        return reply.status_code, f"HTTP {reply.status_code}"
