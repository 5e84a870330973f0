"""Prometheus metrics shared by every service; service-specific ones live with the service.

Also the metric classes of the request path, :class:`LoopCounter` and :class:`LoopHistogram`:
prometheus_client's own take a lock for each number they change (a histogram's sum and bucket are
two), look a child up under a lock, and scan the buckets one by one; a request that counts and times
itself in a dozen places paid more for that than for some of its stages. These are the same metrics
(same registry, names, labels, exposition) whose numbers are plain floats: for metrics changed only
by the event loop's thread, where a lock guards against nothing.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Histogram

# Buckets from 0.25 ms to 60 s: RPCs inside the mesh are sub-millisecond, model calls take seconds.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class _Number:
    """A metric's number without a lock (the interface of prometheus_client's values)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:
        """Exemplars are not kept."""

    def get_exemplar(self) -> None:
        return None


class _QuickLabels:
    """``labels()`` finding an existing child with one dict lookup, without the lock.

    The children are kept by tuples of str; other label values (an int) miss here and take
    prometheus_client's path, which converts them (and creates a child under its lock).
    """

    _metrics: dict[tuple[str, ...], Any]

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if not labelkwargs:
            child = self._metrics.get(labelvalues)
            if child is not None:
                return child
        return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]


class LoopCounter(_QuickLabels, Counter):
    """A ``prometheus_client.Counter`` for the event loop's thread (see the module docstring)."""

    def _metric_init(self) -> None:
        self._value = _Number()  # type: ignore[assignment]
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        try:
            number = self._value
        except AttributeError:
            self._raise_if_not_observable()  # a parent with labels: says to call labels() first
            raise
        number.value += amount  # type: ignore[attr-defined]


class LoopHistogram(_QuickLabels, Histogram):
    """A ``prometheus_client.Histogram`` for the event loop's thread (see the module docstring)."""

    def _metric_init(self) -> None:
        self._created = time.time()
        self._sum = _Number()  # type: ignore[assignment]
        self._buckets = [_Number() for _ in self._upper_bounds]  # type: ignore[misc]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        try:
            buckets = self._buckets
        except AttributeError:
            self._raise_if_not_observable()
            raise
        self._sum.value += amount  # type: ignore[attr-defined]
        # The first bucket whose bound is >= amount (the last bound is +Inf); none for NaN, as in
        # prometheus_client (bisect puts NaN first, so the bound is checked).
        bounds = self._upper_bounds
        i = bisect_left(bounds, amount)
        if i < len(bounds) and amount <= bounds[i]:
            buckets[i].value += 1  # type: ignore[attr-defined]


RPC_SECONDS = LoopHistogram(
    "tollway_rpc_seconds",
    "Time spent handling an RPC, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_ERRORS = LoopCounter(
    "tollway_rpc_errors_total",
    "RPCs that ended with an error status (and each failed item of a batch RPC), by service, method and gRPC code.",
    ["service", "method", "code"],
)
