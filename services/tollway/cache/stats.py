"""Per-replica counters, flushed to Redis in batches so a lookup costs no extra round trip."""

from __future__ import annotations

from collections import defaultdict


class StatsBuffer:
    """Counter deltas and last-use times not yet written to Redis.

    The cache adds to it on every operation; a background task calls :meth:`take` and
    writes the result with one pipeline, and :meth:`give_back` returns it when Redis
    could not be reached, so counts are delayed, never lost while the process lives.
    """

    def __init__(self) -> None:
        self._counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(int))
        self._touches: dict[str, dict[int, int]] = defaultdict(dict)

    def add(self, namespace: str, field: str, amount: float = 1) -> None:
        """Adds ``amount`` to a counter (ints stay ints, so Redis can HINCRBY them)."""
        self._counters[namespace][field] += amount

    def touch(self, namespace: str, entry_id: int, now_ms: int) -> None:
        """Records that an entry was served (for LRU eviction)."""
        self._touches[namespace][entry_id] = now_ms

    def take(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[int, int]]]:
        """Removes and returns everything pending."""
        counters = {ns: dict(fields) for ns, fields in self._counters.items() if fields}
        touches = {ns: dict(used) for ns, used in self._touches.items() if used}
        self._counters.clear()
        self._touches.clear()
        return counters, touches

    def give_back(self, counters: dict[str, dict[str, float]], touches: dict[str, dict[int, int]]) -> None:
        """Puts back what :meth:`take` returned after a failed flush."""
        for ns, fields in counters.items():
            for name, amount in fields.items():
                self._counters[ns][name] += amount
        for ns, used in touches.items():
            for entry_id, ms in used.items():
                self._touches[ns][entry_id] = max(ms, self._touches[ns].get(entry_id, 0))

    def pending(self, namespace: str) -> dict[str, float]:
        """Unflushed counter deltas of one namespace."""
        return dict(self._counters.get(namespace, {}))
