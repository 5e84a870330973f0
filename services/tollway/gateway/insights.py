"""Call insights: usage totals kept at write time, who may see what, feedback and drift.

Plain Python over call records in their stream form (``CallRecord.stream_fields``), so the
same rules serve the gateway's InsightsService, ``tollway usage`` and the benches.

Totals are kept per tenant, UTC day and dimension (one Redis hash each): a field per value of
the dimension, holding every measure of :data:`MEASURES` packed in one comma-separated string.
A query grouped by model reads the model hashes of the days and tenants it covers, never the
records nor the other dimensions. The dimensions are the tenant as a whole (``tenant``, value
""), ``feature``, ``user``, ``model``, ``prompt`` (``template@version``), ``tier`` (the cache
tier) and ``namespace`` (the cache namespace); ``day`` groups the tenant hashes by their day.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from tollway.gateway.store import GatewayStore
from tollway.mesh.errors import InvalidArgument, NotFound, PermissionDenied
from tollway.mesh.frozen import frozen

# Cache tiers that answered without a provider call.
_HIT_TIERS = frozenset({"exact", "semantic", "stale"})
MAX_DAYS = 400
MAX_COMMENT_CHARS = 2000
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


class Dimension(enum.StrEnum):
    """What usage rows are grouped by."""

    TENANT = "tenant"
    FEATURE = "feature"
    USER = "user"
    MODEL = "model"
    DAY = "day"
    PROMPT = "prompt"
    TIER = "tier"
    NAMESPACE = "namespace"


# The measures every dimension value keeps, in their packed order (integers).
MEASURES = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd_micros",
    "latency_ms",
    "ttft_ms",
    "errors",
    "cache_hits",
    "feedback_count",
    "feedback_score_milli",
    # Semantic cache hits answered again fresh (the cache's quality samples) and the token F1
    # between the cached and the fresh answer, in thousandths: agreement per model and prompt.
    "agreement_samples",
    "agreement_f1_milli",
)
# Dimensions whose totals a record adds to; ``day`` is read from the tenant totals of each day.
_STORED = (
    Dimension.TENANT,
    Dimension.FEATURE,
    Dimension.USER,
    Dimension.MODEL,
    Dimension.PROMPT,
    Dimension.TIER,
    Dimension.NAMESPACE,
)
_STORED_NAMES = tuple(d.value for d in _STORED)
# Feedback is counted under these (a score belongs to what produced the answer, not to a tier).
_FEEDBACK_DIMENSIONS = (
    Dimension.TENANT,
    Dimension.FEATURE,
    Dimension.USER,
    Dimension.MODEL,
    Dimension.PROMPT,
    Dimension.NAMESPACE,
)


@frozen
class Viewer:
    """Who asks: the key's tenant, and whether that tenant is an admin (sees every tenant)."""

    tenant: str
    admin: bool


_FEEDBACK_COUNT = MEASURES.index("feedback_count")
_FEEDBACK_SCORE = MEASURES.index("feedback_score_milli")
_AGREEMENT_COUNT = MEASURES.index("agreement_samples")
_AGREEMENT_SUM = MEASURES.index("agreement_f1_milli")
# Totals as kept: per (tenant, day) for one dimension, the measures of each value.
Totals = Mapping[tuple[str, str], Mapping[str, Sequence[int]]]


def day_of(timestamp: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of a Unix time."""
    return _day_name(int(timestamp // 86400))


@functools.lru_cache(maxsize=64)
def _day_name(day: int) -> str:
    # Every record of a batch shares a day or two: formatting a date per record was its largest cost.
    return datetime.datetime.fromtimestamp(day * 86400, datetime.UTC).strftime("%Y-%m-%d")


def prompt_key(template: str, version: str) -> str:
    """How a prompt version is named in the totals ("" without a template)."""
    return f"{template}@{version}" if template else ""


def _stored_values(record: Mapping[str, str]) -> tuple[str, ...]:
    """The record's value in each dimension of :data:`_STORED`, in that order."""
    return (
        "",
        record.get("feature", ""),
        record.get("user", ""),
        record.get("model", ""),
        prompt_key(record.get("prompt_template", ""), record.get("prompt_version", "")),
        record.get("cache_tier", "") or "none",
        record.get("cache_namespace", ""),
    )


def _values(record: Mapping[str, str]) -> dict[Dimension, str]:
    return dict(zip(_STORED, _stored_values(record), strict=True))


def _measures(record: Mapping[str, str]) -> list[int]:
    """What one record adds to each of its values' totals (in :data:`MEASURES` order)."""
    tier = record.get("cache_tier", "")
    status = record.get("status", "OK")
    return [
        1,
        int(record.get("input_tokens", "0") or 0),
        int(record.get("output_tokens", "0") or 0),
        int(record.get("cached_tokens", "0") or 0),
        round(float(record.get("cost_usd", "0") or 0) * 1_000_000),
        int(record.get("latency_ms", "0") or 0),
        int(record.get("ttft_ms", "0") or 0),
        0 if status in ("OK", "DEGRADED") else 1,
        1 if tier in _HIT_TIERS else 0,
        0,  # feedback comes later, by RecordFeedback
        0,
        0,  # agreement comes from quality samples (agreement_amounts)
        0,
    ]


def record_amounts(record: Mapping[str, str]) -> dict[Dimension, tuple[str, list[int]]]:
    """What one record adds to its tenant's totals of its day: per dimension, its value and the
    measures (in :data:`MEASURES` order)."""
    measures = _measures(record)
    return {dimension: (value, measures) for dimension, value in zip(_STORED, _stored_values(record), strict=True)}


def batch_amounts(records: Iterable[Mapping[str, str]]) -> dict[tuple[str, str, str], dict[str, list[int]]]:
    """The totals a batch of records adds, summed per (tenant, day, dimension) and value."""
    out: dict[tuple[str, str, str], dict[str, list[int]]] = defaultdict(dict)
    for record in records:
        tenant, day = record["tenant"], day_of(float(record["timestamp"]))
        # Keyed by the dimensions' names: an Enum member hashes in Python, seven times per record.
        measures = _measures(record)
        for name, value in zip(_STORED_NAMES, _stored_values(record), strict=True):
            sums = out[(tenant, day, name)]
            have = sums.get(value)
            # A new list either way: every dimension of the record shares ``measures``. Summed by
            # map in C: a Python loop over the 13 measures of 7 dimensions was most of a record's cost.
            sums[value] = list(measures) if have is None else list(map(operator.add, have, measures))
    return dict(out)


_AGREEMENT_DIMENSIONS = (Dimension.TENANT, Dimension.MODEL, Dimension.PROMPT, Dimension.NAMESPACE)


def agreement_amounts(
    tenant: str, namespace: str, model: str, prompt: str, token_f1: float, timestamp: float
) -> dict[tuple[str, str, str], dict[str, list[int]]]:
    """What one quality sample (a semantic hit answered again fresh) adds: a sample and its
    agreement, under the tenant, the model that answered, the prompt version and the namespace."""
    measures = [0] * len(MEASURES)
    measures[MEASURES.index("agreement_samples")] = 1
    measures[MEASURES.index("agreement_f1_milli")] = round(max(0.0, min(1.0, token_f1)) * 1000)
    values = {Dimension.TENANT: "", Dimension.MODEL: model, Dimension.PROMPT: prompt, Dimension.NAMESPACE: namespace}
    day = day_of(timestamp)
    return {(tenant, day, d.value): {values[d]: list(measures)} for d in _AGREEMENT_DIMENSIONS}


def merge_amounts(
    into: dict[tuple[str, str, str], dict[str, list[int]]], more: Mapping[tuple[str, str, str], Mapping[str, list[int]]]
) -> None:
    """Adds ``more`` to ``into`` (both as :func:`batch_amounts` returns them)."""
    for key, values in more.items():
        sums = into.setdefault(key, {})
        for value, measures in values.items():
            have = sums.get(value)
            sums[value] = list(measures) if have is None else list(map(operator.add, have, measures))


def attribution(record: Mapping[str, str]) -> dict[str, str]:
    """What feedback on a call needs to find its totals later: tenant, day and dimension values."""
    values = _values(record)
    return {
        "tenant": record["tenant"],
        "day": day_of(float(record["timestamp"])),
        # The whole-tenant dimension's value is always "": the key "tenant" keeps the name.
        **{d.value: values[d] for d in _FEEDBACK_DIMENSIONS if d is not Dimension.TENANT},
    }


def feedback_targets(attributed: Mapping[str, str]) -> list[tuple[str, str]]:
    """(dimension, value) of each total a call's feedback counts under."""
    return [(d.value, "" if d is Dimension.TENANT else attributed.get(d.value, "")) for d in _FEEDBACK_DIMENSIONS]


FEEDBACK_POSITIONS = (_FEEDBACK_COUNT, _FEEDBACK_SCORE)
"""Where the feedback count and score sum sit in the packed measures (0-based)."""


# --------------------------------------------------------------------------------------------------
# Queries


@frozen
class UsageQuery:
    """A checked usage query: which tenants, which days, grouped how."""

    by: Dimension
    tenants: tuple[str, ...] | None  # None: every tenant (an admin asked for all)
    days: tuple[str, ...]


@dataclasses.dataclass
class UsageRow:
    """Totals of one group; averages are derived, never stored."""

    group: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd_micros: int = 0
    latency_ms: int = 0
    ttft_ms: int = 0
    errors: int = 0
    cache_hits: int = 0
    feedback_count: int = 0
    feedback_score_milli: int = 0
    agreement_samples: int = 0
    agreement_f1_milli: int = 0

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms / self.requests if self.requests else 0.0

    @property
    def mean_ttft_ms(self) -> float:
        return self.ttft_ms / self.requests if self.requests else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def mean_feedback(self) -> float | None:
        """The mean feedback score in [0, 1], or None without feedback."""
        return self.feedback_score_milli / 1000 / self.feedback_count if self.feedback_count else None

    @property
    def mean_agreement(self) -> float | None:
        """The mean token F1 of sampled cache hits against fresh answers, or None without samples."""
        return self.agreement_f1_milli / 1000 / self.agreement_samples if self.agreement_samples else None


def parse_day(text: str, name: str) -> datetime.date:
    """A ``YYYY-MM-DD`` date.

    Raises:
        InvalidArgument: ``text`` is not one, naming the field ``name``.
    """
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{name} {text!r} is not a date: use YYYY-MM-DD (UTC), for example 2026-12-01", [(name, "YYYY-MM-DD")]
        ) from None


def usage_query(viewer: Viewer, by: str, since: str, tenant: str, *, today: datetime.date | None = None) -> UsageQuery:
    """Checks a usage query and resolves what it may read.

    Args:
        viewer: Who asks. A tenant key sees only its tenant; an admin key sees all, or one.
        by: A :class:`Dimension` value.
        since: The first day, ``YYYY-MM-DD``; "" means 7 days before ``today``.
        tenant: One tenant to read; "" means the viewer's own (every tenant for an admin).
        today: The last day included (default: today, UTC).

    Raises:
        InvalidArgument: An unknown dimension, a bad or future date, or more than 400 days.
        PermissionDenied: A tenant key asked for another tenant.
    """
    today = today or datetime.datetime.now(datetime.UTC).date()
    try:
        dimension = Dimension(by)
    except ValueError:
        names = ", ".join(d.value for d in Dimension)
        raise InvalidArgument(f"group_by {by!r} is not one of {names}", [("group_by", names)]) from None
    first = parse_day(since, "since") if since else today - datetime.timedelta(days=7)
    if first > today:
        raise InvalidArgument(f"since {since!r} is in the future (today is {today})", [("since", "today or before")])
    span = (today - first).days + 1
    if span > MAX_DAYS:
        raise InvalidArgument(
            f"since {since!r} asks for {span} days; at most {MAX_DAYS} are kept", [("since", f"within {MAX_DAYS} days")]
        )
    days = tuple((first + datetime.timedelta(days=i)).isoformat() for i in range(span))
    return UsageQuery(dimension, scope(viewer, tenant), days)


def scope(viewer: Viewer, tenant: str) -> tuple[str, ...] | None:
    """The tenants a viewer reads: its own unless it is an admin (None: every tenant).

    Raises:
        PermissionDenied: A tenant key named another tenant.
    """
    if viewer.admin:
        return (tenant,) if tenant else None
    if tenant and tenant != viewer.tenant:
        raise PermissionDenied(
            f"this key belongs to tenant {viewer.tenant!r} and cannot read tenant {tenant!r}; "
            "use an admin key, or leave tenant empty",
            reason="TENANT_FORBIDDEN",
        )
    return (viewer.tenant,)


def stored_dimension(by: Dimension) -> Dimension:
    """The dimension whose totals a grouping reads (by day: the whole-tenant totals of each day)."""
    return Dimension.TENANT if by is Dimension.DAY else by


def usage_rows(by: Dimension, totals: Totals) -> list[UsageRow]:
    """Rows of ``totals`` (the kept totals of ``stored_dimension(by)``, per (tenant, day)) grouped
    by ``by``, most expensive first (by day: oldest first).

    ``tenant`` and ``day`` group the whole-tenant totals by tenant or by day; the others
    group the dimension's values across tenants and days.
    """
    # Summed as plain lists (map(add) runs in C): a grouping by user sums ~80k fields at 100k calls.
    sums: dict[str, list[int]] = {}
    width = len(MEASURES)
    for (tenant, day), values in totals.items():
        for value, measures in values.items():
            group = tenant if by is Dimension.TENANT else day if by is Dimension.DAY else value
            acc = sums.get(group)
            if acc is None:
                acc = sums[group] = [0] * width
            acc[: len(measures)] = map(operator.add, acc, measures)
    rows = {group: UsageRow(group, *acc[:width]) for group, acc in sums.items()}
    if by is Dimension.DAY:
        return sorted(rows.values(), key=lambda r: r.group)
    return sorted(rows.values(), key=lambda r: (-r.cost_usd_micros, -r.requests, r.group))


# --------------------------------------------------------------------------------------------------
# Feedback


def check_feedback(request_id: str, score: float, comment: str) -> int:
    """Checks feedback before anything is stored; returns the score in thousandths.

    Raises:
        InvalidArgument: No request id, a score outside [0, 1] (or not a number), or a
            comment over 2000 characters; every bad field is named.
    """
    bad: list[tuple[str, str]] = []
    if not request_id:
        bad.append(("request_id", "required: the request_id of the call, from `started` or the call list"))
    if not 0.0 <= score <= 1.0:  # also false for NaN
        bad.append(("score", f"{score!r} is outside [0, 1]: 1 is good, 0 is bad"))
    if len(comment) > MAX_COMMENT_CHARS:
        bad.append(("comment", f"{len(comment)} characters; at most {MAX_COMMENT_CHARS}"))
    if bad:
        fields = ", ".join(f for f, _ in bad)
        raise InvalidArgument(f"invalid feedback: {bad[0][0]}: {bad[0][1]} (problems in: {fields})", bad)
    return round(score * 1000)


def feedback_target(
    viewer: Viewer, request_id: str, attributed: Mapping[str, str] | None, window_s: int = 30 * 86400
) -> Mapping[str, str]:
    """The call feedback is about, if the viewer may give it.

    A call of another tenant is NOT_FOUND for a tenant key, as an unknown one: a tenant
    cannot learn which request ids exist elsewhere.

    Args:
        window_s: How long a call's attribution is kept (the gateway's ``feedback_window_s``).

    Raises:
        NotFound: No such call (or too old), or another tenant's call.
    """
    if attributed is None or (not viewer.admin and attributed["tenant"] != viewer.tenant):
        window = f"{window_s // 86400} days" if window_s % 86400 == 0 else f"{window_s} seconds"
        raise NotFound(
            f"no call {request_id!r} of this tenant: feedback is taken for calls of the last {window}, "
            "by the request_id the gateway returned",
            reason="CALL_NOT_FOUND",
        )
    return attributed


# --------------------------------------------------------------------------------------------------
# Paging and drift


def page_size(requested: int) -> int:
    """The page size to use (0: the default).

    Raises:
        InvalidArgument: Negative, or above 500.
    """
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size {requested} is outside 0..{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
            [("page_size", f"0 to {MAX_PAGE_SIZE}")],
        )
    return requested or DEFAULT_PAGE_SIZE


def check_page_token(token: str) -> str:
    """A page token is the stream id of the last call of the previous page.

    Raises:
        InvalidArgument: It is not one.
    """
    ms, _, seq = token.partition("-")
    if token and not (ms.isdigit() and seq.isdigit()):
        raise InvalidArgument(
            f"page_token {token!r} is not one this API returned: pass next_page_token as it came",
            [("page_token", "a next_page_token from the previous page")],
        )
    return token


@frozen
class DriftSignal:
    """A prompt version or namespace whose mean feedback or cache-hit agreement moved beyond
    the threshold (``signal``: "feedback" or "agreement")."""

    dimension: Dimension
    value: str
    baseline: float
    recent: float
    baseline_count: int
    recent_count: int
    signal: str = "feedback"

    @property
    def change(self) -> float:
        return self.recent - self.baseline


@frozen
class DriftRule:
    """When a mean feedback score (or a mean cache-hit agreement) counts as drifted.

    The recent window (the last ``recent_days`` days, today included) is compared with the
    ``baseline_days`` before it; both need at least ``min_count`` scores (samples), and the
    means must differ by at least ``threshold`` (both are on a 0..1 scale).
    """

    recent_days: int = 1
    baseline_days: int = 7
    threshold: float = 0.15
    min_count: int = 5


def drift(rule: DriftRule, totals: Mapping[Dimension, Totals], days: Sequence[str]) -> list[DriftSignal]:
    """The drift signals per prompt version and per namespace, largest move first.

    Args:
        totals: The kept totals of the prompt and namespace dimensions covering ``days``.
        days: The baseline days then the recent ones, oldest first (``baseline_days +
            recent_days`` of them).
    """
    recent_days = set(days[-rule.recent_days :])
    signals = {"feedback": (_FEEDBACK_COUNT, _FEEDBACK_SCORE), "agreement": (_AGREEMENT_COUNT, _AGREEMENT_SUM)}
    sums: dict[tuple[str, str, str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for dimension, per_day in totals.items():
        for (_, day), values in per_day.items():
            for value, measures in values.items():
                if not value:
                    continue
                for signal, (count_at, sum_at) in signals.items():
                    if len(measures) > sum_at:  # fields kept before a measure existed are shorter
                        slot = sums[(signal, dimension.value, value, day in recent_days)]
                        slot[0] += measures[count_at]
                        slot[1] += measures[sum_at]
    out = []
    for signal, dimension, value in sorted({(s, d, v) for s, d, v, _ in sums}):
        (base_n, base_s) = sums[(signal, dimension, value, False)]
        (new_n, new_s) = sums[(signal, dimension, value, True)]
        if base_n < rule.min_count or new_n < rule.min_count:
            continue
        baseline, recent = base_s / 1000 / base_n, new_s / 1000 / new_n
        if abs(recent - baseline) >= rule.threshold:
            out.append(DriftSignal(Dimension(dimension), value, baseline, recent, base_n, new_n, signal))
    return sorted(out, key=lambda s: -abs(s.change))


# --------------------------------------------------------------------------------------------------
# The queries, over the gateway's store


@frozen
class CallView:
    """One listed call: its record, whether its raw text is readable, its feedback."""

    fields: Mapping[str, str]
    raw_state: str  # "hot", "expired" or "not_kept"
    feedback_score: float | None


class Insights:
    """Usage, calls, feedback and drift as a viewer may see them."""

    def __init__(self, store: GatewayStore, admin_tenants: Iterable[str], rule: DriftRule = DriftRule()) -> None:
        self.store = store
        self.admin_tenants = frozenset(admin_tenants)
        self.rule = rule

    def viewer(self, tenant: str) -> Viewer:
        """The viewer a key of ``tenant`` is."""
        return Viewer(tenant, tenant in self.admin_tenants)

    async def _totals(self, tenants: tuple[str, ...] | None, days: Sequence[str], dimension: Dimension) -> Totals:
        every = tenants if tenants is not None else tuple(await self.store.usage_tenants())
        return await self.store.usage_totals(every, days, dimension.value)

    async def usage(self, viewer: Viewer, by: str, since: str, tenant: str) -> tuple[list[UsageRow], tuple[str, ...]]:
        """Usage rows and the days they cover (see :func:`usage_query` for the errors)."""
        query = usage_query(viewer, by, since, tenant)
        totals = await self._totals(query.tenants, query.days, stored_dimension(query.by))
        return usage_rows(query.by, totals), query.days

    async def calls(
        self, viewer: Viewer, tenant: str, requested_page_size: int, page_token: str
    ) -> tuple[list[CallView], str]:
        """A page of calls, newest first, and the next page's token ("" at the end).

        Raises:
            InvalidArgument: A bad page size or page token.
            PermissionDenied: A tenant key named another tenant.
        """
        size = page_size(requested_page_size)
        token = check_page_token(page_token)
        tenants = scope(viewer, tenant)
        rows = await self.store.calls_page(None if tenants is None else tenants[0], token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        ids = [fields.get("request_id", "") for _, fields in rows]
        views = []
        for (_, fields), (hot, score_milli) in zip(rows, await self.store.call_extras(ids), strict=True):
            state = "not_kept" if fields.get("raw_stored", "0") != "1" else ("hot" if hot else "expired")
            views.append(CallView(fields, state, None if score_milli is None else score_milli / 1000))
        return views, rows[-1][0] if more and rows else ""

    async def _target(self, viewer: Viewer, request_id: str) -> Mapping[str, str]:
        """The call ``request_id`` names, within the feedback window (see :func:`feedback_target`)."""
        attributed = await self.store.call_attribution(request_id)
        return feedback_target(viewer, request_id, attributed, self.store.call_index_ttl_s)

    async def raw(self, viewer: Viewer, request_id: str) -> dict[str, str] | None:
        """A call's raw prompt and answer while hot, if the viewer may read the call."""
        await self._target(viewer, request_id)
        return await self.store.raw_call(request_id)

    async def call(self, viewer: Viewer, request_id: str) -> tuple[CallView, dict[str, str] | None]:
        """One call and its raw text (None when not kept or expired).

        Raises:
            NotFound: No such call of the viewer's tenant within the feedback window (or its
                record was trimmed from the tenant's stream).
        """
        target = await self._target(viewer, request_id)
        fields = await self.store.find_call(target["tenant"], request_id, int(target.get("written_ms", "0") or 0))
        if fields is None:
            raise NotFound(
                f"call {request_id!r} is no longer in its tenant's call list (trimmed); its totals remain",
                reason="CALL_NOT_FOUND",
            )
        [(hot, score_milli)] = await self.store.call_extras([request_id])
        raw = await self.store.raw_call(request_id) if hot else None
        state = "not_kept" if fields.get("raw_stored", "0") != "1" else ("hot" if raw else "expired")
        return CallView(fields, state, None if score_milli is None else score_milli / 1000), raw

    async def feedback(self, viewer: Viewer, request_id: str, score: float, comment: str) -> bool:
        """Records feedback (see :func:`check_feedback` and :func:`feedback_target` for the
        errors); True when it replaced earlier feedback on the call."""
        score_milli = check_feedback(request_id, score, comment)
        target = await self._target(viewer, request_id)
        return await self.store.put_feedback(
            request_id,
            target["tenant"],
            target["day"],
            score_milli,
            comment,
            feedback_targets(target),
            FEEDBACK_POSITIONS,
            len(MEASURES),
        )

    async def overview_scope(self, viewer: Viewer, tenant: str) -> tuple[tuple[str, ...], bool]:
        """Whose budgets the overview shows (an admin asking for all: every tenant with recorded
        calls), and whether it shows the cache's per-namespace counts (admins only: they span
        tenants).

        Raises:
            PermissionDenied: A tenant key named another tenant.
        """
        tenants = scope(viewer, tenant)
        if tenants is None:
            tenants = tuple(await self.store.usage_tenants())
        return tenants, viewer.admin

    async def drift(self, viewer: Viewer, tenant: str, *, today: datetime.date | None = None) -> list[DriftSignal]:
        """Drift signals of the viewer's tenants (see :class:`DriftRule`)."""
        today = today or datetime.datetime.now(datetime.UTC).date()
        span = self.rule.baseline_days + self.rule.recent_days
        days = [(today - datetime.timedelta(days=span - 1 - i)).isoformat() for i in range(span)]
        tenants = scope(viewer, tenant)
        dimensions = (Dimension.PROMPT, Dimension.NAMESPACE)
        return drift(self.rule, {d: await self._totals(tenants, days, d) for d in dimensions}, days)
