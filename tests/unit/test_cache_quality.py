"""Agreement measures for hit-quality samples."""

from __future__ import annotations

import numpy as np
import pytest

from tollway.cache.quality import cosine, token_f1, tokens


def test_tokens_keep_numbers_whole() -> None:
    assert tokens("The limit is 3.5 GB, or 1,000 MB!") == ["the", "limit", "is", "3.5", "gb", "or", "1,000", "mb"]


def test_token_f1() -> None:
    assert token_f1("Paris is the capital.", "paris is the capital") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("yes", "") == 0.0
    assert token_f1("red", "blue") == 0.0
    # One wrong number out of five tokens: the answer is wrong, F1 says 0.8 not 1.0.
    assert token_f1("the limit is 10 GB", "the limit is 50 GB") == pytest.approx(0.8)
    assert 0 < token_f1("a b c", "a b d e") < 1


def test_cosine() -> None:
    a = np.array([1.0, 0.0])
    assert cosine(a, a * 3) == pytest.approx(1.0)
    assert cosine(a, np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, np.zeros(2)) == 0.0
