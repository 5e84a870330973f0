"""The jobs service's Prometheus metrics (the shared RPC ones live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tollway.mesh.metrics import LATENCY_BUCKETS

JOBS_ENDED = Counter(
    "tollway_jobs_ended_total", "Jobs ended by this replica's workers, by state (succeeded, failed).", ["state"]
)
RUN_FAILURES = Counter(
    "tollway_jobs_run_failures_total",
    "Gateway calls of a job that failed, by whether the job is tried again (retryable) or fails (final).",
    ["kind"],
)
RUN_SECONDS = Histogram(
    "tollway_jobs_run_seconds", "Time of one run of a job (its gateway call).", buckets=LATENCY_BUCKETS
)
WEBHOOK_DELIVERIES = Counter(
    "tollway_jobs_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retry, dead_lettered).",
    ["outcome"],
)
QUEUE_WAITING = Gauge("tollway_jobs_queue_waiting", "Queue entries not yet read by any worker (both lanes).")
QUEUE_PENDING = Gauge(
    "tollway_jobs_queue_pending", "Queue entries read and not acknowledged: running, or waiting to be retried."
)
