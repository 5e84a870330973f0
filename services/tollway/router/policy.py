"""Retry policies: how long to wait before trying a model again, or whether to fall through.

``interactive`` serves a person waiting for tokens: at most one retry per model, only if
the wait is short and fits the request deadline, then the next model in the chain.
``background`` serves jobs: up to 3 attempts per model with exponential backoff and full
jitter (sleep uniformly in ``[0, min(cap, base * 2**n)]``, so replicas retrying after the
same outage spread out), never sooner than the provider's ``retry-after``.
"""

from __future__ import annotations

import random

from tollway.common.chat import Policy
from tollway.mesh.frozen import frozen


@frozen
class RetryPolicy:
    """Attributes:
    name: "interactive" or "background".
    max_attempts: Attempts per model (the first one included) before falling through.
    base_backoff_s: The backoff ceiling of the first retry; it doubles each retry.
    max_backoff_s: The highest backoff ceiling.
    max_wait_s: A wait longer than this (a long retry-after) falls through instead.
    """

    name: Policy
    max_attempts: int
    base_backoff_s: float
    max_backoff_s: float
    max_wait_s: float

    def delay(
        self,
        attempt: int,
        retry_after_s: float | None,
        remaining_s: float | None,
        rng: random.Random,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` of the same model, or None to fall through.

        Args:
            attempt: Attempts already made on this model (1 after the first failure).
            retry_after_s: The provider's retry-after, honoured as a lower bound.
            remaining_s: Time left before the request deadline; None when there is none.
            rng: The jitter source (seeded in tests).
        """
        if attempt >= self.max_attempts:
            return None
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempt - 1))
        wait = rng.uniform(0.0, ceiling)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        if wait > self.max_wait_s:
            return None
        # Leave time for the retry itself: a wait that eats the whole deadline helps nobody.
        if remaining_s is not None and wait >= remaining_s * 0.5:
            return None
        return wait


INTERACTIVE = RetryPolicy("interactive", max_attempts=2, base_backoff_s=0.1, max_backoff_s=0.1, max_wait_s=1.0)
BACKGROUND = RetryPolicy("background", max_attempts=3, base_backoff_s=0.5, max_backoff_s=8.0, max_wait_s=60.0)
