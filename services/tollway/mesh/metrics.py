"""Prometheus metrics shared by every service; service-specific ones live with the service."""

from __future__ import annotations

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

RPC_SECONDS = Histogram(
    "tollway_rpc_seconds",
    "Time spent handling an RPC, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_ERRORS = Counter(
    "tollway_rpc_errors_total",
    "RPCs that ended with an error status, by service, method and gRPC code.",
    ["service", "method", "code"],
)
