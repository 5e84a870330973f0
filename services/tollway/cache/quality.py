"""Agreement between a cached answer and a fresh answer to the same request.

Two measures, because each fails where the other holds:

* token F1 (SQuAD-style bag of lower-cased words and numbers): cheap, needs no model,
  and drops sharply when a number or a name differs, which is what a wrong semantic hit
  looks like ("the limit is 10 GB" vs "the limit is 50 GB" share 80 % of their words but
  F1 counts the one that matters against both). It understates agreement between two
  correct paraphrases, since sampled answers rarely repeat each other word for word.
* cosine of the two answers' embeddings, when the caller passes them (the gateway has
  the embedder at hand): captures paraphrase, but sentence embeddings barely move when
  only a number changes, so it overstates agreement for exactly those errors.

Both are exported per namespace; a falling F1 with a steady cosine means paraphrase
drift, a falling cosine means the cache serves answers about something else.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"\w+(?:[.,]\d+)*", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens (``3.5`` and ``1,000`` stay whole)."""
    return _TOKEN.findall(text.lower())


def token_f1(cached: str, fresh: str) -> float:
    """Harmonic mean of token precision and recall between two texts, in [0, 1].

    Two empty texts agree fully (1.0); one empty text agrees with nothing (0.0).
    """
    a, b = Counter(tokens(cached)), Counter(tokens(fresh))
    if not a and not b:
        return 1.0
    common = sum((a & b).values())
    if common == 0:
        return 0.0
    precision = common / sum(a.values())
    recall = common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in [-1, 1]; 0.0 when either vector is all zeros."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))
