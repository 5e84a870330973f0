"""Per-replica counter buffering."""

from __future__ import annotations

from tollway.cache.stats import Stat, StatsBuffer


def test_take_then_give_back_loses_nothing() -> None:
    buf = StatsBuffer()
    buf.add("a", Stat.EXACT_HIT)
    buf.add("a", Stat.EXACT_HIT)
    buf.add("a", Stat.QUALITY_F1_SUM, 0.5)
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


def test_counter_names_are_the_stored_field_names() -> None:
    # The Redis hash fields (and so every replica's sums) are keyed by these exact names.
    assert [s.value for s in Stat] == [
        "exact_hit", "exact_miss", "semantic_hit", "semantic_miss", "stale_hit", "check_rejection", "skip",
        "store", "eviction", "invalidation", "expiry",
        "quality_samples", "quality_f1_sum", "quality_cos_samples", "quality_cos_sum",
        "rejected:number_mismatch", "rejected:unit_mismatch", "rejected:negation_mismatch",
        "rejected:opposite_terms", "rejected:ordinal_mismatch", "rejected:superlative_qualifier",
        "rejected:class_mismatch", "rejected:role_swap", "rejected:entity_swap", "rejected:term_swap",
        "rejected:qualifier_added", "rejected:learned_check", "rejected:false_hit_guard", "rejected:other",
    ]
    assert Stat.EXACT_HIT == "exact_hit" and {"exact_hit": 1}[Stat.EXACT_HIT] == 1


def test_every_check_has_its_rejection_counter() -> None:
    from tollway.cache.stats import rejection_stat
    from tollway.cache.verifier import ALL_RULES, LEARNED_REASON

    for reason in (*ALL_RULES, LEARNED_REASON, "false_hit_guard"):
        assert rejection_stat(reason).value == f"rejected:{reason}"
    assert rejection_stat("something a custom verifier says") is Stat.REJECTED_OTHER
