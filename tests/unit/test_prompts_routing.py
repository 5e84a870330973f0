"""Routing: explicit version > tenant pin > sticky variant > label; the A/B split's shape."""

from __future__ import annotations

import collections

import pytest

from tollway.prompts.routing import choose, pick_variant, point
from tollway.prompts.types import Label, Resolution, Variant

SPLIT = (Variant(3, 90), Variant(4, 10))


def test_pin_beats_variant_beats_label() -> None:
    lb = Label("production", 2, SPLIT)
    pinned = choose("t", lb, pins={"acme": 1}, tenant="acme", user="u1")
    assert (pinned.version, pinned.resolution) == (1, Resolution.TENANT_PIN)
    other = choose("t", lb, pins={"acme": 1}, tenant="beta", user="u1")
    assert other.resolution is Resolution.VARIANT and other.version in (3, 4)
    plain = choose("t", Label("production", 2), pins={}, tenant="beta", user="u1")
    assert (plain.version, plain.resolution) == (2, Resolution.LABEL)


def test_a_caller_with_no_tenant_or_user_gets_the_label_not_a_random_arm() -> None:
    c = choose("t", Label("production", 2, SPLIT), pins={}, tenant="", user="")
    assert (c.version, c.resolution) == (2, Resolution.LABEL)


def test_assignment_is_sticky_and_user_wins_over_tenant() -> None:
    lb = Label("production", 2, SPLIT)
    first = [choose("t", lb, pins={}, tenant="acme", user=f"user-{i}").version for i in range(200)]
    again = [choose("t", lb, pins={}, tenant="other", user=f"user-{i}").version for i in range(200)]
    assert first == again  # the user decides, whatever the tenant
    by_tenant = {choose("t", lb, pins={}, tenant=f"tenant-{i}", user="").version for i in range(200)}
    assert by_tenant == {3, 4}


@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (1, 1, 1, 1), (70, 20, 10)])
def test_the_split_on_10000_users_is_within_one_percent_of_the_weights(weights: tuple[int, ...]) -> None:
    variants = [Variant(i + 1, w) for i, w in enumerate(weights)]
    counts = collections.Counter(pick_variant(variants, "support-triage", f"u:user-{i}") for i in range(10_000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / 10_000 - w / total) <= 0.01, (counts, weights)


def test_shifting_weight_moves_only_the_callers_in_the_slice_that_changed_hands() -> None:
    before = [Variant(1, 90), Variant(2, 10)]
    after = [Variant(1, 80), Variant(2, 20)]
    moved = 0
    for i in range(5000):
        a = pick_variant(before, "t", f"u{i}")
        b = pick_variant(after, "t", f"u{i}")
        assert not (a == 1 and b == 0), "a caller on the growing arm left it"
        moved += a != b
    assert 0.07 < moved / 5000 < 0.13  # about the 10 % that changed hands


def test_zero_weight_arms_get_nobody_and_points_are_in_unit_interval() -> None:
    variants = [Variant(1, 0), Variant(2, 5), Variant(3, 0)]
    assert {pick_variant(variants, "t", f"u{i}") for i in range(500)} == {1}
    assert all(0 <= point("t", f"u{i}") < 1 for i in range(100))
    with pytest.raises(ValueError):
        pick_variant([Variant(1, 0)], "t", "u")
