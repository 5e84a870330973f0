"""The budget's domain values: quotas, reservations, usage. No gRPC, no Redis."""

from __future__ import annotations

import enum
import functools
import re

from tollway.mesh.frozen import frozen

# Ids that end up inside Redis key names and counter names: no separators of ours
# ("|", ",", "/" in names, "{}" of hash tags) and no whitespace.
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SUBJECT_ID = re.compile(r"^[^|,/{}\s]{1,128}$")
RESERVATION_NAME = re.compile(r"^tenants/([A-Za-z0-9][A-Za-z0-9._-]{0,63})/reservations/([0-9a-f]{32})$")


class _Member(enum.Enum):
    """An enum hashed by identity. Its members are singletons, equal only to themselves, so that
    hash agrees with equality; ``enum.Enum``'s own hash is a Python call (the hash of the member's
    name), made ~25 times for each reserved and committed request by the service's lookups."""

    __hash__ = object.__hash__


class Window(_Member):
    """The calendar period (UTC) a quota counts over."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    CONVERSATION = "conversation"


class Scope(_Member):
    """Who a quota applies to."""

    TENANT = "tenant"
    KEY = "key"
    FEATURE = "feature"
    CONVERSATION = "conversation"


class Unit(_Member):
    """What a quota counts. The values are the tags used in counter names."""

    TOKENS = "tok"
    USD_NANOS = "usd"
    REQUESTS = "req"


class Priority(_Member):
    """How urgent a request is; lower priorities see less of each quota."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BATCH = "batch"


class UnavailablePolicy(_Member):
    """What callers do with a tenant's requests while the budget service cannot be reached."""

    ADMIT = "admit"
    REFUSE = "refuse"


class State(_Member):
    """Where a reservation is in its life (the values are stored in Redis)."""

    RESERVED = "reserved"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


@frozen
class Quota:
    """One limit: at most ``limit`` of ``unit`` per ``window`` for ``scope``.

    ``subject`` narrows a key or feature quota to one key id or feature; empty means each
    key (or feature) gets its own counter with this limit.
    """

    scope: Scope
    window: Window
    unit: Unit
    limit: int
    subject: str = ""

    @property
    def identity(self) -> tuple[Scope, str, Window, Unit]:
        """What an override replaces: the quota with the same scope, subject, window and unit."""
        return (self.scope, self.subject, self.window, self.unit)

    def describe(self) -> str:
        """``day tokens`` / ``month usd`` ... for messages."""
        unit = {Unit.TOKENS: "token", Unit.USD_NANOS: "dollar", Unit.REQUESTS: "request"}[self.unit]
        return f"{self.window.value} {unit} quota"


@frozen
class Policy:
    """A tenant's budget in force: its plan with the overrides applied.

    Attributes:
        tenant: The tenant.
        plan: The plan's name.
        quotas: Every quota in force.
        max_tokens_per_request: The most output tokens one request may ask for (0: no cap).
        normal_threshold: Share of each quota a normal request may use, in (0, 1].
        batch_threshold: Share of each quota a batch request may use, in (0, 1].
        default_priority: The priority of a request that names none.
        overridden: Whether SetBudget changed anything of the file's budget.
        unavailable: The plans file's ``when_unavailable`` for the tenant; None derives it
            (see :attr:`when_unavailable`).
    """

    tenant: str
    plan: str
    quotas: tuple[Quota, ...]
    max_tokens_per_request: int = 0
    normal_threshold: float = 0.9
    batch_threshold: float = 0.8
    default_priority: Priority = Priority.NORMAL
    overridden: bool = False
    unavailable: UnavailablePolicy | None = None

    @functools.cached_property  # read on every reserve; a policy never changes once made
    def when_unavailable(self) -> UnavailablePolicy:
        """What callers do while the budget service is down: as the plans file says, else
        refuse when a dollar quota applies (money must not be spent unchecked) and admit
        for pure rate limits (a short outage should not take the tenant down)."""
        if self.unavailable is not None:
            return self.unavailable
        if any(q.unit is Unit.USD_NANOS for q in self.quotas):
            return UnavailablePolicy.REFUSE
        return UnavailablePolicy.ADMIT

    def threshold(self, priority: Priority) -> float:
        """The share of a quota ``priority`` may use (interactive: all of it)."""
        if priority is Priority.BATCH:
            return self.batch_threshold
        if priority is Priority.NORMAL:
            return self.normal_threshold
        return 1.0


@frozen
class Override:
    """What SetBudget changed for one tenant (stored in Redis, shared by the replicas)."""

    plan: str = ""
    quotas: tuple[Quota, ...] = ()
    max_tokens_per_request: int | None = None
    unavailable: UnavailablePolicy | None = None


@frozen
class ReserveCommand:
    """A request to hold the estimated cost of one model call."""

    tenant: str
    model: str
    input_tokens: int
    max_output_tokens: int
    api_key_id: str = ""
    feature: str = ""
    conversation_id: str = ""
    priority: Priority | None = None
    min_output_tokens: int = 0
    provider: str = ""
    request_id: str = ""
    ttl_s: int = 0
    admitted_while_unavailable: bool = False


@frozen
class SavedCommand:
    """A request the response cache answered: what it would have cost."""

    tenant: str
    model: str
    request_id: str
    input_tokens: int
    output_tokens: int
    api_key_id: str = ""
    feature: str = ""
    cache_tier: str = ""


@frozen
class Saved:
    """What a recorded cache hit saved; ``recorded`` is False for a repeated request id."""

    cost_usd_nanos: int
    pricing_version: str
    recorded: bool


@frozen
class CommitCommand:
    """The usage a provider reported for a reserved call; ``attempt`` is the attempt of the
    request id it was made for (0: whichever holds the reservation)."""

    name: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    model: str = ""
    provider: str = ""
    partial: bool = False
    attempt: int = 0


@frozen
class Reservation:
    """A reservation as stored.

    ``tokens`` and ``cost_usd_nanos`` are what is held while reserved and what was charged
    once committed. ``attempt`` counts the holds of one request id: 1, then one more each
    time the id reserves anew after its hold was released or expired.
    """

    tenant: str
    id: str
    state: State
    model: str
    api_key_id: str
    feature: str
    conversation_id: str
    priority: Priority
    request_id: str
    input_tokens: int
    granted_output_tokens: int
    tokens: int
    cost_usd_nanos: int
    pricing_version: str
    created_ms: int
    expires_ms: int
    attempt: int = 1

    @property
    def name(self) -> str:
        """The resource name, ``tenants/{tenant}/reservations/{id}``."""
        return f"tenants/{self.tenant}/reservations/{self.id}"


@frozen
class QuotaState:
    """One counter's state after a reservation or for GetBudget."""

    quota: Quota
    subject: str
    used: int
    remaining: int
    reset_ms: int  # 0 for a conversation quota


@frozen
class Granted:
    """A granted reservation, the tightest quota left per unit (for rate-limit headers) and
    the tenant's policy while the budget service is down (callers remember it)."""

    reservation: Reservation
    tightest: dict[Unit, QuotaState]
    when_unavailable: UnavailablePolicy = UnavailablePolicy.REFUSE


@frozen
class Committed:
    """A committed reservation and the difference charged (below 0: returned)."""

    reservation: Reservation
    delta_tokens: int
    delta_cost_usd_nanos: int


@frozen
class UsageRow:
    """One day of committed usage, for the tenant or one key, feature or model."""

    date: str
    group: str
    request_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd_nanos: int = 0
    expired_count: int = 0
    cache_hit_count: int = 0
    saved_cost_usd_nanos: int = 0


@frozen
class CounterDifference:
    """A counter that does not equal the sum of its ledger entries."""

    tenant: str
    counter: str
    counter_value: int
    ledger_sum: int


@frozen
class Reconciliation:
    """What a reconciliation found."""

    tenant_count: int
    counter_count: int
    ledger_entry_count: int
    open_reservation_count: int
    differences: tuple[CounterDifference, ...]

    @property
    def balanced(self) -> bool:
        return not self.differences
