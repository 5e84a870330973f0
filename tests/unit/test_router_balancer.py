"""The balancer follows weights and steers away from slow, failing and rate-limited deployments."""

from __future__ import annotations

import collections
import random

from tollway.common.catalog import Deployment
from tollway.router.balancer import Balancer


def dep(name: str, weight: float = 1.0) -> Deployment:
    return Deployment("p", "http://x", "m", name=name, model="m", weight=weight)


def first_picks(b: Balancer, deps: list[Deployment], n: int = 4000) -> collections.Counter[str]:
    return collections.Counter(b.order(deps)[0].name for _ in range(n))


def test_weights_split_traffic() -> None:
    b = Balancer(rng=random.Random(1))
    picks = first_picks(b, [dep("a", 3), dep("b", 1)])
    assert 0.70 < picks["a"] / 4000 < 0.80


def test_order_contains_every_deployment_once() -> None:
    b = Balancer(rng=random.Random(1))
    deps = [dep("a"), dep("b"), dep("c")]
    assert sorted(d.name for d in b.order(deps)) == ["a", "b", "c"]


def test_slow_deployment_gets_less_traffic() -> None:
    b = Balancer(rng=random.Random(2))
    fast, slow = dep("fast"), dep("slow")
    for _ in range(10):
        for d, ms in ((fast, 100.0), (slow, 400.0)):
            b.started(d)
            b.finished(d, ok=True, ttft_ms=ms)
    shares = b.shares([fast, slow])
    assert abs(shares[fast.key] - 0.8) < 0.02  # 1 : 1/4


def test_failing_deployment_gets_less_traffic_and_recovers() -> None:
    b = Balancer(rng=random.Random(3))
    good, bad = dep("good"), dep("bad")
    for _ in range(5):
        b.started(bad)
        b.finished(bad, ok=False)
    assert b.shares([good, bad])[bad.key] < 0.05
    for _ in range(20):
        b.started(bad)
        b.finished(bad, ok=True, ttft_ms=None)
    assert b.shares([good, bad])[bad.key] > 0.45


def test_a_new_deployment_is_treated_as_fast_so_it_gets_measured() -> None:
    b = Balancer(rng=random.Random(4))
    old, new = dep("old"), dep("new")
    b.started(old)
    b.finished(old, ok=True, ttft_ms=50.0)
    assert abs(b.shares([old, new])[new.key] - 0.5) < 1e-9


def test_in_flight_calls_lower_the_share() -> None:
    b = Balancer(rng=random.Random(5))
    busy, idle = dep("busy"), dep("idle")
    for _ in range(3):
        b.started(busy)
    assert b.shares([busy, idle])[busy.key] == 0.2


def test_retry_after_sends_a_deployment_to_the_back_until_it_passes() -> None:
    now = [100.0]
    b = Balancer(rng=random.Random(6), clock=lambda: now[0])
    limited, other = dep("limited", 10), dep("other")
    b.started(limited)
    b.finished(limited, ok=True, retry_after_s=2.0)
    assert [d.name for d in b.order([limited, other])] == ["other", "limited"]
    now[0] += 2.5
    assert first_picks(b, [limited, other], 500)["limited"] > 400


def test_uncounted_calls_change_nothing_but_in_flight() -> None:
    b = Balancer(rng=random.Random(7))
    d = dep("a")
    b.started(d)
    b.finished(d, ok=False, counted=False)
    h = b.health(d)
    assert (h.in_flight, h.calls, h.failure_ewma) == (0, 0, 0.0)
