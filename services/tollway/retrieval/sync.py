"""Keeps this replica's indexes equal to the chunks in Redis.

At start: load the newest snapshot when it belongs to the same Redis data set (same epoch)
and every index event after it is still in the stream, else rebuild every collection from
its chunks in Redis; then apply the stream's tail. While serving: follow the index event
stream (``XREAD BLOCK``) and apply every change, this replica's and the others', so all
replicas converge on the same indexes. Applying is idempotent (adding a present chunk and
dropping an absent one are no-ops), which is what makes "snapshot + tail" and
"scan + tail" correct even when chunks change during the scan. A follower that fell
behind the stream's trimming rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tollway.mesh.background import follow_stream
from tollway.mesh.frozen import frozen
from tollway.retrieval import metrics
from tollway.retrieval.index import CollectionIndex, IndexParams
from tollway.retrieval.store import EVENTS_START, UNREACHABLE, IndexEvent, RetrievalStore
from tollway.retrieval.types import Collection

log = logging.getLogger("tollway.retrieval.sync")

_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
# The saved BM25 terms' spelling: 2 since word pairs are joined by a space ("a b"), which
# keyword.is_bigram relies on; a snapshot with another spelling is rebuilt from Redis.
TERMS_FORMAT = 2


@dataclasses.dataclass
class Entry:
    """One collection's index on this replica, with the uid and settings it was built for."""

    collection: Collection
    uid: str
    index: CollectionIndex


@frozen
class RebuildReport:
    """How the indexes were built at start."""

    source: str  # "snapshot" or "redis"
    chunk_count: int
    seconds: float
    tail_events: int


class IndexSync:
    """This replica's indexes and the machinery that keeps them current."""

    def __init__(
        self,
        store: RetrievalStore,
        params: IndexParams,
        *,
        snapshot_dir: str | os.PathLike[str] | None = None,
        follow_block_ms: int = 1000,
        rebuild_threads: int = 2,
    ) -> None:
        self.store = store
        self.params = params
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.follow_block_ms = follow_block_ms
        self.rebuild_threads = rebuild_threads
        self.entries: dict[str, Entry] = {}
        self.last_id = EVENTS_START
        self.last_seq = 0
        self.epoch = ""
        self.applied_since_snapshot = 0
        self.report: RebuildReport | None = None
        self._mutate = asyncio.Lock()
        self._keyword_wakeup = asyncio.Event()

    def get(self, collection_id: str, uid: str) -> CollectionIndex | None:
        """The index of a collection when it was built for this uid."""
        entry = self.entries.get(collection_id)
        return entry.index if entry is not None and entry.uid == uid else None

    def ensure(self, collection: Collection, uid: str, capacity: int = 0) -> CollectionIndex:
        """The collection's index, created empty when missing or built for an older uid."""
        entry = self.entries.get(collection.collection_id)
        if entry is None or entry.uid != uid:
            index = CollectionIndex(collection.dimension, collection.fields, self.params, capacity,
                                    keyword_on_parent=collection.chunking.keyword_on_parent,
                                    ensemble=collection.ensemble)  # fmt: skip
            entry = self.entries[collection.collection_id] = Entry(collection, uid, index)
        return entry.index

    # --- start --------------------------------------------------------------------------

    async def start(self) -> RebuildReport:
        """Builds the indexes (snapshot + tail, or a full rebuild), then applies the tail."""
        started = time.perf_counter()
        self.epoch = await self.store.epoch()
        source = "snapshot" if await self._load_snapshot() else "redis"
        if source == "redis":
            await self.rebuild()
        tail = await self.catch_up()
        total = sum(len(e.index) for e in self.entries.values())
        self.report = RebuildReport(source, total, time.perf_counter() - started, tail)
        log.info("indexes ready", extra=dataclasses.asdict(self.report))
        self._export()
        return self.report

    async def rebuild(self) -> None:
        """Replaces every index with one built from the chunks in Redis."""
        last_id, last_seq = await self.store.stream_head()  # before the scan: the tail covers the rest
        entries: dict[str, Entry] = {}
        for cid in await self.store.collection_ids():
            stored = await self.store.get_collection(cid)
            if stored is None:
                continue
            entries[cid] = await self._build(stored.collection, stored.uid)
        async with self._mutate:
            self.entries = entries
            self.last_id, self.last_seq = last_id, last_seq
        self._export()

    async def _build(self, col: Collection, uid: str) -> Entry:
        """One collection's index, built from its chunks in Redis (vectors of its active model
        and of its ensemble models)."""
        index = CollectionIndex(col.dimension, col.fields, self.params, int(col.chunk_count * 1.1),
                                keyword_on_parent=col.chunking.keyword_on_parent, ensemble=col.ensemble)  # fmt: skip
        async for batch in self.store.scan_chunks(uid, col.dimension, col.embedding_model, ensemble=col.ensemble):
            await asyncio.to_thread(index.add, batch, None, self.rebuild_threads)
        rows, freed = index.keyword_snapshot()
        index.swap_keyword(await asyncio.to_thread(index.build_keyword, rows), freed)
        return Entry(col, uid, index)

    async def catch_up(self) -> int:
        """Applies the events after ``last_id`` up to the stream's newest one at the time of the
        call (the follower applies the rest: under steady ingestion "until none is left" might
        never come), then brings BM25 up to date. Returns how many events were applied."""
        _, head_seq = await self.store.stream_head()
        applied = 0
        while self.last_seq < head_seq:
            events = await self.store.read_events(self.last_id, count=2000)
            if not events:
                break
            await self._apply_or_rebuild(events)
            applied += len(events)
        await self.refresh_keywords()
        return applied

    async def follow(self, stop: asyncio.Event) -> None:
        """Applies the index event stream until ``stop`` is set; survives Redis outages.

        Returns within about ``follow_block_ms`` of ``stop`` being set.
        """

        async def read_and_apply() -> None:
            events = await self.store.read_events(self.last_id, count=1024, block_ms=self.follow_block_ms)
            await self._apply_or_rebuild(events)

        await follow_stream(read_and_apply, stop, what="the index event stream", unreachable=UNREACHABLE, logger=log)

    async def _apply_or_rebuild(self, events: Sequence[IndexEvent]) -> None:
        if not events:
            return
        if events[0].seq != self.last_seq + 1:
            log.warning(
                "fell behind the index event stream's trimming; rebuilding",
                extra={"expected_seq": self.last_seq + 1, "got_seq": events[0].seq},
            )
            await self.rebuild()
            return
        await self.apply(events)

    async def apply(self, events: Sequence[IndexEvent]) -> None:
        """Applies chunk changes and collection deletions (idempotent) and wakes the BM25
        builder for the indexes that changed."""
        touched: set[str] = set()
        async with self._mutate:
            for e in events:
                if e.op == "x":
                    entry = self.entries.get(e.collection_id)
                    if entry is not None and entry.uid == e.uid:
                        del self.entries[e.collection_id]
                    continue
                if e.op == "m":
                    # The collection switched embedding models: build the new model's index from
                    # Redis, then swap it in whole (searches use the old one until then).
                    stored = await self.store.get_collection(e.collection_id, counts=True)
                    if stored is not None and stored.uid == e.uid:
                        self.entries[e.collection_id] = await self._build(stored.collection, stored.uid)
                        log.info(
                            "embedding model switched",
                            extra={"collection": e.collection_id, "model": stored.collection.embedding_model},
                        )
                    continue
                index = self.get(e.collection_id, e.uid)
                if index is None:
                    stored = await self.store.get_collection(e.collection_id, counts=False)
                    if stored is None or stored.uid != e.uid:
                        continue  # deleted since: a later "x" event follows, or already did
                    index = self.ensure(stored.collection, stored.uid)
                col = self.entries[e.collection_id].collection
                index.remove(e.dropped)
                wanted = [cid for cid in e.added if cid not in index]
                index.add(await self.store.chunks(e.uid, wanted, index.dim, col.embedding_model, col.ensemble))
                touched.add(e.collection_id)
            self.last_id, self.last_seq = events[-1].stream_id, events[-1].seq
            self.applied_since_snapshot += len(events)
        if touched:
            self._keyword_wakeup.set()
        metrics.INDEX_EVENTS.inc(len(events))
        self._export()

    async def refresh_keywords(self) -> int:
        """Rebuilds BM25 of every index that changed since its last build. Returns how many.

        A build reads a copy of the token lists and runs in a worker thread; vector search and
        the event follower go on meanwhile (chunks added during a build have no keyword score
        until the next one).
        """
        built = 0
        for entry in list(self.entries.values()):
            index = entry.index
            if not index.keyword_dirty:
                continue
            rows, freed = index.keyword_snapshot()
            model = await asyncio.to_thread(index.build_keyword, rows)
            if self.entries.get(entry.collection.collection_id) is entry:
                index.swap_keyword(model, freed)
                built += 1
        return built

    async def follow_keywords(self, stop: asyncio.Event) -> None:
        """Rebuilds BM25 whenever applied events changed an index, until ``stop`` is set.

        Apart from the event follower, so a build of a large collection (seconds at 100k
        chunks) never holds back the vector index or other collections.
        """
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._keyword_wakeup.wait(), 1.0)
            self._keyword_wakeup.clear()
            try:
                await self.refresh_keywords()
            except Exception:
                log.exception("rebuilding BM25 failed; retrying")

    def _export(self) -> None:
        for cid, entry in self.entries.items():
            metrics.INDEXED_CHUNKS.labels(cid).set(len(entry.index))

    # --- snapshots ----------------------------------------------------------------------

    async def snapshot(self) -> Path | None:
        """Writes every index to ``snapshot_dir`` (when set); returns the snapshot's path.

        Searches continue meanwhile; stream events wait until the write is done. The
        previous snapshot is removed only after the new one is complete.
        """
        if self.snapshot_dir is None:
            return None
        async with self._mutate:
            manifest = {
                "epoch": self.epoch,
                "last_id": self.last_id,
                "last_seq": self.last_seq,
                "prefix": self.store.prefix,
                "m": self.params.m,
                "bigrams": self.params.bigrams,
                "terms": TERMS_FORMAT,
                "collections": [
                    {
                        "id": cid,
                        "uid": e.uid,
                        "model": e.collection.embedding_model,
                        "dim": e.collection.dimension,
                        "ensemble": dict(e.collection.ensemble),
                        "dir": f"c{i}",
                    }
                    for i, (cid, e) in enumerate(sorted(self.entries.items()))
                ],
            }
            final = await asyncio.to_thread(self._write_snapshot, self.snapshot_dir, manifest)
            self.applied_since_snapshot = 0
        log.info("index snapshot written", extra={"path": str(final), "last_id": manifest["last_id"]})
        return final

    def _write_snapshot(self, directory: Path, manifest: dict[str, Any]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"snap-{time.time_ns()}"
        tmp = directory / f"{name}.tmp"
        tmp.mkdir()
        try:
            for c in manifest["collections"]:
                sub = tmp / c["dir"]
                sub.mkdir()
                self.entries[c["id"]].index.save(sub)
            (tmp / _MANIFEST).write_text(json.dumps(manifest))
            final = directory / name
            tmp.rename(final)
            current = directory / f"{_CURRENT}.tmp"
            current.write_text(name)
            os.replace(current, directory / _CURRENT)  # the switch to the new snapshot is atomic
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in directory.glob("snap-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    async def _load_snapshot(self) -> bool:
        if self.snapshot_dir is None:
            return False
        try:
            snapshot = self.snapshot_dir / (self.snapshot_dir / _CURRENT).read_text().strip()
            manifest = json.loads((snapshot / _MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        # Saved BM25 tokens depend on the bigram setting: a snapshot made with another one is rebuilt.
        expected = {
            "epoch": self.epoch,
            "prefix": self.store.prefix,
            "m": self.params.m,
            "bigrams": self.params.bigrams,
            "terms": TERMS_FORMAT,
        }
        if any(manifest.get(k) != v for k, v in expected.items()):
            log.info("snapshot is for another data set or index shape; rebuilding", extra={"path": str(snapshot)})
            return False
        following = await self.store.first_event_after(manifest["last_id"])
        if following is not None and following.seq != manifest["last_seq"] + 1:
            log.info("index events after the snapshot were trimmed from the stream; rebuilding")
            return False
        entries: dict[str, Entry] = {}
        try:
            for c in manifest["collections"]:
                stored = await self.store.get_collection(c["id"], counts=False)
                if stored is None or stored.uid != c["uid"]:
                    continue  # deleted since; its "x" event is in the tail anyway
                col = stored.collection
                if col.embedding_model != c.get("model") or dict(col.ensemble) != c.get("ensemble", {}):
                    # Switched models since: the snapshot's vectors are the old model's.
                    entries[c["id"]] = await self._build(col, stored.uid)
                    continue
                load = functools.partial(CollectionIndex.load, keyword_on_parent=col.chunking.keyword_on_parent,
                                         ensemble=col.ensemble)  # fmt: skip
                index = await asyncio.to_thread(load, snapshot / c["dir"], col.dimension, col.fields, self.params)
                entries[c["id"]] = Entry(col, stored.uid, index)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            log.warning("snapshot unreadable; rebuilding", extra={"error": str(exc)})
            return False
        self.entries = entries
        self.last_id, self.last_seq = manifest["last_id"], manifest["last_seq"]
        return True

    async def snapshot_if_changed(self) -> None:
        """Writes a snapshot when the indexes changed since the last one."""
        if self.applied_since_snapshot:
            await self.snapshot()
