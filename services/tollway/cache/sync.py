"""Keeps this replica's tier-2 index equal to the entries in Redis.

At start: load the newest on-disk snapshot when it belongs to the same Redis data set
(same epoch) and every event after it is still in the stream, else rebuild from the
entries; then apply the stream's tail. While serving: follow the stream (``XREAD
BLOCK``) and apply every add and delete, including other replicas'. Applying is
idempotent (adds of present ids and deletes of absent ids are no-ops), which is what
makes "snapshot + tail" and "scan + tail" correct even when entries change during the
scan. A follower that fell behind the stream's trimming rebuilds.

The index is a cache of Redis, never the truth: a lookup re-reads each candidate from
Redis before serving it, so an index that lags (or misses a delete) costs a hit, not a
wrong answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tollway.cache import metrics
from tollway.cache.index import IndexParams, IndexRecord, IndexSet
from tollway.cache.store import EVENTS_START, UNREACHABLE, CacheStore, Event
from tollway.mesh.background import follow_stream
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.cache.sync")

_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_LOOP_CHUNK = 256  # adds applied between yields to the event loop


@frozen
class RebuildReport:
    """How the index was built at start."""

    source: str  # "snapshot" or "redis"
    entry_count: int
    seconds: float
    tail_events: int


class IndexSync:
    """This replica's index set and the machinery that keeps it current."""

    def __init__(
        self,
        store: CacheStore,
        params: IndexParams,
        *,
        snapshot_dir: str | os.PathLike[str] | None = None,
        rebuild_threads: int = 2,
        follow_block_ms: int = 1000,
    ) -> None:
        self.store = store
        self.params = params
        self.indexes = IndexSet(params)
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.rebuild_threads = rebuild_threads
        self.follow_block_ms = follow_block_ms
        self.last_id = EVENTS_START
        self.last_seq = 0
        self.epoch = ""
        self.applied_since_snapshot = 0
        self.report: RebuildReport | None = None
        # Held while the index is written to disk; mutations wait (or are left to the stream).
        self._mutate = asyncio.Lock()

    # --- start --------------------------------------------------------------------

    async def start(self) -> RebuildReport:
        """Builds the index (snapshot + tail, or a full rebuild), then applies the tail."""
        started = time.perf_counter()
        self.epoch = await self.store.epoch()
        source = "redis"
        if not await self._load_snapshot():
            await self.rebuild()
        else:
            source = "snapshot"
        tail = await self.catch_up()
        total = sum(self.indexes.count(ns) for ns in self.indexes.namespaces())
        report = self.report = RebuildReport(source, total, time.perf_counter() - started, tail)
        log.info("index ready", extra=dataclasses.asdict(report))
        self._export_counts()
        return report

    async def rebuild(self) -> None:
        """Replaces the index with one built from every entry in Redis."""
        last_id, last_seq = await self.store.stream_head()  # before the scan: the tail covers the rest
        indexes = IndexSet(self.params)
        counts = await self.store.counts(await self.store.namespaces())
        for ns, count in counts.items():
            indexes.ensure(ns, capacity=max(self.params.initial_capacity, int(count * 1.1)))
        async for batch in self.store.scan_index_records(self.params.dim):
            by_ns: dict[str, list[IndexRecord]] = defaultdict(list)
            for ns, record in batch:
                by_ns[ns].append(record)
            for ns, records in by_ns.items():
                index = indexes.ensure(ns)
                await asyncio.to_thread(index.add, records, self.rebuild_threads)
        async with self._mutate:
            self.indexes = indexes
            self.last_id, self.last_seq = last_id, last_seq
        self._export_counts()

    async def catch_up(self) -> int:
        """Applies every event after ``last_id`` without waiting. Returns how many."""
        applied = 0
        while True:
            events = await self.store.read_events(self.last_id, count=2000)
            if not events:
                return applied
            await self._apply_or_rebuild(events)
            applied += len(events)

    async def follow(self, stop: asyncio.Event) -> None:
        """Applies the event stream until ``stop`` is set; survives Redis outages.

        Returns within about ``follow_block_ms`` of ``stop`` being set. (It is stopped this
        way rather than cancelled, so that no blocked XREAD is ever cancelled midway.)
        """

        async def read_and_apply() -> None:
            events = await self.store.read_events(self.last_id, count=512, block_ms=self.follow_block_ms)
            await self._apply_or_rebuild(events)

        await follow_stream(read_and_apply, stop, what="the event stream", unreachable=UNREACHABLE, logger=log)

    async def _apply_or_rebuild(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if events[0].seq != self.last_seq + 1:
            # Events between the last applied one and this one were trimmed away.
            log.warning(
                "fell behind the event stream's trimming; rebuilding the index",
                extra={"expected_seq": self.last_seq + 1, "got_seq": events[0].seq},
            )
            await self.rebuild()
            return
        await self.apply(events)

    async def apply(self, events: Sequence[Event]) -> None:
        """Applies adds and deletes from the stream (idempotent)."""
        if not events:
            return
        wanted = [e.entry_id for e in events if e.op == "a" and e.entry_id not in (self.indexes.get(e.namespace) or ())]
        # An entry deleted since its add event is simply not found here: nothing to add.
        records = await self.store.index_records(wanted, self.params.dim)
        async with self._mutate:
            by_ns: dict[str, list[IndexRecord]] = defaultdict(list)
            for ns, record in records:
                by_ns[ns].append(record)
            for ns, batch in by_ns.items():
                index = self.indexes.ensure(ns)
                for start in range(0, len(batch), _LOOP_CHUNK):
                    index.add(batch[start : start + _LOOP_CHUNK])
                    await asyncio.sleep(0)
            removed: dict[str, list[int]] = defaultdict(list)
            for e in events:
                if e.op == "d":
                    removed[e.namespace].append(e.entry_id)
            for ns, ids in removed.items():
                self.indexes.remove(ns, ids)
            self.last_id, self.last_seq = events[-1].stream_id, events[-1].seq
            self.applied_since_snapshot += len(events)
        metrics.EVENTS_APPLIED.inc(len(events))
        self._export_counts(set(by_ns) | set(removed))

    # --- local shortcuts -----------------------------------------------------------

    def add_local(self, namespace: str, record: IndexRecord) -> None:
        """Indexes an entry this replica just stored, so its next lookup can hit at once.

        Skipped while a snapshot is being written; the stream brings the add shortly after.
        """
        if self._mutate.locked():
            return
        self.indexes.ensure(namespace).add([record])
        self._export_counts({namespace})

    def remove_local(self, removed: Iterable[tuple[int, str]]) -> None:
        """Drops entries this replica just deleted (the stream would drop them a little later)."""
        if self._mutate.locked():
            return
        by_ns: dict[str, list[int]] = defaultdict(list)
        for entry_id, ns in removed:
            by_ns[ns].append(entry_id)
        for ns, ids in by_ns.items():
            self.indexes.remove(ns, ids)
        self._export_counts(set(by_ns))

    def _export_counts(self, namespaces: Iterable[str] | None = None) -> None:
        for ns in self.indexes.namespaces() if namespaces is None else namespaces:
            metrics.INDEXED.labels(ns).set(self.indexes.count(ns))

    # --- snapshots -----------------------------------------------------------------

    async def snapshot(self) -> Path | None:
        """Writes the index to ``snapshot_dir`` (when set) and returns the snapshot's path.

        Lookups continue meanwhile; stream events wait until the write is done. The
        previous snapshot is removed only after the new one is complete.
        """
        if self.snapshot_dir is None:
            return None
        async with self._mutate:
            manifest = {
                "epoch": self.epoch,
                "last_id": self.last_id,
                "last_seq": self.last_seq,
                "dim": self.params.dim,
                "m": self.params.m,
                "prefix": self.store.prefix,
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
            self.indexes.save(tmp)
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

    @staticmethod
    def _read_manifest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
        try:
            snapshot = directory / (directory / _CURRENT).read_text().strip()
            return snapshot, json.loads((snapshot / _MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    async def _load_snapshot(self) -> bool:
        if self.snapshot_dir is None:
            return False
        found = await asyncio.to_thread(self._read_manifest, self.snapshot_dir)
        if found is None:
            return False
        directory, manifest = found
        expected = {"epoch": self.epoch, "dim": self.params.dim, "m": self.params.m, "prefix": self.store.prefix}
        if any(manifest.get(k) != v for k, v in expected.items()):
            log.info("snapshot is for another data set or index shape; rebuilding", extra={"path": str(directory)})
            return False
        following = await self.store.first_event_after(manifest["last_id"])
        if following is not None and following.seq != manifest["last_seq"] + 1:
            log.info("events after the snapshot were trimmed from the stream; rebuilding")
            return False
        try:
            indexes = await asyncio.to_thread(IndexSet.load, directory, self.params)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            log.warning("snapshot unreadable; rebuilding", extra={"error": str(exc)})
            return False
        self.indexes = indexes
        self.last_id, self.last_seq = manifest["last_id"], manifest["last_seq"]
        return True

    async def snapshot_if_changed(self) -> None:
        """Writes a snapshot when the index changed since the last one."""
        if self.applied_since_snapshot:
            await self.snapshot()
