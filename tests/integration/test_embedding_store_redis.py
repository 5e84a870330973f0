"""The embedding cache's Redis tier on a single Redis, or on a 3-master Redis Cluster under
TOLLWAY_TEST_REDIS=cluster: a lookup is one MGET over many keys, which a cluster serves only when
they share a slot (the prefix is a hash tag there)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.redis_server import local_redis
from tollway.embedding.cache import CachedEmbedding
from tollway.embedding.store import EmbeddingStore
from tollway.mesh.redis import connect


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


async def test_many_entries_written_in_one_pipeline_come_back_in_one_mget(redis_url: str) -> None:
    client = connect(redis_url)
    store = EmbeddingStore(client, ttl_s=60)
    digests = [hashlib.sha256(f"text {i}".encode()).digest() for i in range(50)]
    vectors = [np.full(4, i, dtype=np.float32) for i in range(50)]
    entries = [(d, CachedEmbedding(v, i % 2 == 0)) for i, (d, v) in enumerate(zip(digests, vectors, strict=True))]
    await store.put_many("minilm", entries)
    got = await store.get_many("minilm", [*digests, hashlib.sha256(b"never stored").digest()], 4)
    assert got[-1] is None
    for i, entry in enumerate(got[:-1]):
        assert entry is not None and entry.truncated == (i % 2 == 0)
        assert np.array_equal(entry.vector, vectors[i])
    assert await client.ttl(store.key("minilm", digests[0])) > 0
    await client.aclose()
