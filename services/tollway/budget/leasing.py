"""Admission from leases: takes blocks, records holds in batches, gives blocks back.

See :mod:`tollway.budget.leases` for why and for the bookkeeping. Everything here that
touches Redis goes through :class:`tollway.budget.store.BudgetStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tollway.budget.leases import AMOUNT_UNITS, UNITS, Amounts, Block, Child, LeaseBook, ShapeKey
from tollway.budget.store import LEASE_MARK, BudgetStore, Hold, Op, ScriptOutcome

log = logging.getLogger("tollway.budget")

# Outcomes after which a reservation is finished (its hold no longer counts in the block).
_FINISHED = frozenset({"ok", "dup", "conflict", "released", "committed", "missing"})
# Settlements waiting that are written at once rather than at the end of the delay.
_FLUSH_AT = 64


@dataclasses.dataclass
class _Write:
    """A commit or release of a hold this replica admitted, waiting for the next batch."""

    block: Block
    child: Child
    op: Callable[[int], Op]  # the store operation, for the attempt it settles
    commit: bool
    future: asyncio.Future[ScriptOutcome] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Leasing:
    """One replica's leases.

    Args:
        store: The Redis layout.
        requests: A block is this many estimates of the request that takes it.
        spread: A block takes at most 1/spread of the room left below a counter's lowest share.
        idle_ms: A block idle this long goes back.
        max_age_ms: A block older than this stops admitting and goes back.
        record_delay_s: How long a hold may wait to be recorded with its commit before it is
            recorded alone (batched with the others of that moment).
        lease_ttl_ms: How long past its end a lease outlives a holder that died (then a sweeper
            gives its block back).
        clock: Now, in Unix ms.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        requests: int,
        spread: int,
        idle_ms: int,
        max_age_ms: int,
        record_delay_s: float,
        lease_ttl_ms: int,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.requests = requests
        self.spread = spread
        self.record_delay_s = record_delay_s
        self.lease_ttl_ms = lease_ttl_ms
        self.clock = clock
        self.book = LeaseBook(idle_ms=idle_ms, max_age_ms=max_age_ms)
        self._taking: dict[ShapeKey, asyncio.Future[None]] = {}
        self._giving: dict[str, asyncio.Future[bool]] = {}  # give-backs in flight, by block id
        self._settling: dict[int, _Write] = {}  # by id(child): a second settlement of a hold finds the first
        # Holds not written yet, by id(child), with when they were admitted (the loop's clock).
        self._unrecorded: dict[int, tuple[Block, Child, float]] = {}
        self._record_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- admission ------------------------------------------------------------------------

    async def admit(
        self,
        key: ShapeKey,
        reservation_id: str,
        amounts: Amounts,
        *,
        now_ms: int,
        expires_ms: int,
        granted_out: int,
        asked: Mapping[str, str],
        model_meta: str,
        lowest_counters: Callable[[], str],
        lease_meta: Callable[[], str],
    ) -> Block | None:
        """Admits a hold from the shape's block, taking a new block when it has no room.

        Returns the block it was admitted from, or None: no block could be had (the room left
        is too small to lease), and the caller reserves in Redis as usual.

        Args:
            asked, model_meta: The hold's metadata (:class:`tollway.budget.store.Hold`).
            lowest_counters: The shape's counters, allowed for the lowest priority, packed
                (asked only when a block is taken).
            lease_meta: The lease's metadata, packed (asked only when a block is taken).
        """
        child = Child(reservation_id, amounts, expires_ms, None)
        block = self.book.active.get(key)
        if block is not None and self.book.admit(block, child, now_ms):
            return self._admitted(block, child, granted_out, asked, model_meta)
        if self.book.short_until.get(key, 0) > now_ms:
            return None
        taking = self._taking.get(key)
        if taking is not None:  # another request of this shape is taking a block: share it
            await asyncio.shield(taking)
            block = self.book.active.get(key)
            if block is not None and self.book.admit(block, child, now_ms):
                return self._admitted(block, child, granted_out, asked, model_meta)
            return None
        block = await self._take(key, amounts, now_ms, lowest_counters(), lease_meta())
        if block is None or not self.book.admit(block, child, now_ms):
            return None
        return self._admitted(block, child, granted_out, asked, model_meta)

    async def _take(self, key: ShapeKey, amounts: Amounts, now_ms: int, counters: str, meta: str) -> Block | None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._taking[key] = done
        lease_id = LEASE_MARK.decode() + uuid.uuid4().hex[:31]
        try:
            ok, taken, used = await self.store.take_lease(
                key[0],
                lease_id,
                now_ms=now_ms,
                expires_ms=now_ms + self.book.max_age_ms + self.lease_ttl_ms,
                spread=self.spread,
                meta=meta,
                wanted=[(a * self.requests, a) for a in amounts],
                counters=counters,
            )
        finally:
            del self._taking[key]
            done.set_result(None)
        fields = [str(f) for f in json.loads(counters)[0::2]]
        if not ok:
            # The room left is too small to lease: reserve one by one for a while.
            self.book.short_until[key] = now_ms + self.book.idle_ms
            return None
        units = tuple(any(f.split("|")[1] == u.value for f in fields) for u in AMOUNT_UNITS)
        block = Block(
            id=lease_id,
            tenant=key[0],
            key=key,
            fields=",".join(fields),
            units=units,  # type: ignore[arg-type]
            free=list(taken),
            held=list(taken),
            base=used,
            created_ms=now_ms,
            last_admit_ms=now_ms,
        )
        self.book.add(block)
        return block

    def _admitted(
        self, block: Block, child: Child, granted_out: int, asked: Mapping[str, str], model_meta: str
    ) -> Block:
        self._unrecorded[id(child)] = (block, child, asyncio.get_running_loop().time())
        child.hold = Hold(
            child.reservation_id,
            block.id,
            block.last_admit_ms,
            child.expires_ms,
            granted_out,
            child.amounts,
            block.fields,
            asked,
            model_meta,
        )
        self._arm()
        return block

    # --- writing: holds, commits and releases, batched ----------------------------------

    def _record_soon(self) -> None:
        self._record_timer = None
        task = asyncio.get_running_loop().create_task(self.flush(due_only=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm(self) -> None:
        if len(self._settling) >= _FLUSH_AT:
            if self._record_timer is not None:
                self._record_timer.cancel()
            self._record_soon()
        elif self._record_timer is None:
            self._record_timer = asyncio.get_running_loop().call_later(self.record_delay_s, self._record_soon)

    async def flush(self, *, due_only: bool = False) -> None:
        """Writes what waits: every settlement queued, each after its hold if that is not
        recorded yet, and every other hold not recorded yet; one round trip for all.

        With ``due_only`` (the record timer), a hold admitted less than ``record_delay_s`` ago
        and not settled yet waits for the next batch: its settlement usually comes first, and
        then carries it in one script instead of two. The timer is armed again for it.
        """
        settling, self._settling = list(self._settling.values()), {}
        queued = {id(w.child) for w in settling}
        ops: list[Op] = []
        writes: list[tuple[Block, Child, Hold | None, _Write | None]] = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        # The loop's clock ticks in milliseconds (uvloop): a hold due within one is due now.
        due = loop.time() - self.record_delay_s + 0.001 if due_only else math.inf
        unrecorded, self._unrecorded = self._unrecorded, {}
        for key, entry in unrecorded.items():
            block, child, since = entry
            if child.hold is None or key in queued:
                continue
            if since > due:
                self._unrecorded[key] = entry
                continue
            ops.append(self.store.hold_op(block.tenant, child.hold))
            writes.append((block, child, child.hold, None))
            child.hold, child.recording = None, done
        if self._unrecorded and self._record_timer is None:
            oldest = min(since for _, _, since in self._unrecorded.values())
            self._record_timer = loop.call_at(oldest + self.record_delay_s, self._record_soon)
        for w in settling:
            hold, w.child.hold = w.child.hold, None
            if hold is None:
                ops.append(w.op(w.child.attempt))
            else:  # recorded and settled in one script: the hold is whichever attempt holds the id (0)
                ops.append(self.store.hold_then(self.store.hold_op(w.block.tenant, hold), w.op(0)))
            writes.append((w.block, w.child, hold, w))
        if not ops:
            done.set_result(None)
            return
        # Whatever happens below, nobody is left waiting: a settlement's caller on its future,
        # a later settlement of the same hold on ``done``.
        try:
            try:
                results = await self.store.run_ops(ops)
            except Exception as exc:  # the connection: see _unwritten
                self._unwritten(writes, exc)
                return
            self._written(writes, results)
        finally:
            for *_, w in writes:
                if w is not None and not w.future.done():
                    w.future.set_exception(RuntimeError("the lease batch ended without an answer"))
            done.set_result(None)

    def _unwritten(self, writes: list[tuple[Block, Child, Hold | None, _Write | None]], exc: Exception) -> None:
        """The batch failed as a whole. Its holds wait for the next batch: had one been written
        after all (a timeout), writing it again finds it and the block lets it go; a settlement
        fails to its caller, who tries again (a commit or release done twice is answered as such).

        A commit that ran after all took its usage from the lease in Redis, which this replica
        cannot know: its blocks stop admitting, and give back what Redis says they still hold."""
        for block, child, hold, w in writes:
            self.book.retire(block)
            if hold is not None:
                self._requeue(block, child, hold)
            child.recording = None
            if w is not None and not w.future.done():
                w.future.set_exception(exc)
        if any(hold is not None for _, _, hold, _ in writes):
            self._arm()  # recorded soon, whether or not their settlements are tried again

    def _requeue(self, block: Block, child: Child, hold: Hold) -> None:
        child.hold = hold
        self._unrecorded[id(child)] = (block, child, 0.0)  # due: written with the next batch

    def _written(self, writes: list[tuple[Block, Child, Hold | None, _Write | None]], results: list[Any]) -> None:
        """Applies each outcome of a batch (one per write): holds recorded, settlements
        answered, blocks freed."""
        retry = False
        for (block, child, hold, w), result in zip(writes, results, strict=True):
            child.recording = None
            if isinstance(result, Exception):
                if hold is not None:  # its script did not run (or stopped at an error): write it again later
                    self._requeue(block, child, hold)
                    retry = True
                if w is not None:
                    w.future.set_exception(result)
                continue
            if hold is not None:
                held, out = (result, None) if w is None else result
                status, attempt = held
                if status == "ok":
                    child.attempt = attempt
                elif w is None:
                    # The request id is held or was charged by another reservation: the caller
                    # settles that one (no longer through this block).
                    self.book.finish(block, child, None)
            else:
                out = result
            if w is None:
                continue
            if out.status in _FINISHED:
                used = None
                if w.commit and out.status == "ok" and out.record.get("covered_by") == block.id:
                    used = (int(out.record["ctok"]), int(out.record["cusd"]), 1)
                self.book.finish(block, child, used)
            w.future.set_result(out)
        if retry:
            self._arm()

    # --- settling -------------------------------------------------------------------------

    async def commit(self, tenant: str, reservation_id: str, **kwargs: Any) -> ScriptOutcome | None:
        """Commits a hold this replica admitted (None: it has no such hold), in the next batch.

        Its usage is taken from the block while the block still counts the hold; the hold is
        recorded first, in the same round trip, if it was not yet."""

        def op(attempt: int) -> Op:
            return self.store.commit_op(tenant, reservation_id, lease=block.id, **{**kwargs, "attempt": attempt})

        found = await self._own(tenant, reservation_id)
        if found is None:
            return None
        block, child = found
        return await self._queue(_Write(block, child, op, True))

    async def release(self, tenant: str, reservation_id: str, **kwargs: Any) -> ScriptOutcome | None:
        """Releases a hold this replica admitted (None: it has no such hold), in the next batch."""

        def op(attempt: int) -> Op:
            return self.store.release_op(tenant, reservation_id, **{**kwargs, "attempt": attempt})

        found = await self._own(tenant, reservation_id)
        if found is None:
            return None
        block, child = found
        return await self._queue(_Write(block, child, op, False))

    async def _queue(self, write: _Write) -> ScriptOutcome:
        self._settling[id(write.child)] = write
        self._arm()
        return await asyncio.shield(write.future)

    async def _own(self, tenant: str, reservation_id: str) -> tuple[Block, Child] | None:
        found = self.book.child(tenant, reservation_id)
        if found is not None and found[1].recording is not None:
            await asyncio.shield(found[1].recording)  # type: ignore[arg-type]
            found = self.book.child(tenant, reservation_id)
        if found is not None:
            first = self._settling.get(id(found[1]))
            if first is not None:  # settled twice at once: the second goes to Redis after the first
                with contextlib.suppress(Exception):
                    await asyncio.shield(first.future)
                return None
        return found

    # --- giving back ----------------------------------------------------------------------

    async def tick(self) -> None:
        """Frees holds past their TTL, retires idle and old blocks and gives retired ones back."""
        now = self.clock()
        for block, child in self.book.expired(now):
            if child.hold is None and child.recording is None:
                self.book.finish(block, child, None)
        self.book.retire_due(now)
        for block in self.book.retired():
            await self.give_back(block)
        for key, until in list(self.book.short_until.items()):
            if until <= now:
                del self.book.short_until[key]

    async def give_back_tenant(self, tenant: str) -> bool:
        """Gives back every block of ``tenant`` this replica holds (a reserve found no room, and
        ours may be what holds it). True when anything went back."""
        gave = False
        for block in self.book.retire_tenant(tenant):
            gave = await self.give_back(block) or gave
        return gave

    async def give_back(self, block: Block) -> bool:
        """Gives back a retired block's free part, and closes its lease once it has no holds.

        One give-back of a block at a time: the free part is read before the return is awaited
        and lowered after it, so a second give-back meanwhile (the tick, and a reserve that found
        no room) returned it again; Redis, which does not know the holds not written yet, took
        both, and the holds' commits were then charged past the quota. A caller that finds one in
        flight gets its outcome (False if it failed: the block stays retired, and a later tick
        gives it back).
        """
        pending = self._giving.get(block.id)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._giving[block.id] = asyncio.get_running_loop().create_future()
        given = False
        try:
            given = await self._give_back(block)
            return given
        finally:
            del self._giving[block.id]
            pending.set_result(given)

    async def _give_back(self, block: Block) -> bool:
        now = self.clock()
        if not block.children:
            given = await self.store.return_lease(block.tenant, block.id, now_ms=now, amounts=(0, 0, 0), close=True)
            self.book.closed(block)
            return bool(given and any(given))
        amounts = tuple(max(0, f) if counted else 0 for f, counted in zip(block.free, block.units, strict=True))
        if not any(amounts):
            return False
        given = await self.store.return_lease(block.tenant, block.id, now_ms=now, amounts=amounts, close=False)  # type: ignore[arg-type]
        if given is None:  # a sweeper expired it: its holds settle without it
            self.book.closed(block)
            return False
        for u in range(UNITS):
            block.free[u] -= given[u]
            block.held[u] -= given[u]
        return any(given)

    async def stop(self) -> None:
        """Records what is left and gives every block back (those with holds open keep only
        what their holds need)."""
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        await self.flush()
        for block in list(self.book.blocks.values()):
            block.retired = True
        self.book.active.clear()
        for block in self.book.retired():
            try:
                await self.give_back(block)
            except Exception as exc:  # the sweeper gives it back when the lease expires
                log.warning("lease not given back", extra={"lease": block.id, "error": str(exc)})
