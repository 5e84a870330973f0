"""Gateway metrics from a finished call record: cost by tenant, feature, model and user; tokens."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tollway.gateway import metrics
from tollway.gateway.callrecord import CallRecord


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _record(**fields: object) -> CallRecord:
    record = CallRecord.begin("r-1", "t-metrics", "search", "u-7", "m-metrics", "h")
    for key, value in fields.items():
        setattr(record, key, value)
    return record


def test_a_request_adds_its_cost_tokens_and_rate() -> None:
    before_cost = _value("tollway_gateway_cost_usd_total", tenant="t-metrics", feature="search", model="m-metrics")
    before_user = _value("tollway_gateway_user_cost_usd_total", tenant="t-metrics", user="u-7")
    before_tokens = _value("tollway_gateway_request_tokens_sum", model="m-metrics")
    before_rates = _value("tollway_gateway_output_tokens_per_second_count", model="m-metrics")
    metrics.observe_request(
        _record(input_tokens=120, output_tokens=41, cost_usd=0.0025, latency_ms=1200, ttft_ms=200)
    )
    assert _value(
        "tollway_gateway_cost_usd_total", tenant="t-metrics", feature="search", model="m-metrics"
    ) - before_cost == 0.0025
    assert _value("tollway_gateway_user_cost_usd_total", tenant="t-metrics", user="u-7") - before_user == 0.0025
    assert _value("tollway_gateway_request_tokens_sum", model="m-metrics") - before_tokens == 161
    # 40 tokens after the first one, in the 1000 ms after it.
    assert _value("tollway_gateway_output_tokens_per_second_count", model="m-metrics") - before_rates == 1
    assert _value("tollway_gateway_output_tokens_per_second_bucket", model="m-metrics", le="40.0") >= 1


def test_a_free_or_empty_request_adds_no_cost_and_no_rate() -> None:
    before_user = _value("tollway_gateway_user_cost_usd_total", tenant="t-free", user="u-7")
    before_rates = _value("tollway_gateway_output_tokens_per_second_count", model="m-free")
    record = CallRecord.begin("r-2", "t-free", "", "u-7", "m-free", "h")
    record.input_tokens, record.output_tokens = 12, 1  # one output token: no rate to speak of
    metrics.observe_request(record)
    assert _value("tollway_gateway_user_cost_usd_total", tenant="t-free", user="u-7") == before_user
    assert _value("tollway_gateway_output_tokens_per_second_count", model="m-free") == before_rates
    assert _value("tollway_gateway_request_tokens_count", model="m-free") >= 1
