"""The in-process LRU and the entry format shared with the Redis tier."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tollway.embedding.cache import CachedEmbedding, EmbeddingLRU, decode_entry, encode_entry, text_digest


def entry(seed: int, truncated: bool = False) -> CachedEmbedding:
    return CachedEmbedding(vector=np.random.default_rng(seed).random(384, dtype=np.float32), truncated=truncated)


def test_digest_is_sha256_of_utf8() -> None:
    assert text_digest("héllo") == hashlib.sha256("héllo".encode()).digest()
    assert text_digest("a") != text_digest("a ")


@pytest.mark.parametrize("truncated", [False, True])
def test_entries_round_trip_through_bytes(truncated: bool) -> None:
    original = entry(1, truncated)
    raw = encode_entry(original)
    assert len(raw) == 384 * 4 + 1
    decoded = decode_entry(raw, 384)
    assert decoded is not None
    assert decoded.truncated is truncated
    assert decoded.vector.dtype == np.float32
    np.testing.assert_array_equal(decoded.vector, original.vector)
    assert not decoded.vector.flags.writeable


def test_values_of_another_shape_read_as_misses() -> None:
    raw = encode_entry(entry(1))
    assert decode_entry(raw, 768) is None
    assert decode_entry(raw[:-1], 384) is None
    assert decode_entry(raw[:-1] + b"\x07", 384) is None
    assert decode_entry(b"", 384) is None


def test_lru_evicts_the_least_recently_used() -> None:
    lru = EmbeddingLRU(max_entries=2)
    a, b, c = entry(1), entry(2), entry(3)
    lru.put("m", b"a", a)
    lru.put("m", b"b", b)
    assert lru.get("m", b"a") is not None  # a is now the most recently used
    lru.put("m", b"c", c)
    assert lru.get("m", b"b") is None
    assert lru.get("m", b"a") is not None
    assert lru.get("m", b"c") is not None
    assert len(lru) == 2


def test_lru_keys_include_the_model() -> None:
    lru = EmbeddingLRU(max_entries=10)
    lru.put("m1", b"x", entry(1))
    assert lru.get("m2", b"x") is None


def test_lru_protects_shared_vectors_from_callers() -> None:
    lru = EmbeddingLRU(max_entries=10)
    original = entry(1)
    lru.put("m", b"x", original)
    original.vector[0] = 42.0
    cached = lru.get("m", b"x")
    assert cached is not None
    assert cached.vector[0] != 42.0
    with pytest.raises(ValueError):
        cached.vector[0] = 1.0


def test_lru_of_size_zero_stores_nothing_and_negative_is_refused() -> None:
    lru = EmbeddingLRU(max_entries=0)
    lru.put("m", b"x", entry(1))
    assert lru.get("m", b"x") is None
    with pytest.raises(ValueError):
        EmbeddingLRU(max_entries=-1)
