"""Admission from leases (tollway.budget.leases) over a real Redis (a cluster too, in the cluster
pass: every script of a lease runs in its tenant's slot): two budget replicas
with leases on, as two co-located cores run them. Exactness against the quota, counters equal
to the ledger at every step, blocks given back, a holder that dies, settlements of every kind.

Time is a clock the tests move by hand; the background loops are not started: the tests call
the lease tick and the sweeper themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from tests.integration.test_budget_service import (  # the suite's Redis and plans fixtures too
    ROOT,
    Clock,
    fixture_plans_file,  # noqa: F401
    fixture_redis_url,  # noqa: F401
)
from tests.support.polling import eventually
from tests.support.redis_cluster import sync_client
from tollway.budget.__main__ import build
from tollway.budget.budget import Budget
from tollway.budget.config import BudgetConfig
from tollway.budget.types import CommitCommand, Priority, ReserveCommand
from tollway.mesh.config import MeshConfig
from tollway.mesh.errors import ResourceExhausted
from tollway.mesh.redis import is_outage

PREFIX = "tw:budget:leases"
# gpt-4o-mini, 8 prompt tokens and 6 output tokens asked: 14 tokens, 4,800 nano-dollars held.
ASK = {"model": "gpt-4o-mini", "input_tokens": 8, "max_output_tokens": 6}
EACH_TOKENS, EACH_NANOS, FITS = 14, 4_800, 100  # plan "burst": 100 such requests a day / month


@contextlib.asynccontextmanager
async def budgets(
    redis_url: str, plans: Path, clock: Clock, count: int = 2, record_delay_s: float = 0.01
) -> AsyncIterator[list[Budget]]:
    made = []
    try:
        for _ in range(count):
            cfg = BudgetConfig(
                plans=str(plans),
                catalog=str(ROOT / "deploy" / "models.yaml"),
                key_prefix=PREFIX,
                lease_requests=16,
                lease_record_delay_s=record_delay_s,
            )
            spec, budget = build(cfg, MeshConfig(redis_url=redis_url), clock=clock)
            await budget.refresh_overrides()
            made.append((spec, budget))
        yield [b for _, b in made]
    finally:
        for spec, budget in made:
            await budget.stop()
            assert spec.on_stop is not None
            await spec.on_stop()


def ledger_ops(redis_url: str, tenant: str) -> list[dict[str, str]]:
    rows = sync_client(redis_url).xrange(f"{PREFIX}:{{{tenant}}}:ledger")
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


def counters(redis_url: str, tenant: str) -> dict[str, int]:
    raw = sync_client(redis_url).hgetall(f"{PREFIX}:{{{tenant}}}:ctr")
    return {k.decode(): int(v) for k, v in raw.items()}


async def balanced(budget: Budget, tenant: str) -> None:
    result = await budget.reconcile(tenant)
    assert not result.differences, result.differences


async def test_one_lease_serves_many_reserves_and_goes_back_exactly(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        assert budget.leasing is not None
        granted = [await budget.reserve(ReserveCommand("acme", request_id=f"one-{i}", **ASK)) for i in range(10)]
        ops = [e["op"] for e in ledger_ops(redis_url, "acme")]
        assert ops.count("lease") == 1 and "reserve" not in ops  # nothing recorded yet: one round trip
        assert all(g.reservation.attempt == 1 for g in granted)
        await balanced(budget, "acme")
        # Headers see what this replica admitted: ten estimates of the day's tokens.
        assert granted[-1].tightest[next(iter(granted[-1].tightest))].remaining >= 0
        await budget.leasing.flush()
        for i, g in enumerate(granted):
            out = 6 if i % 2 else 3  # half use less than asked
            await budget.commit(CommitCommand(g.reservation.name, input_tokens=8, output_tokens=out))
        await balanced(budget, "acme")
        ops = [e["op"] for e in ledger_ops(redis_url, "acme")]
        assert ops.count("reserve") == 10 and ops.count("commit") == 10
        clock.advance(2)  # idle past lease_idle_s
        await budget.leasing.tick()
        await balanced(budget, "acme")
        charged = 5 * (8 + 6) + 5 * (8 + 3)
        assert [v for f, v in counters(redis_url, "acme").items() if "|tok|" in f] == [charged]
        assert ledger_ops(redis_url, "acme")[-1]["op"] == "lease_close"
        assert not budget.leasing.book.blocks


async def test_a_hold_waits_for_its_settlement_until_it_is_due(redis_url: str, plans_file: Path) -> None:
    """The record timer writes only the holds admitted ``lease_record_delay_s`` ago: a younger one
    waits, and its commit carries it (hold and commit in one script, adjacent in the ledger); a
    hold nobody settles is still written once due."""
    clock = Clock()
    # A second between the two holds: the young one stays unwritten for a second after the old one's
    # batch, so a loaded machine's stall cannot make them due together.
    async with budgets(redis_url, plans_file, clock, count=1, record_delay_s=2.0) as (budget,):

        def reserved() -> list[str]:
            return [e["res"] for e in ledger_ops(redis_url, "beta") if e["op"] == "reserve"]

        async def hold(request_id: str) -> str:
            return (await budget.reserve(ReserveCommand("beta", request_id=request_id, **ASK))).reservation.name

        async def commit_now(*commits: CommitCommand) -> None:
            # Queued, then written by a batch started at once rather than by the next timer.
            assert budget.leasing is not None
            await asyncio.gather(*(budget.commit(c) for c in commits), budget.leasing.flush())

        old = await hold("old")
        await asyncio.sleep(1.0)
        young = await hold("young")
        await eventually(reserved, what="the first hold written when due")
        assert reserved() == [old.rsplit("/", 1)[1]]  # the young one is not due yet: it waits for its commit
        await commit_now(CommitCommand(young, input_tokens=8, output_tokens=6))
        ops = [(e["op"], e["res"]) for e in ledger_ops(redis_url, "beta") if e["op"] in ("reserve", "commit")]
        ids = [name.rsplit("/", 1)[1] for name in (old, young)]
        assert ops == [("reserve", ids[0]), ("reserve", ids[1]), ("commit", ids[1])]
        await balanced(budget, "beta")
        late = await hold("late")
        await eventually(lambda: late.rsplit("/", 1)[1] in reserved(), what="an unsettled hold written once due")
        await commit_now(
            CommitCommand(old, input_tokens=8, output_tokens=6), CommitCommand(late, input_tokens=8, output_tokens=3)
        )
        await balanced(budget, "beta")


async def test_two_replicas_never_admit_past_the_quota_and_then_reach_it_exactly(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    async with budgets(redis_url, plans_file, clock) as replicas:
        admitted: list[str] = []

        async def one(i: int) -> None:
            budget = replicas[i % 2]
            try:
                g = await budget.reserve(
                    ReserveCommand("delta", request_id=f"burst-{i}", priority=Priority.INTERACTIVE, **ASK)
                )
            except ResourceExhausted:
                return
            admitted.append(g.reservation.name)
            await asyncio.sleep(0)
            await budget.commit(CommitCommand(g.reservation.name, input_tokens=8, output_tokens=6))

        # A burst of 3x what fits, in rounds, giving leases back between them as time passes.
        for round_ in range(6):
            await asyncio.gather(*(one(round_ * 50 + i) for i in range(50)))
            assert len(admitted) <= FITS
            for budget in replicas:
                await balanced(budget, "delta")
            clock.advance(2)
            for budget in replicas:
                await budget.leasing.tick()  # type: ignore[union-attr]
        # Every request used its estimate: the quota is reached exactly, no false refusal left.
        assert len(admitted) == FITS
        values = counters(redis_url, "delta")
        assert sorted(values.values()) == [FITS * EACH_TOKENS, FITS * EACH_NANOS]
        for budget in replicas:
            with pytest.raises(ResourceExhausted):
                await budget.reserve(
                    ReserveCommand("delta", request_id="one-more", priority=Priority.INTERACTIVE, **ASK)
                )
        ops = [e["op"] for e in ledger_ops(redis_url, "delta")]
        assert ops.count("commit") == FITS and ops.count("lease") >= 2


async def test_the_end_of_a_quota_and_batch_priority_go_one_by_one(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        # Batch may fill 80 %: blocks are cut from what batch may use, so an interactive request
        # past 80 % is admitted one by one, and a batch one refused.
        names = []
        while True:
            try:
                g = await budget.reserve(ReserveCommand("kilo", priority=Priority.BATCH, **ASK))
            except ResourceExhausted:
                break
            names.append(g.reservation.name)
        assert len(names) == 80
        g = await budget.reserve(ReserveCommand("kilo", priority=Priority.INTERACTIVE, **ASK))
        assert g.reservation.attempt == 1
        for name in [*names, g.reservation.name]:
            await budget.commit(CommitCommand(name, input_tokens=8, output_tokens=6))
        await balanced(budget, "kilo")
        clock.advance(2)
        await budget.leasing.tick()  # type: ignore[union-attr]
        assert sorted(counters(redis_url, "kilo").values()) == [81 * EACH_TOKENS, 81 * EACH_NANOS]


async def test_a_holder_that_dies_leaves_a_lease_the_sweeper_gives_back(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    before = sum(v for f, v in counters(redis_url, "acme").items() if "|tok|" in f)  # earlier tests' charges
    async with budgets(redis_url, plans_file, clock, count=2) as (holder, survivor):
        kept = await holder.reserve(ReserveCommand("acme", request_id="dies-1", **ASK))
        lost = await holder.reserve(ReserveCommand("acme", request_id="dies-2", **ASK))
        await holder.commit(CommitCommand(kept.reservation.name, input_tokens=8, output_tokens=5))
        await holder.leasing.flush()  # type: ignore[union-attr]
        # The holder dies: nothing of it runs again (its book is dropped, not given back).
        assert holder.leasing is not None
        holder.leasing.book.blocks.clear()
        holder.leasing.book.active.clear()
        holder.leasing.book.by_child.clear()
        assert lost.reservation.state.name == "RESERVED"
        clock.advance(holder.cfg.reservation_ttl_s + holder.cfg.lease_max_age_s + 3)  # past the lease too
        assert await survivor.sweep() == 1  # the open hold (and, not counted as one, the lease)
        await balanced(survivor, "acme")
        ops = [e["op"] for e in ledger_ops(redis_url, "acme")]
        assert "lease_expire" in ops and "expire" in ops
        assert [v for f, v in counters(redis_url, "acme").items() if "|tok|" in f] == [before + 8 + 5]


async def test_release_usage_beyond_the_estimate_and_a_closed_lease(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        assert budget.leasing is not None
        a = await budget.reserve(ReserveCommand("gamma", request_id="r-a", **ASK))
        b = await budget.reserve(ReserveCommand("gamma", request_id="r-b", **ASK))
        c = await budget.reserve(ReserveCommand("gamma", request_id="r-c", **ASK))
        same = await budget.reserve(ReserveCommand("gamma", request_id="r-c", **ASK))
        assert same.reservation.name == c.reservation.name  # the same request id: the same hold
        released = await budget.release(a.reservation.name, "router failed")
        assert released.state.name == "RELEASED"
        # 500 output tokens against 6 asked: the block pays what it can, the counters the rest.
        await budget.commit(CommitCommand(b.reservation.name, input_tokens=8, output_tokens=500))
        await balanced(budget, "gamma")
        # The lease closes with c still open (shut down): c's commit is then charged directly.
        await budget.leasing.stop()
        assert budget.leasing.book.child("gamma", c.reservation.id) is not None
        await budget.commit(CommitCommand(c.reservation.name, input_tokens=8, output_tokens=6))
        await balanced(budget, "gamma")
        clock.advance(2)
        await budget.leasing.tick()
        await budget.leasing.stop()
        assert [v for f, v in counters(redis_url, "gamma").items() if "|tok|" in f] == [(8 + 500) + (8 + 6)]
        ops = [(e["op"], e.get("res", "")) for e in ledger_ops(redis_url, "gamma")]
        assert ("release", a.reservation.id) in ops
        assert sum(1 for op, res in ops if op == "commit" and res == c.reservation.id) == 1


def read_timeout(budget: Budget, seconds: float) -> None:
    """Sets the budget's Redis read timeout, on its connections and on those it opens later."""
    pool = budget.store.client.connection_pool
    pool.connection_kwargs["socket_timeout"] = seconds
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        connection.socket_timeout = seconds


def _one_node(redis_url: str) -> None:
    if redis_url.startswith("redis+cluster://"):
        pytest.skip("stalls and fills one Redis server; the cluster pass has three")


async def test_a_batch_lost_to_a_stalled_redis_leaves_nobody_waiting_and_charges_once(
    redis_url: str, plans_file: Path
) -> None:
    _one_node(redis_url)
    clock = Clock()
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        assert budget.leasing is not None
        a = await budget.reserve(ReserveCommand("stall", request_id="st-a", **ASK))
        b = await budget.reserve(ReserveCommand("stall", request_id="st-b", **ASK))
        held = budget.leasing.book.child("stall", b.reservation.id)
        assert held is not None
        first_block = held[0]
        read_timeout(budget, 0.2)  # the stall becomes a timeout quickly
        admin = sync_client(redis_url)
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        # The batch (both holds and a's commit) times out; Redis may still run it when the pause ends.
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(budget.commit(CommitCommand(a.reservation.name, input_tokens=8, output_tokens=5)), 5)
        assert is_outage(failed.value)
        await asyncio.to_thread(admin.ping)  # answered when the pause ends
        read_timeout(budget, 2.0)  # the default again: a busy machine is not a stalled Redis
        # Tried again: charged once, whether the first batch ran after the pause or not.
        again = await asyncio.wait_for(
            budget.commit(CommitCommand(a.reservation.name, input_tokens=8, output_tokens=5)), 5
        )
        assert again.reservation.tokens == 8 + 5
        # The block may disagree with Redis about what is left: it admits no more.
        c = await budget.reserve(ReserveCommand("stall", request_id="st-c", **ASK))
        now_held = budget.leasing.book.child("stall", c.reservation.id)
        assert first_block.retired and now_held is not None and now_held[0] is not first_block
        for g in (b, c):
            await budget.commit(CommitCommand(g.reservation.name, input_tokens=8, output_tokens=6))
        await balanced(budget, "stall")
        clock.advance(2)
        await budget.leasing.tick()
        await budget.leasing.tick()
        assert not budget.leasing.book.blocks
        await balanced(budget, "stall")
        assert [v for f, v in counters(redis_url, "stall").items() if "|tok|" in f] == [(8 + 5) + 2 * (8 + 6)]
        ops = [(e["op"], e.get("res", "")) for e in ledger_ops(redis_url, "stall")]
        assert sum(1 for op, res in ops if op == "commit" and res == a.reservation.id) == 1


async def test_a_hold_redis_refuses_to_write_is_written_later_and_its_commit_fails_cleanly(
    redis_url: str, plans_file: Path
) -> None:
    _one_node(redis_url)
    clock = Clock()
    admin = sync_client(redis_url)
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        assert budget.leasing is not None
        a = await budget.reserve(ReserveCommand("full", request_id="oom-a", **ASK))
        b = await budget.reserve(ReserveCommand("full", request_id="oom-b", **ASK))
        admin.config_set("maxmemory", "1")  # every write refused (OOM), per script
        try:
            with pytest.raises(ResponseError, match="maxmemory"):
                await asyncio.wait_for(
                    budget.commit(CommitCommand(a.reservation.name, input_tokens=8, output_tokens=5)), 5
                )
        finally:
            admin.config_set("maxmemory", "0")
        # The holds refused are written by a later batch.
        await eventually(
            lambda: (
                sorted(e["res"] for e in ledger_ops(redis_url, "full") if e["op"] == "reserve")
                == sorted([a.reservation.id, b.reservation.id])
            ),
            what="both holds recorded",
        )
        for g, out in ((a, 5), (b, 6)):
            await budget.commit(CommitCommand(g.reservation.name, input_tokens=8, output_tokens=out))
        await balanced(budget, "full")
        clock.advance(2)
        await budget.leasing.tick()
        await balanced(budget, "full")
        assert [v for f, v in counters(redis_url, "full").items() if "|tok|" in f] == [(8 + 5) + (8 + 6)]


async def test_a_block_given_back_twice_at_once_is_returned_once(redis_url: str, plans_file: Path) -> None:
    """The lease tick and a reserve that found no room may give the same block back at once. Both
    read its free part before either return lowered it: the block was returned twice, and Redis,
    which does not know the holds not yet written, took both; those holds' commits were then
    charged past the quota (a burst test over three gateways caught it)."""
    clock = Clock()
    async with budgets(redis_url, plans_file, clock, count=1) as (budget,):
        leasing = budget.leasing
        assert leasing is not None
        held = [await budget.reserve(ReserveCommand("twice", request_id=f"twice-{i}", **ASK)) for i in range(3)]
        (block,) = leasing.book.blocks.values()
        block.retired = True
        free = block.free[0]
        assert free > 0
        outcomes = await asyncio.gather(leasing.give_back(block), leasing.give_back(block))
        assert outcomes == [True, True]  # the second shares the first's outcome
        returns = [e for e in ledger_ops(redis_url, "twice") if e["op"] == "lease_return"]
        assert [int(e["tok"]) for e in returns] == [-free]
        # The holds admitted before the return are still covered by the lease: no counter goes over.
        for g in held:
            await budget.commit(CommitCommand(g.reservation.name, input_tokens=8, output_tokens=6))
        await leasing.flush()
        await balanced(budget, "twice")
        commits = [e for e in ledger_ops(redis_url, "twice") if e["op"] == "commit"]
        assert [e["tok"] for e in commits] == ["0", "0", "0"]  # paid from the lease, not the counters
