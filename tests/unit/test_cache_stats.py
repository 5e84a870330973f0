"""Per-replica counter buffering."""

from __future__ import annotations

from tollway.cache.stats import StatsBuffer


def test_take_then_give_back_loses_nothing() -> None:
    buf = StatsBuffer()
    buf.add("a", "exact_hit")
    buf.add("a", "exact_hit")
    buf.add("a", "quality_f1_sum", 0.5)
    buf.touch("a", 7, 100)
    counters, touches = buf.take()
    assert counters == {"a": {"exact_hit": 2, "quality_f1_sum": 0.5}}
    assert isinstance(counters["a"]["exact_hit"], int)
    assert touches == {"a": {7: 100}}
    assert buf.take() == ({}, {})
    buf.touch("a", 7, 200)
    buf.give_back(counters, touches)
    assert buf.pending("a") == {"exact_hit": 2, "quality_f1_sum": 0.5}
    assert buf.take()[1] == {"a": {7: 200}}
