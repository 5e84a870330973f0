"""The Redis tier of the embedding cache; the only module of the service that talks to Redis.

Key: ``<prefix>:<model id>:<sha256 hex of the text>``. Value: the vector as little-endian float32 bytes plus a
truncated-flag byte (:func:`tollway.embedding.cache.encode_entry`). Every key expires after the TTL, so the
cache cannot grow without bound; an embedding never goes stale otherwise, as a model id names fixed weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollway.embedding.cache import CachedEmbedding, decode_entry, encode_entry
from tollway.mesh.redis import hash_tagged

__all__ = ["EmbeddingStore", "StoreUnavailableError"]


class StoreUnavailableError(RuntimeError):
    """Redis did not answer or failed; the cache tier is skipped, the embedding still computed."""


class EmbeddingStore:
    """Embeddings in Redis with a TTL, read and written in bulk (one round trip per call)."""

    def __init__(self, client: aioredis.Redis, *, ttl_s: int, prefix: str = "tollway:embedding") -> None:
        """Wraps a client made by :func:`tollway.mesh.redis.connect` (bytes responses).

        Args:
            client: The Redis client; not owned (the caller closes it).
            ttl_s: Seconds an entry lives after it was written; at least 1.
            prefix: Key prefix, so that several deployments can share one Redis.

        Raises:
            ValueError: ttl_s < 1.
        """
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, got {ttl_s}")
        self._client = client
        self._ttl_s = ttl_s
        # On Redis Cluster one slot for every entry: a lookup is one MGET of many keys.
        self._prefix = hash_tagged(client, prefix)

    def key(self, model_id: str, digest: bytes) -> str:
        """Returns the Redis key of one entry."""
        return f"{self._prefix}:{model_id}:{digest.hex()}"

    async def ping(self) -> None:
        """Checks that Redis answers.

        Raises:
            StoreUnavailableError: It does not.
        """
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"Redis did not answer PING: {exc}") from exc

    async def get_many(self, model_id: str, digests: Sequence[bytes], dimension: int) -> list[CachedEmbedding | None]:
        """Fetches entries with one MGET.

        Returns:
            One entry per digest, in order; None for a miss or an unreadable value.

        Raises:
            StoreUnavailableError: Redis failed.
        """
        if not digests:
            return []
        try:
            raws = await self._client.mget([self.key(model_id, d) for d in digests])
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"Redis MGET failed: {exc}") from exc
        return [None if raw is None else decode_entry(raw, dimension) for raw in raws]

    async def put_many(self, model_id: str, entries: Sequence[tuple[bytes, CachedEmbedding]]) -> None:
        """Writes entries with their TTL in one pipelined round trip (not a transaction: each SET stands alone).

        Raises:
            StoreUnavailableError: Redis failed.
        """
        if not entries:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for digest, entry in entries:
                    pipe.set(self.key(model_id, digest), encode_entry(entry), ex=self._ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"Redis SET pipeline failed: {exc}") from exc
