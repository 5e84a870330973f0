"""Which counters a request touches, how much it asks of each, and how much of each its
priority may use. Pure functions; the store applies them atomically.

A counter is one field of the tenant's counter hash, named
``<subject>|<unit>|<window>|<start_s>|<end_s>`` where the subject is ``t`` (tenant),
``k:<key id>``, ``f:<feature>`` or ``c:<conversation id>``. The name carries its window's
end, so expired counters can be pruned without knowing the plan that made them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tollway.budget import windows
from tollway.budget.pricing import PICOS_PER_NANO, Rates
from tollway.budget.types import Policy, Priority, Quota, Scope, Unit, Window
from tollway.mesh.frozen import frozen


@frozen
class Demand:
    """What a request asks of a counter of each unit, as a function of its output tokens ``o``:
    ``ceil((fixed + o * per_output) / scale)``. Linear, so the store can work out the most
    output tokens that still fit (for requests that accept fewer)."""

    fixed: int
    per_output: int
    scale: int

    def amount(self, output_tokens: int) -> int:
        return _amount(self.fixed, self.per_output, self.scale, output_tokens)


def _amount(fixed: int, per_output: int, scale: int, output_tokens: int) -> int:
    return -(-(fixed + output_tokens * per_output) // scale)


def demands(rates: Rates, input_tokens: int) -> dict[Unit, Demand]:
    """The demand per unit of a call with ``input_tokens`` prompt tokens at ``rates``.

    The estimate prices every prompt token at the full input rate: whether the provider
    will serve some from its cache is known only afterwards (the commit charges the
    cached rate).
    """
    t = demand_terms(rates, input_tokens)
    return {Unit.TOKENS: Demand(*t[0:3]), Unit.USD_NANOS: Demand(*t[3:6]), Unit.REQUESTS: Demand(*t[6:9])}


def demand_terms(rates: Rates, input_tokens: int) -> tuple[int, int, int, int, int, int, int, int, int]:
    """:func:`demands` as nine numbers, ``fixed, per_output, scale`` of tokens, dollars and
    requests in turn: what the store's reserve script takes (no objects on the request path)."""
    return (input_tokens, 1, 1, input_tokens * rates.input_picos, rates.output_picos, PICOS_PER_NANO, 1, 0, 1)


def demand_amounts(terms: Sequence[int], output_tokens: int) -> tuple[int, int, int]:
    """What :func:`demand_terms` ask of tokens, dollars and requests at ``output_tokens``
    (:meth:`Demand.amount` of each, without the objects: this runs on the request path)."""
    return (
        _amount(terms[0], terms[1], terms[2], output_tokens),
        _amount(terms[3], terms[4], terms[5], output_tokens),
        _amount(terms[6], terms[7], terms[8], output_tokens),
    )


def allowed(limit: int, threshold: float) -> int:
    """How much of a ``limit`` a priority with ``threshold`` may fill (the priority rule).

    Rounded down, so a batch request at 80 % of 1,000 may fill 800 and not 801; exact for
    thresholds with up to six decimals.
    """
    return limit * round(threshold * 1_000_000) // 1_000_000


@frozen
class Counter:
    """One counter a reservation checks and holds.

    Attributes:
        field: The counter's name in the tenant's counter hash.
        quota: The quota it enforces.
        subject: The key id, feature or conversation id ("" for the tenant).
        allowed: The most the counter may hold after this request, for its priority.
        reset_ms: When the window ends (0 for a conversation).
    """

    field: str
    quota: Quota
    subject: str
    allowed: int
    reset_ms: int

    @property
    def unit(self) -> Unit:
        return self.quota.unit


def field_name(subject_tag: str, unit: Unit, window: Window, start_s: int, end_s: int) -> str:
    """The counter's name (see the module docstring)."""
    return f"{subject_tag}|{unit.value}|{window.value}|{start_s}|{end_s}"


def parse_field(field: str) -> tuple[str, Unit, Window, int, int]:
    """The parts of a counter name.

    Raises:
        ValueError: ``field`` is not a counter name.
    """
    tag, unit, window, start, end = field.rsplit("|", 4)
    return tag, Unit(unit), Window(window), int(start), int(end)


def _applicable(quotas: tuple[Quota, ...], scope: Scope, subject: str) -> list[Quota]:
    # A quota naming this key (or feature) replaces the every-key quota of the same window
    # and unit; quotas naming other keys do not apply.
    general = {(q.window, q.unit): q for q in quotas if q.scope is scope and not q.subject}
    for q in quotas:
        if q.scope is scope and q.subject == subject:
            general[(q.window, q.unit)] = q
    return list(general.values())


def counters(
    policy: Policy,
    priority: Priority,
    now_ms: int,
    *,
    api_key_id: str = "",
    feature: str = "",
    conversation_id: str = "",
) -> list[Counter]:
    """Every counter a request of ``policy``'s tenant touches now, in a stable order."""
    threshold = policy.threshold(priority)
    subjects = [(Scope.TENANT, "", "t")]
    if api_key_id:
        subjects.append((Scope.KEY, api_key_id, f"k:{api_key_id}"))
    if feature:
        subjects.append((Scope.FEATURE, feature, f"f:{feature}"))
    if conversation_id:
        subjects.append((Scope.CONVERSATION, conversation_id, f"c:{conversation_id}"))
    out: list[Counter] = []
    for scope, subject, tag in subjects:
        quotas = (
            [q for q in policy.quotas if q.scope is Scope.TENANT]
            if scope is Scope.TENANT
            else _applicable(policy.quotas, scope, subject)
        )
        for q in quotas:
            start, end = windows.bucket(q.window, now_ms)
            out.append(
                Counter(
                    field=field_name(tag, q.unit, q.window, start, end),
                    quota=q,
                    subject=subject,
                    allowed=allowed(q.limit, threshold),
                    reset_ms=end * 1000,
                )
            )
    return out


def remaining(counter: Counter, used: int) -> int:
    """What is left of ``counter`` for its priority once ``used`` is held (never below 0)."""
    return max(0, counter.allowed - used)


def retry_after_s(reset_ms: int, now_ms: int) -> float | None:
    """Seconds until a refused counter's window resets; None when it never does."""
    if not reset_ms:
        return None
    return max(0.0, math.ceil((reset_ms - now_ms) / 1000))
