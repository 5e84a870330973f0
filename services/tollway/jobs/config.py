"""Jobs service settings, from ``TOLLWAY_JOBS_*`` (Redis from ``TOLLWAY_REDIS_URL``, the delegation
secret from ``TOLLWAY_DELEGATION_SECRET``)."""

from __future__ import annotations

import ipaddress

from tollway.mesh.frozen import frozen


@frozen
class JobsConfig:
    """Jobs service settings; each field is ``TOLLWAY_JOBS_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        gateway_addr: Where GatewayService listens: workers run every job through it.
        key_prefix: Prefix of every Redis key the service writes. It is one Redis Cluster hash tag,
            so that the scripts and transactions that move a job, its batch and the queue together
            stay on one slot.
        workers: Jobs one replica runs at a time (each is one gateway call in flight).
        claim_idle_ms: How long a job given to a worker may go without that worker's heartbeat
            before another worker takes it over (the first one died). Also the wait before a
            job is tried again after a retryable failure.
        heartbeat_ms: How often a running job's worker renews its claim and looks for a cancel.
        max_attempts: Starts of a job (first run, reclaims, retries) before it fails.
        job_timeout_s: Deadline of one gateway call.
        retention_s: How long a finished job, batch or stored file is kept, then removed.
        max_batch_items: Most items one batch may hold.
        max_file_bytes: Largest stored file.
        auth_cache_ttl_s: How long a key the gateway vouched for is trusted without asking again.
        webhook_secret: The HMAC-SHA256 key webhook deliveries are signed with (required for
            jobs that name a webhook; receivers verify with the same secret).
        webhook_allow_cidrs: Address ranges a webhook may point at although they are
            private, loopback or link-local (for example ``127.0.0.0/8`` in tests). Public
            addresses are always allowed.
        webhook_max_attempts: Deliveries tried before a job's webhook is dead-lettered.
        webhook_backoff_ms: Wait before the second delivery; doubles with each attempt.
        webhook_backoff_max_ms: Longest wait between deliveries.
        webhook_timeout_s: Deadline of one delivery (connect to last byte).
        poll_ms: How long a worker blocks waiting for a new job, and how often due webhook
            deliveries are looked for.
    """

    port: int = 50058
    metrics_port: int = 0
    gateway_addr: str = "127.0.0.1:50051"
    key_prefix: str = "{tw:jobs}"
    workers: int = 4
    claim_idle_ms: int = 30_000
    heartbeat_ms: int = 5_000
    max_attempts: int = 5
    job_timeout_s: float = 600.0
    retention_s: int = 7 * 86400
    max_batch_items: int = 50_000
    max_file_bytes: int = 100 * 1024 * 1024
    auth_cache_ttl_s: float = 10.0
    webhook_secret: str = ""
    webhook_allow_cidrs: tuple[str, ...] = ()
    webhook_max_attempts: int = 6
    webhook_backoff_ms: int = 1_000
    webhook_backoff_max_ms: int = 300_000
    webhook_timeout_s: float = 10.0
    poll_ms: int = 1_000

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "claim_idle_ms",
            "heartbeat_ms",
            "max_attempts",
            "retention_s",
            "max_batch_items",
            "max_file_bytes",
            "webhook_max_attempts",
            "webhook_backoff_ms",
            "webhook_backoff_max_ms",
            "poll_ms",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"Config 'TOLLWAY_JOBS_{name.upper()}' has value {getattr(self, name)!r}. Must be above 0."
                )
        if self.heartbeat_ms * 2 > self.claim_idle_ms:
            raise ValueError(
                f"Config 'TOLLWAY_JOBS_HEARTBEAT_MS' has value {self.heartbeat_ms!r}. Must be at most half of "
                f"TOLLWAY_JOBS_CLAIM_IDLE_MS ({self.claim_idle_ms}), or live jobs would be taken over."
            )
        for cidr in self.webhook_allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"Config 'TOLLWAY_JOBS_WEBHOOK_ALLOW_CIDRS' has value {cidr!r}. Not an address range "
                    "(use for example 127.0.0.0/8)."
                ) from None
