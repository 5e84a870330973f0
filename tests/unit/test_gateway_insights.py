"""Usage totals kept at write time, who may read what, feedback checks and drift (no servers)."""

from __future__ import annotations

import datetime

import pytest

from tollway.gateway.calllog import RawPolicy
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.insights import (
    MEASURES,
    Dimension,
    DriftRule,
    Viewer,
    attribution,
    batch_amounts,
    check_feedback,
    check_page_token,
    drift,
    feedback_target,
    feedback_targets,
    page_size,
    record_amounts,
    usage_query,
    usage_rows,
)
from tollway.mesh.errors import InvalidArgument, NotFound, PermissionDenied

TODAY = datetime.date(2026, 12, 6)
NOON = datetime.datetime(2026, 12, 6, 12, tzinfo=datetime.UTC).timestamp()


def record(**over: object) -> dict[str, str]:
    rec = CallRecord.begin("r1", "acme", "search", "u1", "gpt-x", "h")
    rec.timestamp = NOON
    rec.input_tokens, rec.output_tokens, rec.cost_usd = 10, 5, 0.000123
    rec.latency_ms, rec.ttft_ms = 200, 50
    for name, value in over.items():
        setattr(rec, name, value)
    return rec.stream_fields()


def measure(measures: list[int], name: str) -> int:
    return measures[MEASURES.index(name)]


def test_one_record_adds_its_measures_under_every_dimension() -> None:
    amounts = record_amounts(record(prompt_template="triage", prompt_version="3", cache_namespace="default"))
    assert amounts[Dimension.TENANT][0] == "" and measure(amounts[Dimension.TENANT][1], "requests") == 1
    assert amounts[Dimension.MODEL][0] == "gpt-x" and measure(amounts[Dimension.MODEL][1], "cost_usd_micros") == 123
    assert measure(amounts[Dimension.FEATURE][1], "input_tokens") == 10
    assert measure(amounts[Dimension.USER][1], "output_tokens") == 5
    assert amounts[Dimension.PROMPT][0] == "triage@3" and measure(amounts[Dimension.PROMPT][1], "latency_ms") == 200
    assert amounts[Dimension.TIER][0] == "none"
    assert amounts[Dimension.NAMESPACE] == ("default", amounts[Dimension.TENANT][1])
    assert measure(amounts[Dimension.TENANT][1], "errors") == 0
    assert measure(amounts[Dimension.TENANT][1], "cache_hits") == 0


def test_failures_and_cache_hits_are_counted() -> None:
    from tollway.common.caching import CacheTier

    failed = record_amounts(record(status="PROVIDER_UNAVAILABLE"))
    assert measure(failed[Dimension.TENANT][1], "errors") == 1
    degraded = record_amounts(record(status="DEGRADED", cache_tier=CacheTier.STALE))
    assert measure(degraded[Dimension.TENANT][1], "errors") == 0
    assert degraded[Dimension.TIER][0] == "stale" and measure(degraded[Dimension.TIER][1], "cache_hits") == 1


def test_a_batch_is_summed_per_tenant_day_and_dimension() -> None:
    day_before = NOON - 86400
    batch = [record(), record(), record(tenant="other"), record(timestamp=day_before)]
    sums = batch_amounts(batch)
    assert {(t, d) for t, d, _ in sums} == {("acme", "2026-12-06"), ("other", "2026-12-06"), ("acme", "2026-12-05")}
    assert measure(sums[("acme", "2026-12-06", "tenant")][""], "requests") == 2
    assert measure(sums[("acme", "2026-12-06", "model")]["gpt-x"], "cost_usd_micros") == 246
    assert measure(sums[("acme", "2026-12-05", "model")]["gpt-x"], "cost_usd_micros") == 123


def _totals(records: list[dict[str, str]], dimension: str) -> dict[tuple[str, str], dict[str, list[int]]]:
    return {(t, d): values for (t, d, dim), values in batch_amounts(records).items() if dim == dimension}


def test_rows_group_by_tenant_day_or_a_dimension() -> None:
    records = [record(timestamp=NOON - 86400), record(), record(model="small"), record(tenant="beta")]
    by_tenant = {r.group: r.requests for r in usage_rows(Dimension.TENANT, _totals(records, "tenant"))}
    assert by_tenant == {"acme": 3, "beta": 1}
    by_day = [(r.group, r.requests) for r in usage_rows(Dimension.DAY, _totals(records, "tenant"))]
    assert by_day == [("2026-12-05", 1), ("2026-12-06", 3)]
    by_model = usage_rows(Dimension.MODEL, _totals(records, "model"))
    assert [(r.group, r.requests) for r in by_model] == [("gpt-x", 3), ("small", 1)]
    assert by_model[0].mean_latency_ms == 200 and by_model[0].cost_usd_micros == 369


def test_a_value_holding_commas_and_colons_is_kept_whole() -> None:
    totals = _totals([record(feature="a,b:c")], "feature")
    assert [r.group for r in usage_rows(Dimension.FEATURE, totals)] == ["a,b:c"]


def test_a_tenant_key_reads_only_its_own_tenant() -> None:
    me = Viewer("acme", admin=False)
    assert usage_query(me, "model", "", "", today=TODAY).tenants == ("acme",)
    assert usage_query(me, "model", "", "acme", today=TODAY).tenants == ("acme",)
    with pytest.raises(PermissionDenied, match="cannot read tenant 'beta'"):
        usage_query(me, "model", "", "beta", today=TODAY)
    admin = Viewer("admin", admin=True)
    assert usage_query(admin, "model", "", "", today=TODAY).tenants is None
    assert usage_query(admin, "model", "", "beta", today=TODAY).tenants == ("beta",)


def test_usage_queries_name_what_is_wrong() -> None:
    me = Viewer("acme", admin=False)
    with pytest.raises(InvalidArgument, match="group_by 'colour' is not one of"):
        usage_query(me, "colour", "", "", today=TODAY)
    with pytest.raises(InvalidArgument, match="since '06/12/2026' is not a date"):
        usage_query(me, "day", "06/12/2026", "", today=TODAY)
    with pytest.raises(InvalidArgument, match="in the future"):
        usage_query(me, "day", "2026-12-07", "", today=TODAY)
    with pytest.raises(InvalidArgument, match="at most 400"):
        usage_query(me, "day", "2025-01-01", "", today=TODAY)
    query = usage_query(me, "day", "2026-12-04", "", today=TODAY)
    assert query.days == ("2026-12-04", "2026-12-05", "2026-12-06")
    assert len(usage_query(me, "day", "", "", today=TODAY).days) == 8


def test_feedback_is_checked_before_anything_is_stored() -> None:
    assert check_feedback("r1", 0.75, "") == 750
    with pytest.raises(InvalidArgument) as err:
        check_feedback("", 1.5, "x" * 2001)
    assert [v[0] for v in err.value.violations] == ["request_id", "score", "comment"]
    with pytest.raises(InvalidArgument, match="score"):
        check_feedback("r1", float("nan"), "")


def test_feedback_on_another_tenants_call_looks_like_an_unknown_call() -> None:
    attributed = attribution(record())
    assert feedback_target(Viewer("acme", False), "r1", attributed)["tenant"] == "acme"
    assert feedback_target(Viewer("admin", True), "r1", attributed)["tenant"] == "acme"
    with pytest.raises(NotFound, match="no call 'r1'"):
        feedback_target(Viewer("beta", False), "r1", attributed)
    with pytest.raises(NotFound):
        feedback_target(Viewer("acme", False), "r1", None)
    targets = feedback_targets(attributed)
    assert ("model", "gpt-x") in targets and ("tenant", "") in targets
    assert not any(d == "tier" for d, _ in targets)


def test_paging_arguments_are_checked() -> None:
    assert page_size(0) == 50 and page_size(500) == 500
    with pytest.raises(InvalidArgument, match="page_size 501"):
        page_size(501)
    assert check_page_token("1700000000000-3") == "1700000000000-3"
    with pytest.raises(InvalidArgument, match="page_token 'abc'"):
        check_page_token("abc")


def _feedback_totals(day: str, value: str, count: int, mean: float) -> dict[tuple[str, str], dict[str, list[int]]]:
    measures = [0] * len(MEASURES)
    measures[MEASURES.index("feedback_count")] = count
    measures[MEASURES.index("feedback_score_milli")] = round(mean * 1000 * count)
    return {("acme", day): {value: measures}}


def test_drift_fires_when_recent_feedback_moves_beyond_the_threshold() -> None:
    rule = DriftRule(recent_days=1, baseline_days=2, threshold=0.15, min_count=5)
    days = ["2026-12-04", "2026-12-05", "2026-12-06"]
    before = _feedback_totals("2026-12-04", "triage@2", 10, 0.9)
    totals = {**before, **_feedback_totals("2026-12-06", "triage@2", 6, 0.5)}
    [signal] = drift(rule, {Dimension.PROMPT: totals}, days)
    assert (signal.dimension, signal.value) == (Dimension.PROMPT, "triage@2")
    assert signal.baseline == pytest.approx(0.9) and signal.recent == pytest.approx(0.5)
    # A small move, or too few scores, is no signal.
    steady = {**before, **_feedback_totals("2026-12-06", "triage@2", 6, 0.8)}
    assert drift(rule, {Dimension.PROMPT: steady}, days) == []
    sparse = {**before, **_feedback_totals("2026-12-06", "triage@2", 2, 0.1)}
    assert drift(rule, {Dimension.PROMPT: sparse}, days) == []


def test_raw_text_is_kept_only_for_tenants_that_allow_it() -> None:
    assert not RawPolicy.parse("", 60).allows("acme")
    assert RawPolicy.parse("acme, beta", 60).allows("beta")
    assert not RawPolicy.parse("acme", 60).allows("gamma")
    assert RawPolicy.parse("*", 60).allows("anyone")


def test_the_record_derives_total_tokens_and_tokens_per_second() -> None:
    fields = record(output_tokens=30, latency_ms=1050, ttft_ms=50, tools_called=("search", "fetch"))
    assert fields["total_tokens"] == "40" and fields["tokens_per_second"] == "30.0"
    assert fields["tools_called"] == "search,fetch" and fields["temperature"] == "" and fields["raw_stored"] == "0"
    assert record(output_tokens=0)["tokens_per_second"] == "0.0"


def test_a_quality_sample_counts_agreement_under_model_prompt_and_namespace() -> None:
    from tollway.gateway.insights import agreement_amounts, merge_amounts

    amounts = agreement_amounts("acme", "faq", "gpt-x", "triage@2", 0.8, NOON)
    assert set(amounts) == {("acme", "2026-12-06", d) for d in ("tenant", "model", "prompt", "namespace")}
    [model] = amounts[("acme", "2026-12-06", "model")].items()
    assert model[0] == "gpt-x" and measure(model[1], "agreement_samples") == 1
    assert measure(model[1], "agreement_f1_milli") == 800 and measure(model[1], "requests") == 0
    into = batch_amounts([record()])
    merge_amounts(into, amounts)
    merge_amounts(into, agreement_amounts("acme", "faq", "gpt-x", "triage@2", 0.4, NOON))
    [row] = usage_rows(Dimension.MODEL, _totals_of(into, "model"))
    assert row.requests == 1 and row.agreement_samples == 2 and row.mean_agreement == pytest.approx(0.6)


def _totals_of(amounts: dict, dimension: str) -> dict:  # type: ignore[type-arg]
    return {(t, d): values for (t, d, dim), values in amounts.items() if dim == dimension}


def test_drift_fires_on_agreement_as_on_feedback() -> None:
    rule = DriftRule(recent_days=1, baseline_days=2, threshold=0.15, min_count=5)
    days = ["2026-12-04", "2026-12-05", "2026-12-06"]

    def samples(day: str, count: int, mean: float) -> dict:  # type: ignore[type-arg]
        measures = [0] * len(MEASURES)
        measures[MEASURES.index("agreement_samples")] = count
        measures[MEASURES.index("agreement_f1_milli")] = round(mean * 1000 * count)
        return {("acme", day): {"faq": measures}}

    totals = {**samples("2026-12-04", 8, 0.85), **samples("2026-12-06", 5, 0.55)}
    [signal] = drift(rule, {Dimension.NAMESPACE: totals}, days)
    assert (signal.signal, signal.dimension, signal.value) == ("agreement", Dimension.NAMESPACE, "faq")
    assert signal.recent == pytest.approx(0.55)
    # Totals kept before agreement existed are shorter: read as no samples, not as an error.
    old = {("acme", "2026-12-06"): {"faq": [1] * MEASURES.index("agreement_samples")}}
    assert drift(rule, {Dimension.NAMESPACE: old}, days) == []


def test_a_usage_row_holds_every_measure_in_the_packed_order() -> None:
    import dataclasses

    from tollway.gateway.insights import UsageRow

    # Rows are built positionally from the packed measures: a measure added to one and not the
    # other, or out of order, would land in the wrong column.
    assert tuple(f.name for f in dataclasses.fields(UsageRow))[1:] == MEASURES
