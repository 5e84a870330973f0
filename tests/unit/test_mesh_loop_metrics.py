"""The request path's metric classes expose exactly what prometheus_client's own would."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tollway.mesh.metrics import LoopCounter, LoopHistogram


def _exposed(registry: CollectorRegistry) -> list[str]:
    # Creation times differ by construction; everything else must be equal.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_loop_histogram_exposes_what_a_histogram_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = LoopHistogram("h", "doc", ["route"], buckets=(0.1, 1, 10), registry=ours)
    b = Histogram("h", "doc", ["route"], buckets=(0.1, 1, 10), registry=theirs)
    rng = random.Random(7)
    values = [0.1, 1, 10, 10.0000001, 0, -1, math.inf, math.nan, *(rng.uniform(-1, 20) for _ in range(500))]
    for i, v in enumerate(values):
        route = ("/a", "/b", 3)[i % 3]  # an int label value is converted, as prometheus_client does
        a.labels(route).observe(v)
        b.labels(route).observe(v)
    plain_ours, plain_theirs = LoopHistogram("p", "doc", registry=ours), Histogram("p", "doc", registry=theirs)
    for v in (0.001, 7.0, 0.2):
        plain_ours.observe(v)
        plain_theirs.observe(v)
    assert _exposed(ours) == _exposed(theirs)


def test_a_loop_counter_exposes_what_a_counter_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = LoopCounter("c", "doc", ["model", "status"], registry=ours)
    b = Counter("c", "doc", ["model", "status"], registry=theirs)
    for counter in (a, b):
        counter.labels("m", "ok").inc()
        counter.labels(model="m", status="ok").inc(2.5)
        counter.labels("m", 500).inc()
    assert _exposed(ours) == _exposed(theirs)


def test_misuse_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c", "doc", ["model"], registry=registry)
    histogram = LoopHistogram("h", "doc", ["model"], registry=registry)
    with pytest.raises(ValueError, match="missing label values"):
        counter.inc()
    with pytest.raises(ValueError, match="missing label values"):
        histogram.observe(1)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("m").inc(-1)
    with pytest.raises(ValueError, match="label count"):
        counter.labels("m", "extra")
