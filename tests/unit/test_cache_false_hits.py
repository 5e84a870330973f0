"""The declared false-hit rate: the Wilson bound, the controller's ladder, the answer-agreement judge."""

from __future__ import annotations

import math
import random

import pytest

from tollway.cache.false_hits import FalseHitController, answers_agree, wilson_upper

LADDER = [round(0.30 + 0.05 * i, 2) for i in range(14)]  # 0.30 .. 0.95


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert wilson_upper(0, 300) < 0.01 < wilson_upper(0, 250)  # 0 of ~270 is needed for a 1 % bound
    assert wilson_upper(5, 100) > 0.05  # the bound sits above the observed rate
    assert wilson_upper(100, 100) == pytest.approx(1.0)


def test_serves_nothing_until_the_evidence_allows() -> None:
    c = FalseHitController(0.02, LADDER)
    assert c.threshold == math.inf and c.floor == LADDER[0] and c.sample_count == 0
    for _ in range(100):
        c.observe(0.9, True)
    assert c.threshold == math.inf  # 0 of 100 still bounds the rate above 2 %
    for _ in range(200):
        c.observe(0.9, True)
    assert c.threshold < 1


def test_serves_nothing_when_even_the_top_is_too_often_wrong() -> None:
    c = FalseHitController(0.05, LADDER)
    for i in range(1000):
        c.observe(0.96, i % 5 != 0)  # 20 % wrong even at the top
    assert c.threshold == math.inf


def test_lowers_the_threshold_as_agreeing_evidence_accumulates() -> None:
    c = FalseHitController(0.05, LADDER)
    for _ in range(200):
        c.observe(0.95, True)
    assert c.threshold >= 0.85  # no evidence about the band below: it is not served
    for _ in range(200):
        c.observe(0.40, True)
    assert c.threshold <= 0.40


def test_raises_the_threshold_when_the_bound_exceeds_the_rate() -> None:
    c = FalseHitController(0.05, LADDER)
    for _ in range(300):
        c.observe(0.35, True)
        c.observe(0.90, True)
    assert c.threshold == 0.30
    for _ in range(40):  # low-scoring hits start to disagree
        c.observe(0.35, False)
    assert c.threshold > 0.35
    assert c.upper_bound(c.threshold) <= 0.05


def test_realised_rate_stays_below_the_declared_one() -> None:
    # Scores uniform in [0.3, 1); a hit with score s is wrong with probability (1 - s) / 2.
    rng = random.Random(7)
    c = FalseHitController(0.05, [round(0.30 + 0.01 * i, 2) for i in range(70)])
    served = wrong = 0
    for _ in range(40_000):
        s = rng.uniform(0.3, 1.0)
        good = rng.random() >= (1 - s) / 2
        if s >= c.threshold:
            served += 1
            wrong += not good
        if rng.random() < 0.1:
            c.observe(s, good)
    assert served > 0 and wrong / served <= 0.05


def test_window_forgets_old_samples() -> None:
    c = FalseHitController(0.1, LADDER, window=50)
    for _ in range(100):
        c.observe(0.5, True)
    assert c.sample_count == 50


@pytest.mark.parametrize(
    ("rate", "ladder", "window"),
    [(0.0, LADDER, 10), (0.6, LADDER, 10), (0.1, [], 10), (0.1, [0.5, 0.4], 10), (0.1, LADDER, 0)],
)
def test_bad_arguments(rate: float, ladder: list[float], window: int) -> None:
    with pytest.raises(ValueError):
        FalseHitController(rate, ladder, window)


def test_answers_agree_checks_numbers_before_meaning() -> None:
    assert not answers_agree("Take 10 mg twice a day.", "Take 100 mg twice a day.", 0.99)
    assert answers_agree("Paris is the capital.", "The capital is Paris.", 0.95)
    assert not answers_agree("Paris is the capital.", "Bananas are yellow.", 0.10)
    assert answers_agree("The capital of France is Paris", "the capital of france is paris", None)
