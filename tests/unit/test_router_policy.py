"""Retry policies: interactive fails fast, background backs off with full jitter, both honour retry-after."""

from __future__ import annotations

import random

from tollway.router.policy import BACKGROUND, INTERACTIVE


def test_interactive_retries_once_then_falls_through() -> None:
    rng = random.Random(1)
    assert INTERACTIVE.delay(1, None, 30.0, rng) is not None
    assert INTERACTIVE.delay(2, None, 30.0, rng) is None


def test_interactive_waits_at_least_a_short_retry_after() -> None:
    assert INTERACTIVE.delay(1, 0.8, 30.0, random.Random(1)) == 0.8


def test_interactive_falls_through_rather_than_wait_long() -> None:
    assert INTERACTIVE.delay(1, 5.0, 30.0, random.Random(1)) is None


def test_no_wait_that_would_eat_the_deadline() -> None:
    assert INTERACTIVE.delay(1, 0.5, 0.6, random.Random(1)) is None
    assert BACKGROUND.delay(1, 10.0, 12.0, random.Random(1)) is None


def test_background_makes_three_attempts() -> None:
    rng = random.Random(2)
    assert BACKGROUND.delay(1, None, None, rng) is not None
    assert BACKGROUND.delay(2, None, None, rng) is not None
    assert BACKGROUND.delay(3, None, None, rng) is None


def test_background_full_jitter_stays_under_a_doubling_ceiling() -> None:
    rng = random.Random(3)
    for attempt, ceiling in ((1, 0.5), (2, 1.0)):
        waits = [BACKGROUND.delay(attempt, None, None, rng) for _ in range(2000)]
        assert all(w is not None and 0.0 <= w <= ceiling for w in waits)
        # Full jitter spreads over the whole range, not around the ceiling.
        assert min(waits) < ceiling * 0.05 and max(waits) > ceiling * 0.95  # type: ignore[operator]


def test_background_ceiling_is_capped() -> None:
    policy = BACKGROUND.__class__("background", 10, 0.5, 2.0, 60.0)
    rng = random.Random(4)
    assert all((policy.delay(8, None, None, rng) or 0) <= 2.0 for _ in range(500))


def test_background_never_retries_sooner_than_retry_after() -> None:
    rng = random.Random(5)
    assert all(BACKGROUND.delay(1, 7.0, None, rng) == 7.0 for _ in range(100))
