"""The lease book: admission from a block, settling, retiring (pure; no Redis)."""

from __future__ import annotations

from tollway.budget.budget import _tightest_in_block
from tollway.budget.leases import Block, Child, LeaseBook
from tollway.budget.quota import Counter
from tollway.budget.types import Quota, Scope, Unit, Window

MINUTE = 60_000
T0 = 1_000 * MINUTE


def block(free: tuple[int, int, int] = (100, 1000, 10), units: tuple[bool, bool, bool] = (True, True, False)) -> Block:
    return Block(
        id="L1",
        tenant="acme",
        key=("acme", "", "", T0 // MINUTE, 1),
        fields="t|tok|day|0|1,t|usd|month|0|1",
        units=units,
        free=list(free),
        held=list(free),
        base=(5, 50),
        created_ms=T0,
        last_admit_ms=T0,
    )


def child(rid: str, amounts: tuple[int, int, int] = (30, 300, 1)) -> Child:
    return Child(rid, amounts, T0 + 600_000, None)


def test_admission_takes_every_counted_unit_and_refuses_without_room() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    b = block()
    book.add(b)
    assert book.admit(b, child("a"), T0)
    assert book.admit(b, child("b"), T0)
    assert book.admit(b, child("c"), T0)
    assert b.free[:2] == [10, 100]
    # 30 tokens do not fit in the 10 left: refused, nothing taken.
    assert not book.admit(b, child("d"), T0)
    assert b.free[:2] == [10, 100] and "d" not in b.children
    # Requests are not counted by this block's counters: their free part never refuses.
    assert b.free[2] == 10 - 3
    assert book.child("acme", "b") == (b, b.children["b"])
    assert book.child("acme", "zz") is None and book.child("other", "b") is None


def test_finishing_frees_the_estimate_less_what_the_block_paid() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    b = block()
    book.add(b)
    a, c = child("a"), child("c")
    book.admit(b, a, T0)
    book.admit(b, c, T0)
    book.finish(b, a, (12, 100, 1))  # committed: the block paid its usage
    assert b.free[:2] == [100 - 30 - 12, 1000 - 300 - 100]
    book.finish(b, c, None)  # released, or settled without the block
    assert b.free[:2] == [100 - 12, 1000 - 100]
    assert b.held[0] - b.free[0] == 12  # what the block admitted, as headers count it
    book.finish(b, c, None)  # twice: nothing more
    assert b.free[:2] == [88, 900] and book.child("acme", "c") is None


def test_usage_beyond_the_estimate_can_leave_the_block_short() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    b = block(free=(40, 1000, 10))
    book.add(b)
    a = child("a")
    book.admit(b, a, T0)
    book.finish(b, a, (70, 300, 1))
    assert b.free[0] == -30 and not book.admit(b, child("b", (1, 1, 1)), T0)


def test_a_retired_block_admits_nothing_and_a_new_one_retires_the_old() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    first, second = block(), block()
    second.id = "L2"
    book.add(first)
    book.add(second)
    assert first.retired and book.active[first.key] is second
    assert not book.admit(first, child("a"), T0)
    assert book.retired() == [first]
    book.closed(first)
    assert book.retired() == [] and "L1" not in book.blocks


def test_idle_old_and_last_minute_blocks_retire() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    idle, old, stale, busy = block(), block(), block(), block()
    for i, b in enumerate((idle, old, stale, busy)):
        b.id = f"L{i}"
        b.key = ("acme", f"k{i}", "", T0 // MINUTE, 1)
        book.add(b)
    now = T0 + 5_000
    idle.last_admit_ms = T0 + 3_999  # 1,001 ms idle
    old.created_ms, old.last_admit_ms = T0 - 6_000, now  # 11 s old
    stale.key = ("acme", "k2", "", T0 // MINUTE - 1, 1)  # the minute before
    book.active = {b.key: b for b in (idle, old, stale, busy)}
    busy.last_admit_ms = now
    book.retire_due(now)
    assert [b.retired for b in (idle, old, stale, busy)] == [True, True, True, False]
    assert list(book.active.values()) == [busy]


def test_retiring_a_tenant_retires_only_its_blocks() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    mine, theirs = block(), block()
    theirs.id, theirs.tenant, theirs.key = "L9", "other", ("other", "", "", T0 // MINUTE, 1)
    book.add(mine)
    book.add(theirs)
    assert book.retire_tenant("acme") == [mine]
    assert mine.retired and not theirs.retired


def test_expired_holds_are_listed() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    b = block()
    book.add(b)
    early = Child("early", (1, 1, 1), T0 + 10, None)
    late = Child("late", (1, 1, 1), T0 + 10_000, None)
    book.admit(b, early, T0)
    book.admit(b, late, T0)
    assert book.expired(T0 + 10) == [(b, early)]


def test_retiring_one_block_keeps_its_holds_and_the_shape_free_for_a_new_block() -> None:
    book = LeaseBook(idle_ms=1000, max_age_ms=10_000)
    first, second = block(), block()
    second.id = "L2"
    book.add(first)
    assert book.admit(first, child("a"), T0)
    book.retire(first)
    assert first.retired and first.key not in book.active
    assert not book.admit(first, child("b"), T0)
    assert book.child("acme", "a") == (first, first.children["a"])  # still settles through it
    book.add(second)
    book.retire(first)  # again, with another block active for the shape: that one stays
    assert book.active[second.key] is second and not second.retired


def test_the_headers_view_takes_each_units_tightest_counter_as_the_block_admits() -> None:
    day = Quota(Scope.TENANT, Window.DAY, Unit.TOKENS, 1000)
    key = Quota(Scope.KEY, Window.MINUTE, Unit.TOKENS, 300)
    month = Quota(Scope.TENANT, Window.MONTH, Unit.USD_NANOS, 10_000)
    counters = [
        Counter("t|tok|day|0|1", day, "", 1000, 86_400_000),
        Counter("k|tok|minute|0|1", key, "k1", 300, 60_000),
        Counter("t|usd|month|0|1", month, "", 10_000, 2_592_000_000),
    ]
    b = block(free=(200, 2000, 0))
    b.base = (500, 250, 4000)  # the key's minute has 50 tokens left, the day 500
    first = _tightest_in_block(b, counters)
    assert (first[Unit.TOKENS].quota, first[Unit.TOKENS].used, first[Unit.TOKENS].remaining) == (key, 250, 50)
    assert (first[Unit.USD_NANOS].used, first[Unit.USD_NANOS].remaining) == (4000, 6000)
    assert Unit.REQUESTS not in first
    LeaseBook(idle_ms=1000, max_age_ms=10_000).admit(b, child("a", (30, 300, 1)), T0)
    after = _tightest_in_block(b, counters)  # from the memo, with what the block admitted since
    assert (after[Unit.TOKENS].used, after[Unit.TOKENS].remaining) == (280, 20)
    assert (after[Unit.USD_NANOS].used, after[Unit.USD_NANOS].remaining) == (4300, 5700)
    other = [counters[0], counters[2]]  # another list of counters: its own view
    assert _tightest_in_block(b, other)[Unit.TOKENS].quota == day
