"""The call record's stream form is what `tollway calls` and the tests read: names, order, text."""

from __future__ import annotations

import dataclasses

from tollway.common.caching import CacheTier
from tollway.gateway.callrecord import CallRecord

# The record as the untyped dict wrote it before CallRecord, in the same order.
STREAM_FIELDS = (
    "request_id",
    "timestamp",
    "tenant",
    "feature",
    "user",
    "model",
    "provider",
    "prompt_template",
    "prompt_version",
    "cache_tier",
    "cache_entry",
    "attempts",
    "deployment",
    "fallback_path",
    "route_method",
    "route_reason",
    "finish_reason",
    "prompt_hash",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "status",
    "response_hash",
    # Issue 17: appended, so the older fields keep their places.
    "key_id",
    "pricing_version",
    "temperature",
    "max_tokens",
    "tools_called",
    "error_message",
    "cache_namespace",
    "guard_decisions",
    "retrieval_collection",
    "cited_documents",
    "raw_stored",
    "usage_from_provider",
    "total_tokens",
    "tokens_per_second",
)


def test_the_stream_fields_keep_their_names_and_order() -> None:
    record = CallRecord.begin("r", "t", "f", "u", "m", "h" * 32)
    assert tuple(record.stream_fields()) == STREAM_FIELDS


def test_values_are_written_as_the_dict_wrote_them() -> None:
    record = CallRecord.begin("r", "t", "f", "u", "m", "h")
    record = dataclasses.replace(record, timestamp=1700000000.123)
    assert record.stream_fields()["cache_tier"] == "" and record.stream_fields()["attempts"] == "0"
    record.cache_tier, record.attempts, record.cost_usd = CacheTier.SEMANTIC, 2, 15 / 1e6
    record.finish_reason = "stop"
    fields = record.stream_fields()
    assert fields["cache_tier"] == "semantic" and fields["attempts"] == "2"
    assert fields["cost_usd"] == str(15 / 1e6) and fields["timestamp"] == "1700000000.123"
    assert fields["finish_reason"] == "stop" and fields["status"] == "OK"
    assert all(isinstance(v, str) for v in fields.values())


def test_a_new_record_starts_now_with_nothing_answered() -> None:
    record = CallRecord.begin("r", "t", "f", "u", "m", "h")
    assert record.timestamp > 1.6e9 and round(record.timestamp, 3) == record.timestamp
    assert (record.provider, record.cache_tier, record.status, record.input_tokens) == (
        "",
        CacheTier.NOT_CONSULTED,
        "OK",
        0,
    )
