"""Router settings, read from ``TOLLWAY_ROUTER_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from tollway.mesh.frozen import frozen


@frozen
class RouterConfig:
    """Router service settings; each field is ``TOLLWAY_ROUTER_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        catalog: Path of the model catalog YAML.
        catalog_reload_s: How often the catalog file is checked for changes; 0 turns reloading off.
        breakers: Whether circuit breakers are shared through Redis (off: every call is allowed
            and Redis is not used).
        breaker_failure_threshold: Consecutive failures that open a deployment's breaker.
        breaker_error_rate: Failure ratio over the window that opens it; 0 turns the rule off.
        breaker_window_s: The error-rate window.
        breaker_min_requests: Calls needed in the window before the error rate counts.
        breaker_cooldown_s: How long an open breaker refuses calls before one probe.
        breaker_refused_cooldown_s: The same when a refused connection opened it (the server is
            down or restarting; a probe sends nothing, so it may come soon). At most
            ``breaker_cooldown_s``.
        breaker_probe_timeout_s: How long a probe may run before another caller may probe.
        breaker_local_view_s: How long a replica trusts a closed state it saw in Redis before
            asking again (0: ask on every call). Calls in that time cost no Redis round trip.
        breaker_refresh_s: How often the breaker-state gauge is refreshed from Redis (it also
            changes on every call); 0 turns the refresh off.
        interactive_deadline_s: Deadline of an interactive request whose caller set none.
        background_deadline_s: Deadline of a background request whose caller set none.
        interactive_max_wait_s: Longest retry-after an interactive request waits for before
            falling through instead.
        background_base_backoff_s: Backoff ceiling of a background request's first retry
            (doubles each retry, full jitter).
        background_max_backoff_s: Highest backoff ceiling of a background request.
        provider_limits: Whether the deployments' provider limits (rpm, tpm in the catalog)
            are enforced across replicas through Redis (off: only a provider's own 429 is
            handled). Only deployments that state limits use Redis; while it cannot be
            reached their calls are allowed and counted in
            ``tollway_router_limit_store_errors_total``.
        interactive_limit_wait_s: Longest an interactive request waits in all for a
            provider limit's window when every deployment that could answer is at its limit.
        background_limit_wait_s: The same for a background request.
    """

    port: int = 50055
    metrics_port: int = 0
    catalog: str = "deploy/models.yaml"
    catalog_reload_s: float = 2.0
    breakers: bool = True
    breaker_failure_threshold: int = 5
    breaker_error_rate: float = 0.5
    breaker_window_s: float = 30.0
    breaker_min_requests: int = 20
    breaker_cooldown_s: float = 10.0
    breaker_refused_cooldown_s: float = 0.5
    breaker_probe_timeout_s: float = 30.0
    breaker_refresh_s: float = 5.0
    breaker_local_view_s: float = 1.0
    interactive_deadline_s: float = 60.0
    background_deadline_s: float = 600.0
    interactive_max_wait_s: float = 1.0
    background_base_backoff_s: float = 0.5
    background_max_backoff_s: float = 8.0
    provider_limits: bool = True
    interactive_limit_wait_s: float = 2.0
    background_limit_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.breaker_failure_threshold < 1:
            raise ValueError(f"breaker_failure_threshold is {self.breaker_failure_threshold}; it must be >= 1")
        if not 0 <= self.breaker_error_rate <= 1:
            raise ValueError(f"breaker_error_rate is {self.breaker_error_rate}; it must be in [0, 1]")
        for name in ("interactive_limit_wait_s", "background_limit_wait_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be >= 0")
        for name in ("breaker_window_s", "breaker_cooldown_s", "breaker_refused_cooldown_s", "breaker_probe_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be > 0")
