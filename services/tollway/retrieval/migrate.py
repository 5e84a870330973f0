"""Embedding-model migrations: back-fill a second model's vectors, then switch in one step.

A migration starts by naming the target model on the collection (MigrateCollection). From
then on the ingestion workers embed every new chunk with both models (the commit refuses a
chunk without both), and one replica at a time (a lock in Redis) back-fills the target
model's vector of every chunk that lacks it, in batches through the embedding service,
updating the progress counter. A complete pass that finds nothing left means every chunk
has both vectors, since nothing committed after the start can lack one: the switch is then
one Redis script that makes the target the active model and announces it on the index
stream; every replica builds the new vector index from Redis and swaps it in whole
(searches use the old index until then), and the old model's vectors are deleted.
"""

from __future__ import annotations

import logging
import uuid

from tollway.retrieval.ingest import Embedder
from tollway.retrieval.store import RetrievalStore

log = logging.getLogger("tollway.retrieval.migrate")

_LOCK_TTL_MS = 60_000


class Migrator:
    """Runs the back-fill and the switch of every collection that is migrating."""

    def __init__(self, store: RetrievalStore, embedder: Embedder, *, batch: int = 32) -> None:
        self.store = store
        self.embedder = embedder
        self.batch = batch
        self.owner = uuid.uuid4().hex

    async def step(self) -> list[str]:
        """Back-fills (and switches when complete) every migrating collection this replica can lock.

        Returns:
            The collections switched to their new model by this call.
        """
        switched = []
        for cid in await self.store.collection_ids():
            stored = await self.store.get_collection(cid, counts=False)
            if stored is None or not stored.collection.next_model:
                continue
            lock = f"migrate:{cid}"
            if not await self.store.lock(lock, self.owner, _LOCK_TTL_MS):
                continue  # another replica is on it
            try:
                if await self._backfill(
                    cid, stored.uid, stored.collection.next_model, stored.collection.next_dimension
                ):
                    old = await self.store.switch_model(cid, stored.uid, stored.collection.next_model)
                    if old is not None:
                        log.info("embedding model switched", extra={"collection": cid, "from": old,
                                                                     "to": stored.collection.next_model})  # fmt: skip
                        await self._drop(stored.uid, old)
                        switched.append(cid)
            finally:
                await self.store.unlock(lock, self.owner)
        return switched

    async def _backfill(self, cid: str, uid: str, model: str, dim: int) -> bool:
        """One pass over the collection's chunks. True when none lacked a vector of ``model``
        at the time it was read (then the switch is safe)."""
        clean = True
        async for ids in self.store.scan_chunk_ids(uid, 512):
            missing = await self.store.missing_vectors(uid, ids, model)
            for start in range(0, len(missing), self.batch):
                part = missing[start : start + self.batch]
                vectors = await self.embedder.embed([text for _, text in part], model)
                if vectors.shape != (len(part), dim):
                    raise ValueError(f"model {model!r} returned vectors of shape {vectors.shape}, expected dim {dim}")
                filled = await self.store.fill_vectors(
                    cid, uid, model, {c: v for (c, _), v in zip(part, vectors, strict=True)}
                )
                if filled < 0:
                    return False  # the migration ended meanwhile (collection deleted or re-created)
                await self.store.lock(f"migrate:{cid}", self.owner, _LOCK_TTL_MS)
            clean = clean and not missing
        return clean

    async def _drop(self, uid: str, model: str) -> None:
        async for ids in self.store.scan_chunk_ids(uid, 512):
            await self.store.drop_vectors(uid, ids, model)
