"""The in-process tier of the embedding cache, and the entry format both tiers share.

Entries are addressed by (model id, sha256 of the text's UTF-8 bytes): a vector is only ever reused for the
model that made it. The Redis tier (:mod:`tollway.embedding.store`) stores the same entries as bytes, encoded
by :func:`encode_entry`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__all__ = ["CachedEmbedding", "EmbeddingLRU", "decode_entry", "encode_entry", "text_digest"]

# Little-endian float32 whatever the host, so replicas on any machine read each other's entries.
_FLOAT32_LE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class CachedEmbedding:
    """One cached result.

    Attributes:
        vector: float32 (dimension,), read-only: it is shared by every caller that hits it.
        truncated: Whether the text was cut at the model's max_tokens.
    """

    vector: np.ndarray
    truncated: bool


def text_digest(text: str) -> bytes:
    """Returns the 32-byte sha256 of the text's UTF-8 encoding: the text's part of a cache key."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def encode_entry(entry: CachedEmbedding) -> bytes:
    """Serialises an entry: the vector as little-endian float32 bytes, then one byte for the truncated flag."""
    return entry.vector.astype(_FLOAT32_LE, copy=False).tobytes() + (b"\x01" if entry.truncated else b"\x00")


def decode_entry(raw: bytes, dimension: int) -> CachedEmbedding | None:
    """Parses :func:`encode_entry` output.

    Returns:
        The entry, or None when ``raw`` does not hold a vector of ``dimension`` floats plus a flag (a value
        written by something else, or for another dimension): the caller treats that as a miss.
    """
    if len(raw) != dimension * 4 + 1 or raw[-1] not in (0, 1):
        return None
    vector = np.frombuffer(raw, dtype=_FLOAT32_LE, count=dimension).astype(np.float32)
    vector.flags.writeable = False
    return CachedEmbedding(vector=vector, truncated=raw[-1] == 1)


class EmbeddingLRU:
    """A bounded least-recently-used map of (model id, text digest) to entries.

    Not thread-safe: use it from the event loop only. ~1.7 KB per 384-dimensional entry.
    """

    def __init__(self, max_entries: int) -> None:
        """Creates an empty cache.

        Args:
            max_entries: Entries kept before the least recently used is evicted; 0 turns the cache off.

        Raises:
            ValueError: max_entries is negative.
        """
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes], CachedEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_id: str, digest: bytes) -> CachedEmbedding | None:
        """Returns the entry and marks it most recently used, or None."""
        key = (model_id, digest)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, model_id: str, digest: bytes, entry: CachedEmbedding) -> None:
        """Stores an entry as the most recently used, evicting the least recently used beyond the bound."""
        if self.max_entries == 0:
            return
        if entry.vector.flags.writeable:
            entry = CachedEmbedding(vector=_read_only(entry.vector), truncated=entry.truncated)
        key = (model_id, digest)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drops every entry."""
        self._entries.clear()


def _read_only(vector: np.ndarray) -> np.ndarray:
    copy = np.array(vector, dtype=np.float32, copy=True)
    copy.flags.writeable = False
    return copy
