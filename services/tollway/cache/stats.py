"""Per-replica counters, flushed to Redis in batches so a lookup costs no extra round trip."""

from __future__ import annotations

import enum
from collections import defaultdict


class Stat(enum.StrEnum):
    """A namespace's counters; the value is the field name in Redis (``{p}:stats:{ns}``).

    Sums over every replica; ``*_sum`` fields add up a score so a mean can be derived.
    """

    EXACT_HIT = "exact_hit"
    EXACT_MISS = "exact_miss"
    SEMANTIC_HIT = "semantic_hit"
    SEMANTIC_MISS = "semantic_miss"
    STALE_HIT = "stale_hit"
    CHECK_REJECTION = "check_rejection"
    SKIP = "skip"
    STORE = "store"
    EVICTION = "eviction"
    INVALIDATION = "invalidation"
    EXPIRY = "expiry"
    QUALITY_SAMPLES = "quality_samples"
    QUALITY_F1_SUM = "quality_f1_sum"
    QUALITY_COS_SAMPLES = "quality_cos_samples"
    QUALITY_COS_SUM = "quality_cos_sum"
    # Second-check rejections by the check that rejected (one per rule of tollway.cache.verifier, the
    # learned check, and the false-hit guard of a namespace with a declared rate); CHECK_REJECTION sums them.
    REJECTED_NUMBER_MISMATCH = "rejected:number_mismatch"
    REJECTED_UNIT_MISMATCH = "rejected:unit_mismatch"
    REJECTED_NEGATION_MISMATCH = "rejected:negation_mismatch"
    REJECTED_OPPOSITE_TERMS = "rejected:opposite_terms"
    REJECTED_ORDINAL_MISMATCH = "rejected:ordinal_mismatch"
    REJECTED_SUPERLATIVE_QUALIFIER = "rejected:superlative_qualifier"
    REJECTED_CLASS_MISMATCH = "rejected:class_mismatch"
    REJECTED_ROLE_SWAP = "rejected:role_swap"
    REJECTED_ENTITY_SWAP = "rejected:entity_swap"
    REJECTED_TERM_SWAP = "rejected:term_swap"
    REJECTED_QUALIFIER_ADDED = "rejected:qualifier_added"
    REJECTED_LEARNED_CHECK = "rejected:learned_check"
    REJECTED_FALSE_HIT_GUARD = "rejected:false_hit_guard"
    REJECTED_OTHER = "rejected:other"


REJECTION_PREFIX = "rejected:"


def rejection_stat(reason: str) -> Stat:
    """The counter for a rejection reason (a verifier rule name, ``learned_check``, ``false_hit_guard``);
    ``REJECTED_OTHER`` for a reason no counter names (a custom verifier's)."""
    try:
        return Stat(REJECTION_PREFIX + reason)
    except ValueError:
        return Stat.REJECTED_OTHER


Counters = dict[str, dict[Stat, float]]
"""Counter values by namespace, then by counter."""


class StatsBuffer:
    """Counter deltas and last-use times not yet written to Redis.

    The cache adds to it on every operation; a background task calls :meth:`take` and
    writes the result with one pipeline, and :meth:`give_back` returns it when Redis
    could not be reached, so counts are delayed, never lost while the process lives.
    """

    def __init__(self) -> None:
        self._counters: dict[str, dict[Stat, float]] = defaultdict(lambda: defaultdict(int))
        self._touches: dict[str, dict[int, int]] = defaultdict(dict)

    def add(self, namespace: str, stat: Stat, amount: float = 1) -> None:
        """Adds ``amount`` to a counter (ints stay ints, so Redis can HINCRBY them)."""
        self._counters[namespace][stat] += amount

    def touch(self, namespace: str, entry_id: int, now_ms: int) -> None:
        """Records that an entry was served (for LRU eviction)."""
        self._touches[namespace][entry_id] = now_ms

    def take(self) -> tuple[Counters, dict[str, dict[int, int]]]:
        """Removes and returns everything pending."""
        counters = {ns: dict(fields) for ns, fields in self._counters.items() if fields}
        touches = {ns: dict(used) for ns, used in self._touches.items() if used}
        self._counters.clear()
        self._touches.clear()
        return counters, touches

    def give_back(self, counters: Counters, touches: dict[str, dict[int, int]]) -> None:
        """Puts back what :meth:`take` returned after a failed flush."""
        for ns, fields in counters.items():
            for name, amount in fields.items():
                self._counters[ns][name] += amount
        for ns, used in touches.items():
            for entry_id, ms in used.items():
                self._touches[ns][entry_id] = max(ms, self._touches[ns].get(entry_id, 0))

    def pending(self, namespace: str) -> dict[Stat, float]:
        """Unflushed counter deltas of one namespace."""
        return dict(self._counters.get(namespace, {}))
