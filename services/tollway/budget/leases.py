"""A replica's leases: blocks of quota taken from Redis in one step, admitted from in memory.

A reserve that goes to Redis costs a round trip on the request's path (on two shared cores,
mostly the kernel waking Redis and waking the caller again). A lease takes a block of every
counter of one request shape (tenant, key, feature, minute) at once, in one atomic script
that ledgers it; the replica then admits requests of that shape from the block without
touching Redis, and records each admission as a reservation later, batched, off the path.

Exactness does not change: a block is carved out of the counters atomically, so what all
replicas admit never exceeds a limit. Only the placement of the last bit of a quota does: a
block takes at most ``1/spread`` of the room left below the lowest priority's share, none
when that room is below one request, so the end of every quota is admitted one reserve at a
time, exactly as without leases, and an idle block goes back within ``idle_ms``.

This module is the bookkeeping only (pure, no I/O); :mod:`tollway.budget.leasing` drives it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tollway.budget.store import Hold
from tollway.budget.types import Unit

AMOUNT_UNITS = (Unit.TOKENS, Unit.USD_NANOS, Unit.REQUESTS)  # the order of every amount tuple here
UNITS = len(AMOUNT_UNITS)
Amounts = tuple[int, int, int]
ShapeKey = tuple[str, str, str, int, int]  # tenant, key id, feature, minute, policy (its id())


@dataclasses.dataclass
class Child:
    """A hold admitted from a block.

    ``hold`` is set until the hold is recorded in Redis (it rides with its commit or release
    when they come first); ``recording`` while a batch of holds is on its way. The caller
    knows the hold as attempt 1; its settlements are made for the attempt it was recorded as.
    """

    reservation_id: str
    amounts: Amounts
    expires_ms: int
    hold: Hold | None
    recording: object = None  # the asyncio future of the batch recording it, if one is on its way
    attempt: int = 0  # of its request id, once recorded


@dataclasses.dataclass
class Block:
    """One lease: what it took of each unit, what is still free to admit, its children.

    Attributes:
        units: Which units have counters (only these are checked and taken).
        free: What may still be admitted, per unit. Goes below 0 when usage exceeds estimates.
        held: What the block holds in the counters now, per unit (taken minus given back).
        base: Each counter's value before the block was taken (for rate-limit headers).
    """

    id: str
    tenant: str
    key: ShapeKey
    fields: str
    units: tuple[bool, bool, bool]
    free: list[int]
    held: list[int]
    base: tuple[int, ...]
    created_ms: int
    last_admit_ms: int
    children: dict[str, Child] = dataclasses.field(default_factory=dict)
    retired: bool = False
    # What the caller derives once per block and list of counters (the tightest counter of each
    # unit, for headers), by the list's id; the list is kept with it, so the id stays its own.
    memo: dict[int, Any] = dataclasses.field(default_factory=dict)

    def fits(self, amounts: Amounts) -> bool:
        return all(not counted or free >= a for counted, free, a in zip(self.units, self.free, amounts, strict=True))


class LeaseBook:
    """The blocks of one replica and the holds admitted from them.

    Args:
        idle_ms: A block nobody admitted from for this long is retired (its free part returned).
        max_age_ms: A block older than this is retired, so quota never sits in one place long.
    """

    def __init__(self, *, idle_ms: int, max_age_ms: int) -> None:
        self.idle_ms = idle_ms
        self.max_age_ms = max_age_ms
        self.active: dict[ShapeKey, Block] = {}
        self.blocks: dict[str, Block] = {}
        self.by_child: dict[tuple[str, str], Block] = {}  # (tenant, reservation id) -> its block
        self.short_until: dict[ShapeKey, int] = {}  # shapes whose last lease was refused: no retry before

    def add(self, block: Block) -> None:
        """A block just taken becomes the shape's active one; the one before retires."""
        before = self.active.get(block.key)
        if before is not None:
            before.retired = True
        self.active[block.key] = block
        self.blocks[block.id] = block

    def admit(self, block: Block, child: Child, now_ms: int) -> bool:
        """Admits ``child`` from ``block`` if every counted unit has room; False changes nothing."""
        if block.retired or not block.fits(child.amounts):
            return False
        for u in range(UNITS):
            block.free[u] -= child.amounts[u]
        block.children[child.reservation_id] = child
        self.by_child[(block.tenant, child.reservation_id)] = block
        block.last_admit_ms = now_ms
        return True

    def child(self, tenant: str, reservation_id: str) -> tuple[Block, Child] | None:
        """The open hold ``reservation_id`` of ``tenant`` and its block, if this replica has it."""
        block = self.by_child.get((tenant, reservation_id))
        if block is None:
            return None
        return block, block.children[reservation_id]

    def finish(self, block: Block, child: Child, used: Amounts | None) -> None:
        """Ends a hold: its estimate is free again, less what it used of the block (``used``:
        what the commit took from the block; None when it took nothing)."""
        if block.children.pop(child.reservation_id, None) is None:
            return
        self.by_child.pop((block.tenant, child.reservation_id), None)
        for u in range(UNITS):
            block.free[u] += child.amounts[u] - (used[u] if used else 0)

    def expired(self, now_ms: int) -> list[tuple[Block, Child]]:
        """Holds past their TTL (the sweeper expires their records; no counter changes)."""
        return [(b, c) for b in self.blocks.values() for c in b.children.values() if c.expires_ms <= now_ms]

    def retire_due(self, now_ms: int) -> None:
        """Retires idle, old and last-minute blocks."""
        minute = now_ms // 60_000
        for key, block in list(self.active.items()):
            if (
                now_ms - block.last_admit_ms >= self.idle_ms
                or now_ms - block.created_ms >= self.max_age_ms
                or key[3] != minute
            ):
                block.retired = True
                del self.active[key]

    def retire(self, block: Block) -> None:
        """Stops ``block`` admitting (what it has left goes back at the next tick)."""
        block.retired = True
        if self.active.get(block.key) is block:
            del self.active[block.key]

    def retire_tenant(self, tenant: str) -> list[Block]:
        """Retires every block of ``tenant`` (a reserve found no room: ours may hold it)."""
        for key, block in list(self.active.items()):
            if block.tenant == tenant:
                block.retired = True
                del self.active[key]
        return [b for b in self.blocks.values() if b.tenant == tenant and b.retired]

    def retired(self) -> list[Block]:
        """Retired blocks still open: their free part is to go back, and all of them once empty."""
        return [b for b in self.blocks.values() if b.retired]

    def closed(self, block: Block) -> None:
        """Forgets a block whose lease is closed (or expired)."""
        self.blocks.pop(block.id, None)
        if self.active.get(block.key) is block:
            del self.active[block.key]
        for rid in list(block.children):
            self.by_child.pop((block.tenant, rid), None)
        block.children.clear()
