"""Spreads a model's traffic over its deployments: by weight, away from slow or failing ones.

Each deployment keeps (per router replica) an EWMA of its time to first token, an EWMA of
its failure rate and its in-flight count. A deployment's share is

    weight * (fastest EWMA / its EWMA) * (1 - failure EWMA)^2 / (1 + in flight)

so a deployment twice as slow gets half the traffic, one failing half its calls a quarter,
and a new one (no EWMA yet) is treated as the fastest so it gets measured. A deployment
that answered 429 with retry-after sits out until then. Deployments are tried in a
weighted random order without replacement: the first is the pick, the rest are where a
retry goes.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence

from tollway.common.catalog import Deployment

_MIN_SHARE = 1e-3


@dataclasses.dataclass
class DeploymentHealth:
    """What this replica has seen of one deployment."""

    ttft_ewma_ms: float | None = None
    failure_ewma: float = 0.0
    in_flight: int = 0
    cooldown_until: float = 0.0
    calls: int = 0
    failures: int = 0


class Balancer:
    """Orders deployments for each call and learns from each call's outcome."""

    def __init__(
        self,
        alpha: float = 0.3,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.alpha = alpha
        self._rng = rng or random.Random()
        self._clock = clock
        self._health: dict[str, DeploymentHealth] = {}

    def health(self, deployment: Deployment) -> DeploymentHealth:
        """What this replica knows of ``deployment`` (created empty on first use)."""
        return self._health.setdefault(deployment.key, DeploymentHealth())

    def shares(self, deployments: Sequence[Deployment]) -> dict[str, float]:
        """Each deployment's traffic share now (they sum to 1), for tests and listings."""
        scores = self._scores(deployments)
        total = sum(scores.values()) or 1.0
        return {k: v / total for k, v in scores.items()}

    def _scores(self, deployments: Sequence[Deployment]) -> dict[str, float]:
        known = [h.ttft_ewma_ms for d in deployments if (h := self.health(d)).ttft_ewma_ms]
        fastest = min(known) if known else None
        scores: dict[str, float] = {}
        for d in deployments:
            h = self.health(d)
            speed = 1.0 if fastest is None or not h.ttft_ewma_ms else fastest / h.ttft_ewma_ms
            healthy = (1.0 - h.failure_ewma) ** 2
            scores[d.key] = max(_MIN_SHARE, d.weight * speed * healthy / (1 + h.in_flight))
        return scores

    def order(self, deployments: Sequence[Deployment]) -> list[Deployment]:
        """All deployments, in the order to try them: weighted random, cooling-down ones last."""
        if len(deployments) == 1:
            return list(deployments)  # most models have one: there is no order to draw
        now = self._clock()
        ready = [d for d in deployments if self.health(d).cooldown_until <= now and d.weight > 0]
        later = [d for d in deployments if d not in ready]
        scores = self._scores(ready)
        out: list[Deployment] = []
        pool = list(ready)
        while pool:
            total = sum(scores[d.key] for d in pool)
            pick = self._rng.uniform(0.0, total)
            for d in pool:
                pick -= scores[d.key]
                if pick <= 0:
                    break
            out.append(d)
            pool.remove(d)
        later.sort(key=lambda d: self.health(d).cooldown_until)
        return out + later

    def started(self, deployment: Deployment) -> None:
        """A call to ``deployment`` begins."""
        self.health(deployment).in_flight += 1

    def finished(
        self,
        deployment: Deployment,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        retry_after_s: float | None = None,
        counted: bool = True,
    ) -> None:
        """A call ended.

        Args:
            ok: It produced its answer (or at least its first token, when ``ttft_ms`` is set).
            ttft_ms: Its time to first token, when it had one.
            retry_after_s: The provider asked us to stay away this long.
            counted: False when the outcome says nothing about the deployment (the client
                went away); only the in-flight count changes.
        """
        h = self.health(deployment)
        h.in_flight = max(0, h.in_flight - 1)
        if not counted:
            return
        h.calls += 1
        h.failures += 0 if ok else 1
        h.failure_ewma += self.alpha * ((0.0 if ok else 1.0) - h.failure_ewma)
        if ttft_ms is not None:
            h.ttft_ewma_ms = (
                ttft_ms if h.ttft_ewma_ms is None else h.ttft_ewma_ms + self.alpha * (ttft_ms - h.ttft_ewma_ms)
            )
        if retry_after_s:
            h.cooldown_until = max(h.cooldown_until, self._clock() + retry_after_s)
