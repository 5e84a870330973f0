"""Circuit breakers per deployment, shared by every router replica.

State machine (the shared truth lives in Redis, changed atomically by one Lua script in
:mod:`tollway.router.store`)::

    CLOSED --N consecutive failures, or error rate >= R over the window--> OPEN
    OPEN --cooldown elapsed; the next caller gets the single probe--> HALF_OPEN
    HALF_OPEN --probe succeeds--> CLOSED      HALF_OPEN --probe fails--> OPEN

The cooldown depends on the failure that opened the breaker. A refused connection (the
deployment's server is down or restarting) sent nothing, so probing it costs the provider
nothing and fails in microseconds: such a breaker probes again after ``refused_cooldown_s``
(0.5 s), and a restarted server gets traffic back within that time. Any other failure
(timeout, 5xx, a cut stream) cost the provider a request and may mean it is overloaded: the
breaker then waits the full ``cooldown_s``.

While OPEN a deployment gets no calls at all, and this module remembers locally until
when it is open, so during the cooldown a request for it costs no network call (not
even to Redis). While CLOSED the hot path costs no Redis call either: a replica that saw
the breaker closed within ``local_view_s`` allows the call at once and counts successes
locally, flushing them in one batch (with their exact count) every ``flush_interval_s``;
a failure is recorded at once, after the successes before it, so the consecutive-failure
and error-rate rules see what happened in order. Another replica's decision to open
reaches this one at its next failure, its next state refresh, or within ``local_view_s``.

If Redis cannot be reached the breaker fails open: calls are allowed and
counted in ``tollway_router_breaker_store_errors_total``; a broken breaker must never be
what takes traffic down. Each store call is bounded (``store_timeout_s``) and after a failure
the store is left alone for a second, so an unreachable Redis adds at most that bound to a
few requests, not a stall to every one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from tollway.mesh import errors
from tollway.mesh.frozen import frozen
from tollway.router import metrics

log = logging.getLogger("tollway.router.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# The retry hint of a call refused while another caller's probe runs.
_HALF_OPEN_RETRY_S = 1.0


@frozen
class BreakerSettings:
    """Attributes:
    failure_threshold: Consecutive failures that open a closed breaker.
    error_rate: Failure ratio over the window that opens it (0 turns the rule off).
    window_s: Length of the error-rate window.
    min_requests: Calls needed in the window before the error rate counts.
    cooldown_s: How long an open breaker stays open before allowing one probe.
    refused_cooldown_s: The same, when the failure that opened it was a refused connection
        (nothing was sent, so probing again soon costs the provider nothing).
    probe_timeout_s: How long the probe may take before another caller may probe
        (covers a replica that died mid-probe).
    local_view_s: How long a closed state seen in Redis is trusted without asking again
        (0 asks Redis on every call).
    flush_interval_s: How often locally counted successes are written to Redis.
    """

    failure_threshold: int = 5
    error_rate: float = 0.5
    window_s: float = 30.0
    min_requests: int = 20
    cooldown_s: float = 10.0
    refused_cooldown_s: float = 0.5
    probe_timeout_s: float = 30.0
    local_view_s: float = 1.0
    flush_interval_s: float = 0.25

    @property
    def bucket_ms(self) -> int:
        """The window is counted in ten buckets (at least 100 ms each)."""
        return max(100, int(self.window_s * 100))


@frozen
class StoreResult:
    """What the shared store answered.

    Attributes:
        decision: "allow", "probe" or "reject" for an acquire; "ok" for a record.
        state: The state after the call.
        consecutive_failures: The breaker's consecutive failure count.
        retry_at_ms: When an open breaker allows a probe, or a probe lease ends (store clock).
        now_ms: The store's clock when it answered.
        transitioned_from: The previous state when this call changed it, else "".
    """

    decision: str
    state: str
    consecutive_failures: int
    retry_at_ms: int
    now_ms: int
    transitioned_from: str = ""


@frozen
class BreakerSnapshot:
    """A breaker's shared state, for listings."""

    name: str
    state: str
    consecutive_failures: int = 0
    window_requests: int = 0
    window_failures: int = 0
    opened_at_ms: int = 0
    next_probe_at_ms: int = 0
    changed_at_ms: int = 0
    last_error: str = ""


@frozen
class Transition:
    """One recorded state change."""

    id: str
    breaker: str
    from_state: str
    to_state: str
    reason: str
    at_ms: int
    replica: str


class BreakerStore(Protocol):
    """Where breaker state is shared (Redis in :mod:`tollway.router.store`)."""

    async def acquire(self, name: str, token: str, settings: BreakerSettings, replica: str) -> StoreResult: ...

    async def record(
        self,
        name: str,
        token: str,
        ok: bool,
        detail: str,
        settings: BreakerSettings,
        replica: str,
        count: int = 1,
        refused: bool = False,
    ) -> StoreResult: ...

    async def release(self, name: str, token: str) -> None: ...

    async def snapshots(self, names: Sequence[str], settings: BreakerSettings) -> list[BreakerSnapshot]: ...

    async def transitions(self, limit: int, before_id: str = "", breaker: str = "") -> list[Transition]: ...


@frozen
class Permit:
    """The answer to "may I call this deployment?".

    Attributes:
        allowed: Whether to make the call.
        probe: The call is the half-open probe: its outcome decides the breaker.
        state: The breaker state seen ("unknown" when the store could not be read).
        retry_in_s: For a refusal, how long until a probe may be tried.
        token: Identifies this caller's probe lease.
        local: Allowed from the local view of a closed breaker, without asking Redis.
    """

    name: str
    allowed: bool
    probe: bool = False
    state: str = CLOSED
    retry_in_s: float = 0.0
    token: str = ""
    local: bool = False


def replica_id() -> str:
    """``host:pid``, naming the replica in recorded transitions."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Breakers:
    """The breakers as one replica uses them: local open-cache, shared store, metrics.

    Args:
        store: The shared state; None disables breaking (every call allowed).
        settings: Thresholds and timings, the same for every replica.
        clock: Monotonic seconds (injected in tests).
        store_timeout_s: The longest a store call may take before the call is allowed anyway.
    """

    def __init__(
        self,
        store: BreakerStore | None,
        settings: BreakerSettings = BreakerSettings(),
        replica: str = "",
        clock: Callable[[], float] = time.monotonic,
        store_timeout_s: float = 0.5,
    ) -> None:
        self.store = store
        self.settings = settings
        self.replica = replica or replica_id()
        self._clock = clock
        self._store_timeout_s = store_timeout_s
        self._open_until: dict[str, float] = {}
        self._closed_until: dict[str, float] = {}
        self._unflushed_ok: dict[str, int] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._last_store_error = -1e9
        self._store_down_until = 0.0

    def _store_failed(self, action: str, name: str, exc: BaseException) -> None:
        metrics.BREAKER_STORE_ERRORS.inc()
        now = self._clock()
        self._store_down_until = now + 1.0
        if now - self._last_store_error > 10:
            self._last_store_error = now
            log.warning("breaker store %s failed for %s; allowing calls: %r", action, name, exc)

    def _store_usable(self) -> bool:
        return self.store is not None and self._clock() >= self._store_down_until

    def _observe(self, name: str, result: StoreResult) -> None:
        metrics.BREAKER_STATE.labels(name).set(metrics.BREAKER_STATE_VALUE.get(result.state, 0))
        if result.transitioned_from:
            metrics.BREAKER_TRANSITIONS.labels(name, result.transitioned_from, result.state).inc()
            log.info(
                "breaker %s: %s -> %s",
                name,
                result.transitioned_from,
                result.state,
                extra={"breaker": name, "from_state": result.transitioned_from, "to_state": result.state},
            )
        if result.state == OPEN and result.retry_at_ms:
            self._open_until[name] = self._clock() + max(0, result.retry_at_ms - result.now_ms) / 1000
        else:
            self._open_until.pop(name, None)
        if result.state == CLOSED and self.settings.local_view_s > 0:
            self._closed_until[name] = self._clock() + self.settings.local_view_s
        else:
            self._closed_until.pop(name, None)

    async def acquire(self, name: str) -> Permit:
        """Asks whether a call to deployment ``name`` may be made now.

        An OPEN breaker known locally answers without any network call.
        """
        if self.store is None:
            return Permit(name, allowed=True)
        until = self._open_until.get(name)
        if until is not None:
            left = until - self._clock()
            if left > 0:
                metrics.BREAKER_REJECTIONS.labels(name).inc()
                return Permit(name, allowed=False, state=OPEN, retry_in_s=left)
            del self._open_until[name]
        if not self._store_usable():
            return Permit(name, allowed=True, state="unknown")
        if self._closed_until.get(name, 0.0) > self._clock():
            return Permit(name, allowed=True, state=CLOSED, local=True)
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self._store_timeout_s):
                result = await self.store.acquire(name, token, self.settings, self.replica)
        except (Exception, TimeoutError) as exc:
            self._store_failed("read", name, exc)
            return Permit(name, allowed=True, state="unknown")
        self._observe(name, result)
        if result.decision == "reject":
            metrics.BREAKER_REJECTIONS.labels(name).inc()
            wait = max(0, result.retry_at_ms - result.now_ms) / 1000
            if result.state == HALF_OPEN:
                # Another caller's probe is in flight; the breaker closes at its first token. Its
                # lease end (probe_timeout_s) is only the worst case, not a retry hint to give.
                wait = min(wait, _HALF_OPEN_RETRY_S)
            return Permit(name, allowed=False, state=result.state, retry_in_s=wait)
        return Permit(name, allowed=True, probe=result.decision == "probe", state=result.state, token=token)

    async def record(self, permit: Permit, ok: bool, detail: str = "", refused: bool = False) -> None:
        """Reports the outcome of an allowed call (a failure's ``detail`` is kept for listings).

        Args:
            refused: The failure was a refused connection (no request was sent); if it opens
                the breaker, the short ``refused_cooldown_s`` applies.
        """
        if permit.local and ok:
            self._unflushed_ok[permit.name] = self._unflushed_ok.get(permit.name, 0) + 1
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())
            return
        if not permit.allowed or not (permit.token or permit.local) or not self._store_usable():
            return
        assert self.store is not None
        await self._flush(permit.name)
        try:
            async with asyncio.timeout(self._store_timeout_s):
                result = await self.store.record(
                    permit.name, permit.token, ok, detail[:300], self.settings, self.replica, refused=refused
                )
        except Exception as exc:
            self._store_failed("write", permit.name, exc)
            return
        self._observe(permit.name, result)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.settings.flush_interval_s)
        for name in list(self._unflushed_ok):
            await self._flush(name)

    async def _flush(self, name: str) -> None:
        """Writes the successes counted locally for ``name`` as one record."""
        count = self._unflushed_ok.pop(name, 0)
        if not count or not self._store_usable():
            return
        assert self.store is not None
        try:
            async with asyncio.timeout(self._store_timeout_s):
                result = await self.store.record(name, "", True, "", self.settings, self.replica, count)
        except Exception as exc:
            self._store_failed("write", name, exc)
            return
        self._observe(name, result)

    async def close(self) -> None:
        """Flushes locally counted successes. Safe to call more than once."""
        if self._flush_task is not None:
            self._flush_task.cancel()
        for name in list(self._unflushed_ok):
            await self._flush(name)

    def abandon(self, permit: Permit) -> None:
        """The call ended without an outcome (the client went away): frees a probe lease.

        Runs in the background, so it is safe from a cancelled task or a closing generator.
        """
        if self.store is None or not permit.probe:
            return
        task = asyncio.get_running_loop().create_task(self._release(permit))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, permit: Permit) -> None:
        assert self.store is not None
        try:
            async with asyncio.timeout(self._store_timeout_s):
                await self.store.release(permit.name, permit.token)
        except Exception as exc:
            self._store_failed("release", permit.name, exc)

    async def snapshots(self, names: Sequence[str]) -> list[BreakerSnapshot]:
        """The shared state of each named breaker (closed when never used).

        Raises:
            errors.Unavailable: Redis could not be read.
        """
        if self.store is None:
            return [BreakerSnapshot(n, CLOSED) for n in names]
        try:
            result = await self.store.snapshots(names, self.settings)
        except Exception as exc:
            raise errors.Unavailable(
                f"cannot read the breaker state from Redis: {exc}; retry shortly", reason="BREAKER_STORE_UNAVAILABLE"
            ) from exc
        for snap in result:
            metrics.BREAKER_STATE.labels(snap.name).set(metrics.BREAKER_STATE_VALUE.get(snap.state, 0))
            if snap.state != CLOSED:
                # Another replica opened it: stop trusting the local closed view at once.
                self._closed_until.pop(snap.name, None)
        return result

    async def transitions(self, limit: int, before_id: str = "", breaker: str = "") -> list[Transition]:
        """Recorded transitions, newest first, older than ``before_id`` when given.

        Raises:
            errors.Unavailable: Redis could not be read.
        """
        if self.store is None:
            return []
        try:
            return await self.store.transitions(limit, before_id, breaker)
        except Exception as exc:
            raise errors.Unavailable(
                f"cannot read the breaker transitions from Redis: {exc}; retry shortly",
                reason="BREAKER_STORE_UNAVAILABLE",
            ) from exc
