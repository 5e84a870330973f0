"""The learned second check: a logistic regression over what differs between two texts.

The hand-written rules (``tollway.cache.verifier``) each see one kind of difference. This model weighs them
together with the cosine and how much of the two texts lines up, and says how likely it is that the cached
answer is right for the query. It runs only on candidates that passed the cosine pre-filter and the hard
rules, so its cost is paid on few candidates: one text analysis per side (memoised) and a dot product of
about thirty numbers (see ``bench/cache_eval.py`` for the measured cost per candidate).

The weights are a JSON file (``learned_check.json`` beside this module) written by
``bench/train_learned_check.py``: feature names, standardisation, coefficients and intercept, plus the data
they were trained on and its licences. Inference needs numpy only; no pickle is ever loaded. A missing or
corrupt file is an error that names the path (:class:`LearnedCheckError`): the cache must not start with a
second check quietly weaker than the one configured.

Token-level alignment with the embedder's own token vectors is not a feature: the cache service receives
the pooled query vector only, and shipping the 30,522 x 384 token table into the cache would tie it to the
model's wheel for a feature the lexical alignment below already approximates.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tollway.cache.verify_text import Features, analyze

__all__ = ["FEATURES", "WEIGHTS_PATH", "LearnedCheck", "LearnedCheckError", "features", "load_learned_check"]

WEIGHTS_PATH = Path(__file__).with_name("learned_check.json")

# Rule outcomes used as features; each is 1.0 when the rule objects to the pair.
_RULE_FEATURES = (
    "number_mismatch",
    "unit_mismatch",
    "negation_mismatch",
    "opposite_terms",
    "ordinal_mismatch",
    "superlative_qualifier",
    "class_mismatch",
    "role_swap",
    "entity_swap",
    "term_swap",
    "qualifier_added",
)
FEATURES: tuple[str, ...] = (
    "cosine",
    "cosine_gap",  # (1 - cosine)^2: the logit is not linear in cosine near 1
    "key_jaccard",
    "only_query_share",
    "only_cached_share",
    "length_ratio",
    "log_length",
    "quantity_diff",
    "has_quantities",
    "negation_diff",
    "entity_only_one_side",
    "edit_width",
    *(f"rule_{name}" for name in _RULE_FEATURES),
    *(f"cosine_x_{name}" for name in ("number_mismatch", "entity_swap", "term_swap", "qualifier_added")),
)


class LearnedCheckError(RuntimeError):
    """The weights file is missing, unreadable or malformed; the message names its path."""


def features(query: str, candidate: str, cosine: float, passed: frozenset[str] = frozenset()) -> np.ndarray:
    """The feature vector of one pair, in :data:`FEATURES` order.

    Args:
        query: The incoming request's text.
        candidate: The cached entry's request text.
        cosine: Cosine similarity of their embeddings.
        passed: Rules already run on this pair without objecting: their flags are 0 and are not recomputed
            (the verifier runs its rules before the learned check).
    """
    q, c = analyze(query), analyze(candidate)
    return _features(q, c, cosine, passed)


def _features(q: Features, c: Features, cosine: float, passed: frozenset[str]) -> np.ndarray:
    from tollway.cache.verifier import ALL_RULES, _differences, _minimal_edit, _qualifier_added_of, _term_swap_of

    only_q, only_c, q_names, c_names, shared = _differences(q, c)
    q_keys, c_keys = len(q.keys), len(c.keys)
    union = shared + len(only_q) + len(only_c)
    q_len, c_len = len(q.tokens), len(c.tokens)
    quantity_diff = Counter(x.value for x in q.quantities)
    quantity_diff.subtract(Counter(x.value for x in c.quantities))
    edit = _minimal_edit(q, c)
    # The slot rules share the one minimal edit computed above (a SequenceMatcher run: the costly part).
    derived = {"term_swap": _term_swap_of(edit), "qualifier_added": _qualifier_added_of(edit)}
    flags = {
        name: 0.0
        if name in passed
        else float((derived[name] if name in derived else ALL_RULES[name](q, c)) is not None)
        for name in _RULE_FEATURES
    }
    values = [
        cosine,
        (1.0 - cosine) ** 2,
        shared / union if union else 1.0,
        len(only_q) / q_keys if q_keys else 0.0,
        len(only_c) / c_keys if c_keys else 0.0,
        min(q_len, c_len) / max(q_len, c_len, 1),
        math.log1p(q_len + c_len),
        float(sum(abs(v) for v in quantity_diff.values())),
        float(bool(q.quantities or c.quantities)),
        float(abs(q.negations - c.negations)),
        float(bool(q_names) != bool(c_names)),
        float(len(edit[1]) + len(edit[2])) if edit else 0.0,
        *(flags[name] for name in _RULE_FEATURES),
        *(cosine * flags[name] for name in ("number_mismatch", "entity_swap", "term_swap", "qualifier_added")),
    ]
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class LearnedCheck:
    """A loaded model: probability that a cached answer is right for a query.

    Attributes:
        mean: Per-feature mean used for standardisation.
        scale: Per-feature standard deviation (never 0).
        coef: Logistic-regression coefficients on standardised features.
        intercept: The bias.
        operating_points: Named probability thresholds measured at training time (e.g. ``"default"``).
        path: Where the weights came from (for messages).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    operating_points: Mapping[str, float]
    path: Path

    def probability(self, query: str, candidate: str, cosine: float, passed: frozenset[str] = frozenset()) -> float:
        """P(the cached answer is right for the query), in (0, 1).

        Args:
            query: The incoming request's text.
            candidate: The cached entry's request text.
            cosine: Cosine similarity of their embeddings.
            passed: Rules already run on the pair without objecting (see :func:`features`).
        """
        x = (features(query, candidate, cosine, passed) - self.mean) / self.scale
        z = float(x @ self.coef) + self.intercept
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def threshold(self, name: str) -> float:
        """A named operating point.

        Raises:
            KeyError: No such operating point; the message lists the known ones.
        """
        try:
            return self.operating_points[name]
        except KeyError:
            known = ", ".join(sorted(self.operating_points))
            raise KeyError(f"{self.path}: no operating point {name!r} (known: {known})") from None


def _array(path: Path, doc: Mapping[str, object], key: str, length: int) -> np.ndarray:
    raw = doc.get(key)
    if not isinstance(raw, list) or len(raw) != length:
        raise LearnedCheckError(f"{path}: {key!r} must be a list of {length} numbers")
    try:
        values = np.asarray([float(v) for v in raw], dtype=np.float64)
    except (TypeError, ValueError):
        raise LearnedCheckError(f"{path}: {key!r} must hold numbers only") from None
    if not np.all(np.isfinite(values)):
        raise LearnedCheckError(f"{path}: {key!r} holds a value that is not finite")
    return values


def load_learned_check(path: str | Path = WEIGHTS_PATH) -> LearnedCheck:
    """Reads and validates a weights file.

    Args:
        path: The JSON file written by ``bench/train_learned_check.py``.

    Raises:
        LearnedCheckError: The file is missing, not JSON, for other features, or has a bad value; the
            message names the path.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise LearnedCheckError(f"{path}: cannot read the learned check's weights: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise LearnedCheckError(f"{path}: the learned check's weights are not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LearnedCheckError(f"{path}: expected a JSON object")
    names = doc.get("features")
    if names != list(FEATURES):
        raise LearnedCheckError(
            f"{path}: trained for other features ({names!r}); retrain with bench/train_learned_check.py"
        )
    n = len(FEATURES)
    mean, scale, coef = (_array(path, doc, key, n) for key in ("mean", "scale", "coef"))
    if np.any(scale <= 0):
        raise LearnedCheckError(f"{path}: 'scale' must be positive")
    intercept = doc.get("intercept")
    if isinstance(intercept, bool) or not isinstance(intercept, int | float) or not math.isfinite(intercept):
        raise LearnedCheckError(f"{path}: 'intercept' must be a finite number, got {intercept!r}")
    points = doc.get("operating_points")
    if not isinstance(points, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0.0 < v < 1.0 for v in points.values()
    ):
        raise LearnedCheckError(f"{path}: 'operating_points' must map names to probabilities in (0, 1)")
    return LearnedCheck(mean, scale, coef, float(intercept), dict(points), path)


def shipped() -> LearnedCheck:
    """The weights at :data:`WEIGHTS_PATH` (the package's own file), loaded once per process and path.

    Raises:
        LearnedCheckError: As :func:`load_learned_check`.
    """
    return _load_cached(str(WEIGHTS_PATH))


@lru_cache(maxsize=4)
def _load_cached(path: str) -> LearnedCheck:
    return load_learned_check(path)
