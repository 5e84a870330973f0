"""Budget service settings, from ``TOLLWAY_BUDGET_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from pathlib import Path

from tollway.mesh.frozen import frozen

_DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
# `lease_requests` for a budget that every caller reaches as one process (co-located with its
# gateway, or the only replica, called directly), so each hold is settled where it was admitted.
LEASE_REQUESTS_ONE_PROCESS = 64


@frozen
class BudgetConfig:
    """Budget service settings; each field is ``TOLLWAY_BUDGET_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        plans: The plans file (plans, tenants, overrides); re-read when it changes and on SIGHUP.
        catalog: The model catalog whose prices the budget charges.
        reload_s: Seconds between checks of the plans and catalog files for changes.
        key_prefix: Prefix of every Redis key the budget writes.
        reservation_ttl_s: How long an uncommitted reservation is held when the request sets
            no TTL; after it the sweeper returns its estimate.
        max_reservation_ttl_s: The longest TTL a request may ask for.
        record_ttl_s: How long a finished reservation is remembered, so a retried commit or
            release is answered with the first result.
        sweep_interval_s: Seconds between sweeps for expired reservations (every replica
            sweeps; the scripts make concurrent sweeps harmless).
        prune_interval_s: Seconds between deletions of counters of past windows.
        counter_grace_s: How long a counter outlives its window, for late commits.
        conversation_idle_s: How long an unused conversation's counter is kept.
        usage_retention_days: How long daily usage totals are kept.
        overrides_poll_s: Seconds between reads of SetBudget overrides made by other replicas.
        lease_requests: A replica admits from leases of this many estimates (0: every reserve
            goes to Redis). Only for a budget whose callers settle every hold with the replica
            that admitted it: a gateway in the same process (the co-located core turns it on), or
            a budget that runs alone, reached directly (the launcher turns it on then).
            See :mod:`tollway.budget.leases`.
        lease_spread: A lease takes at most 1/spread of the room left below a counter's lowest
            priority share; none when that is below one request.
        lease_idle_s: A lease nobody admitted from for this long goes back.
        lease_max_age_s: A lease stops admitting after this long and goes back.
        lease_record_delay_s: How long a hold admitted from a lease may wait to be recorded with
            its commit before it is recorded on its own.
    """

    port: int = 50054
    metrics_port: int = 0
    plans: str = str(_DEPLOY / "budget.yaml")
    catalog: str = str(_DEPLOY / "models.yaml")
    reload_s: float = 2.0
    key_prefix: str = "tw:budget"
    reservation_ttl_s: int = 600
    max_reservation_ttl_s: int = 86400
    record_ttl_s: int = 86400
    sweep_interval_s: float = 1.0
    prune_interval_s: float = 60.0
    counter_grace_s: int = 3600
    conversation_idle_s: int = 7 * 86400
    usage_retention_days: int = 400
    overrides_poll_s: float = 1.0
    lease_requests: int = 0
    lease_spread: int = 4
    lease_idle_s: float = 1.0
    lease_max_age_s: float = 10.0
    lease_record_delay_s: float = 0.05

    def __post_init__(self) -> None:
        positive = (
            "reservation_ttl_s",
            "max_reservation_ttl_s",
            "record_ttl_s",
            "sweep_interval_s",
            "prune_interval_s",
            "conversation_idle_s",
            "usage_retention_days",
            "overrides_poll_s",
            "lease_spread",
            "lease_idle_s",
            "lease_max_age_s",
            "lease_record_delay_s",
        )
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Config 'TOLLWAY_BUDGET_{name.upper()}' has value {value!r}. Must be above 0.")
        for name in ("reload_s", "counter_grace_s", "lease_requests"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"Config 'TOLLWAY_BUDGET_{name.upper()}' has value {getattr(self, name)!r}. Must be 0 or more."
                )
        if self.reservation_ttl_s > self.max_reservation_ttl_s:
            raise ValueError(
                f"Config 'TOLLWAY_BUDGET_RESERVATION_TTL_S' has value {self.reservation_ttl_s!r}. "
                f"Must be at most TOLLWAY_BUDGET_MAX_RESERVATION_TTL_S ({self.max_reservation_ttl_s})."
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            raise ValueError(
                f"Config 'TOLLWAY_BUDGET_KEY_PREFIX' has value {self.key_prefix!r}. "
                "Must be non-empty, without braces or spaces."
            )
