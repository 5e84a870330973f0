"""Provider limits per deployment: requests and tokens per minute, shared by every replica.

Providers limit each key (or region) to so many requests and tokens a minute and answer
429 past that. The router keeps the sum of all its replicas' calls under those limits, so
Tollway never provokes the provider's own 429: a deployment at its limit is skipped for
another one, a request waits a bounded time for the window to free up, or it is refused
with the limit named.

The window is a sliding minute counted in one-second buckets. A call is counted in the
bucket of the second it was sent and stays counted until that whole second has left the
window, so the count in force never undercounts what the provider saw in any 60 s span.
Tokens are counted as providers count them when a request arrives: prompt tokens plus the
output tokens it may produce (``max_tokens``), not what it produced later, so a pick costs
one Redis round trip and nothing is corrected afterwards.

The arithmetic lives here (:func:`check`) and, for the shared counters, in the store's Lua
script, which must agree with it (an integration test compares them on real Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from tollway.common.catalog import Deployment
from tollway.mesh.frozen import frozen
from tollway.router import metrics

log = logging.getLogger("tollway.router.limits")

WINDOW_MS = 60_000
BUCKET_MS = 1_000
NEVER = -1  # a wait that no amount of waiting ends: the request alone exceeds the limit


@frozen
class Verdict:
    """Whether one more call fits a deployment's window now.

    Attributes:
        fits: The call may be sent now.
        wait_ms: When it does not fit: milliseconds until it would (``NEVER`` when the
            request alone is over the token limit); 0 when it fits.
        limit: Which limit refused it: "rpm" or "tpm"; "" when it fits.
    """

    fits: bool
    wait_ms: int = 0
    limit: str = ""


def live_from(now_ms: int) -> int:
    """The oldest bucket still (partly) inside the window ending at ``now_ms``: it has not
    expired (:func:`expires_at_ms`) yet, so 61 buckets may count at once."""
    return (now_ms - WINDOW_MS) // BUCKET_MS


def expires_at_ms(bucket: int) -> int:
    """When ``bucket``'s last millisecond leaves the window, so its calls stop counting."""
    return (bucket + 1) * BUCKET_MS + WINDOW_MS


def check(buckets: Mapping[int, tuple[int, int]], now_ms: int, rpm: int, tpm: int, tokens: int) -> Verdict:
    """Whether a call of ``tokens`` fits under ``rpm``/``tpm`` (0 = no limit) given the counts.

    Args:
        buckets: Bucket number -> (requests, tokens) counted in it; buckets that left the
            window are ignored.
        now_ms: The shared clock.
        rpm: Requests per minute allowed; 0 is no limit.
        tpm: Tokens per minute allowed; 0 is no limit.
        tokens: What the call counts against ``tpm``.
    """
    if tpm and tokens > tpm:
        return Verdict(False, NEVER, "tpm")
    oldest = live_from(now_ms)
    live = sorted((b, rt) for b, rt in buckets.items() if b >= oldest)
    used_r = sum(r for _, (r, _t) in live)
    used_t = sum(t for _, (_r, t) in live)

    def over(r: int, t: int) -> str:
        if rpm and r + 1 > rpm:
            return "rpm"
        if tpm and t + tokens > tpm:
            return "tpm"
        return ""

    first = over(used_r, used_t)
    if not first:
        return Verdict(True)
    # The oldest buckets leave first: the call fits once enough of them have.
    for bucket, (r, t) in live:
        used_r -= r
        used_t -= t
        if not over(used_r, used_t):
            return Verdict(False, max(1, expires_at_ms(bucket) - now_ms), first)
    return Verdict(False, NEVER, first)  # unreachable: an empty window fits any call under the limits


@frozen
class Taken:
    """What the store answered to one pick.

    Attributes:
        chosen: Index of the candidate charged for the call, or -1 when none fits.
        verdicts: One per candidate before ``chosen`` (all of them when none fits).
        bucket: The bucket the call was counted in (to give it back).
    """

    chosen: int
    verdicts: tuple[Verdict, ...]
    bucket: int = 0


class LimitStore(Protocol):
    """Where the shared windows live (:class:`tollway.router.store.RedisLimitStore`)."""

    async def take(self, candidates: Sequence[Deployment], tokens: int) -> Taken:
        """Charges the first candidate that fits, in order, atomically (one round trip)."""
        ...

    async def give_back(self, deployment: Deployment, tokens: int, bucket: int) -> None:
        """Uncounts a call that was charged but not sent."""
        ...


@frozen
class Pick:
    """A pick among a model's deployments.

    Attributes:
        deployment: The one charged for this call; None when none fits now.
        skipped: Deployments passed over for being at a limit, with why.
        bucket: Where the call was counted (for :meth:`ProviderLimits.give_back`).
        tokens: What it was charged.
    """

    deployment: Deployment | None
    skipped: tuple[tuple[Deployment, Verdict], ...] = ()
    bucket: int = 0
    tokens: int = 0
    counted: bool = False

    def shortest_wait_ms(self) -> int | None:
        """The soonest a skipped deployment frees up, or None when none ever will for this call."""
        waits = [v.wait_ms for _, v in self.skipped if v.wait_ms != NEVER]
        return min(waits) if waits else None


class ProviderLimits:
    """Picks deployments under their providers' limits.

    If the store cannot be reached, limits fail open (the call is allowed, a warning is
    logged and ``tollway_router_limit_store_errors_total`` counts it): a provider's own 429
    is still handled by the retry and fallback logic, and an unreachable Redis must not be
    what takes traffic down. Each store call is bounded by ``timeout_s``.
    """

    def __init__(self, store: LimitStore | None, timeout_s: float = 0.25) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._quiet_until = 0.0

    async def pick(self, candidates: Sequence[Deployment], tokens: int) -> Pick:
        """The first of ``candidates`` (in order) whose limits admit a call of ``tokens``.

        A deployment without limits always fits and costs no round trip; the limited ones
        before it are checked (and the chosen one charged) in one store call.
        """
        if not candidates:
            return Pick(None)
        limited: list[Deployment] = []
        for dep in candidates:
            if not (dep.rpm or dep.tpm):
                break
            limited.append(dep)
        free = candidates[len(limited)] if len(limited) < len(candidates) else None
        if not limited or self.store is None or time.monotonic() < self._quiet_until:
            return Pick(candidates[0])
        try:
            async with asyncio.timeout(self.timeout_s):
                taken = await self.store.take(limited, tokens)
        except Exception as exc:
            metrics.LIMIT_STORE_ERRORS.inc()
            self._quiet_until = time.monotonic() + 1.0
            log.warning("provider limits unavailable, allowing the call: %s", exc or type(exc).__name__)
            return Pick(candidates[0])
        skipped = tuple(zip(limited, taken.verdicts, strict=False))
        for dep, verdict in skipped:
            metrics.LIMIT_SKIPS.labels(dep.key, verdict.limit).inc()
        if taken.chosen >= 0:
            return Pick(limited[taken.chosen], skipped, taken.bucket, tokens, counted=True)
        return Pick(free, skipped)

    async def give_back(self, pick: Pick) -> None:
        """Uncounts ``pick``'s call (it was charged but never sent); best effort."""
        if not pick.counted or pick.deployment is None or self.store is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.give_back(pick.deployment, pick.tokens, pick.bucket)
        except Exception as exc:
            metrics.LIMIT_STORE_ERRORS.inc()
            log.warning("could not give back a provider-limit count: %s", exc or type(exc).__name__)


def describe(dep: Deployment, verdict: Verdict, tokens: int) -> str:
    """One line naming the limit that refused a call, for errors and QuotaFailure."""
    if verdict.limit == "rpm":
        what = f"its limit of {dep.rpm} requests per minute is reached"
    elif verdict.wait_ms == NEVER:
        what = f"this request counts {tokens} tokens, more than its limit of {dep.tpm} tokens per minute"
    else:
        what = f"its limit of {dep.tpm} tokens per minute cannot take {tokens} more tokens now"
    return f"deployment {dep.key}: {what}"
