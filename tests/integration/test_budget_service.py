"""The budget service over real gRPC (port 0, two replicas) and a real redis-server.

The concurrency tests fire their bursts from separate client processes, as gateways would.
Time is a clock the tests move by hand: windows and TTLs never depend on how fast this
machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.redis_cluster import sync_client
from tests.support.redis_server import local_redis
from tollway.budget.__main__ import build
from tollway.budget.budget import Budget
from tollway.budget.config import BudgetConfig
from tollway.budget.plans import PlansError
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_767_225_600_000 + 3_600_000  # 2026-01-01 01:00 UTC: far from any window edge
# gpt-4o-mini: $0.15 / $0.60 per million tokens = 150 / 600 nano-dollars a token. The LiteLLM
# harness's request: 8 prompt tokens, 6 output tokens = 14 tokens, 4,800 nano-dollars.
PER_REQUEST_TOKENS = 14
PER_REQUEST_NANOS = 8 * 150 + 6 * 600
FITS = 100

PLANS = f"""
version: 1
default_plan: ""
thresholds: {{normal: 0.9, batch: 0.8}}
plans:
  burst:
    quotas:
      - {{scope: tenant, window: day, tokens: {FITS * PER_REQUEST_TOKENS}}}
      - {{scope: tenant, window: month, usd: {FITS * PER_REQUEST_NANOS / 1e9}}}
  small:
    max_tokens_per_request: 64
    quotas:
      - {{scope: tenant, window: minute, tokens: 1000}}
      - {{scope: tenant, window: hour, requests: 50}}
      - {{scope: key, window: minute, tokens: 300}}
      - {{scope: feature, subject: summarise, window: minute, tokens: 100}}
      - {{scope: conversation, window: conversation, tokens: 200}}
  roomy:
    quotas:
      - {{scope: tenant, window: day, tokens: 100000000}}
tenants:
  acme: {{plan: burst}}
  beta: {{plan: small}}
  gamma: {{plan: roomy}}
  delta: {{plan: burst}}
  kilo: {{plan: burst}}
  stall: {{plan: roomy}}
  full: {{plan: roomy}}
  twice: {{plan: roomy}}
"""


class Clock:
    """A clock the test moves by hand (Unix ms)."""

    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class Replica:
    def __init__(self, budget: Budget, stub: budget_pb2_grpc.BudgetServiceStub, port: int) -> None:
        self.budget, self.stub, self.port = budget, stub, port


# Named apart from their fixtures, so that the budget suites that import them (the request-id and
# lease tests) take them by fixture name without the import shadowing their arguments.
@pytest.fixture(scope="module", name="redis_url")
def fixture_redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@pytest.fixture(name="plans_file")
def fixture_plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "budget.yaml"
    path.write_text(PLANS)
    return path


@contextlib.asynccontextmanager
async def replicas(
    redis_url: str, plans: Path, clock: Clock, count: int = 2, **config: Any
) -> AsyncIterator[list[Replica]]:
    """``count`` budget services on one Redis, built as ``python -m tollway.budget`` builds them."""
    config.setdefault("sweep_interval_s", 3600.0)  # tests sweep by hand unless they want the loop
    config.setdefault("key_prefix", "tw:budget:test")
    started = []
    try:
        for _ in range(count):
            spec, budget = build(
                BudgetConfig(plans=str(plans), catalog=str(ROOT / "deploy" / "models.yaml"), **config),
                MeshConfig(redis_url=redis_url),
                clock=clock,
            )
            server, port, _ = await create_server(spec, "127.0.0.1:0")
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            started.append((spec, server, channel, Replica(budget, budget_pb2_grpc.BudgetServiceStub(channel), port)))
        yield [r for *_, r in started]
    finally:
        for spec, server, channel, _ in started:
            await channel.close()
            await server.stop(None)
            assert spec.on_stop is not None
            await spec.on_stop()


def reserve_req(tenant: str = "acme", **kw: Any) -> budget_pb2.ReserveBudgetRequest:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("input_tokens", 8)
    kw.setdefault("max_output_tokens", 16)
    kw.setdefault("priority", budget_pb2.PRIORITY_INTERACTIVE)
    return budget_pb2.ReserveBudgetRequest(tenant_id=tenant, **kw)


def details(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    out: dict[str, Any] = {}
    status = rpc_status.from_call(err)
    assert status is not None
    for d in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
        ):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out[cls.__name__] = msg
    return out


async def expect(code: grpc.StatusCode, call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def reconcile(stub: budget_pb2_grpc.BudgetServiceStub, tenant: str) -> budget_pb2.ReconcileBudgetResponse:
    result = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=tenant))
    assert result.balanced, result.differences
    return result


def ledger_ops(redis_url: str, tenant: str) -> list[str]:
    client = sync_client(redis_url)  # a single Redis or a cluster (TOLLWAY_TEST_REDIS)
    try:
        return [f[b"op"].decode() for _, f in client.xrange(f"tw:budget:test:{{{tenant}}}:ledger")]
    finally:
        client.close()


# --- the client processes ---------------------------------------------------------------------


def _client_main() -> None:
    """A gateway stand-in: ``python -c 'from tests... import _client_main; _client_main()' ARGS``.

    Fires its reserves all at once (after a start line), then commits or releases every
    granted one (or, with ``abandon``, exits without either, as a SIGKILLed gateway would).
    Prints one JSON object.
    """
    args = json.loads(sys.argv[1])

    async def one(stub: budget_pb2_grpc.BudgetServiceStub, i: int, go: asyncio.Event) -> dict[str, Any]:
        await go.wait()
        req = budget_pb2.ReserveBudgetRequest(
            tenant_id=args["tenant"],
            model="gpt-4o-mini",
            input_tokens=8,
            max_output_tokens=args["max_output_tokens"],
            priority=budget_pb2.PRIORITY_INTERACTIVE,
        )
        try:
            resp = await stub.ReserveBudget(req)
        except grpc.aio.AioRpcError as err:
            return {"granted": False, "code": err.code().name}
        out = {
            "granted": True,
            "tokens": resp.reservation.tokens,
            "nanos": resp.reservation.cost_usd_nanos,
            "used_tokens_after": resp.tightest_tokens.used,
            "used_nanos_after": resp.tightest_usd.used,
        }
        if args["abandon"]:
            return out
        await asyncio.sleep(0.001 * (i % 7))  # commits interleave with other clients' reserves
        if i % 10 == 9:
            await stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=resp.reservation.name, reason="test"))
            out["released"] = True
        else:
            done = await stub.CommitBudget(
                budget_pb2.CommitBudgetRequest(name=resp.reservation.name, input_tokens=8, output_tokens=6)
            )
            out["committed_tokens"] = done.reservation.tokens
            out["committed_nanos"] = done.reservation.cost_usd_nanos
        return out

    async def run() -> list[dict[str, Any]]:
        channels = [grpc.aio.insecure_channel(t) for t in args["targets"]]
        stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in channels]
        for c in channels:
            await c.channel_ready()
        go = asyncio.Event()
        tasks = [asyncio.create_task(one(stubs[i % len(stubs)], i, go)) for i in range(args["count"])]
        await asyncio.sleep(args["start_in_s"])
        go.set()
        results = await asyncio.gather(*tasks)
        for c in channels:
            await c.close()
        return results

    print(json.dumps(asyncio.run(run())))
    sys.stdout.flush()


def _spawn_clients(ports: list[int], tenant: str, total: int, processes: int, **kw: Any) -> list[subprocess.Popen[str]]:
    procs = []
    for p in range(processes):
        args = {
            "tenant": tenant,
            "targets": [f"127.0.0.1:{port}" for port in ports],
            "count": total // processes + (1 if p < total % processes else 0),
            "max_output_tokens": kw.get("max_output_tokens", 16),
            "abandon": kw.get("abandon", False),
            "start_in_s": 1.0,  # every process reaches the start line before any fires
        }
        code = "from tests.integration.test_budget_service import _client_main; _client_main()"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
        )
    return procs


async def _burst(ports: list[int], tenant: str, total: int, processes: int = 3, **kw: Any) -> list[dict[str, Any]]:
    procs = _spawn_clients(ports, tenant, total, processes, **kw)
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=90)
        assert proc.returncode == 0
        results += json.loads(out)
    assert len(results) == total
    return results


# --- concurrency ------------------------------------------------------------------------------


async def test_500_concurrent_reserves_never_exceed_the_quota_and_counters_equal_the_ledger(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock) as reps:
        ports = [r.port for r in reps]
        token_limit, nanos_limit = FITS * PER_REQUEST_TOKENS, FITS * PER_REQUEST_NANOS
        first = await _burst(ports, "acme", 500)
        granted = [r for r in first if r["granted"]]
        refused = [r for r in first if not r["granted"]]
        assert granted and refused
        assert {r["code"] for r in refused} == {"RESOURCE_EXHAUSTED"}
        # What any reservation saw right after holding its estimate never exceeded a quota:
        # at no instant were more tokens or dollars admitted than the budget.
        assert max(r["used_tokens_after"] for r in granted) <= token_limit
        assert max(r["used_nanos_after"] for r in granted) <= nanos_limit
        # Every admitted reservation was committed or released, none is left open.
        assert all(r.get("released") or r.get("committed_tokens") == PER_REQUEST_TOKENS for r in granted)
        result = await reconcile(reps[0].stub, "acme")
        assert result.open_reservation_count == 0
        budget = await reps[1].stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="acme"))
        used = {s.quota.unit: s.used for s in budget.statuses}
        committed = sum(1 for r in granted if not r.get("released"))
        assert used[budget_pb2.QUOTA_UNIT_TOKENS] == committed * PER_REQUEST_TOKENS <= token_limit
        assert used[budget_pb2.QUOTA_UNIT_USD_NANOS] == committed * PER_REQUEST_NANOS <= nanos_limit
        assert ledger_ops(redis_url, "acme").count("reserve") == len(granted)

        # A second burst with an honest estimate (max_tokens 6 = the answer's length) fills the
        # budget exactly: no held estimate of the first burst is left to cause a false refusal.
        second = await _burst(ports, "acme", 500, max_output_tokens=6)
        admitted = [r for r in second if r["granted"]]
        left = FITS - committed
        assert sum(1 for r in admitted if not r.get("released")) <= left
        # Released ones gave their room back, so bursts go on until the budget is spent exactly.
        while True:
            budget = await reps[0].stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="acme"))
            used = {s.quota.unit: s.used for s in budget.statuses}
            if used[budget_pb2.QUOTA_UNIT_TOKENS] == token_limit:
                break
            more = await _burst(ports, "acme", 60, max_output_tokens=6)
            assert any(r["granted"] for r in more), "room was left but every request was refused"
        assert used[budget_pb2.QUOTA_UNIT_USD_NANOS] == nanos_limit
        await reconcile(reps[1].stub, "acme")
        err = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED, reps[0].stub.ReserveBudget(reserve_req(max_output_tokens=1))
        )
        assert "day token quota" in err.details()


async def test_reservations_of_a_killed_gateway_expire_through_the_sweeper_and_are_ledgered(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, sweep_interval_s=0.05, reservation_ttl_s=30) as reps:
        ports = [r.port for r in reps]
        abandoned = await _burst(ports, "delta", 120, processes=2, abandon=True)
        held = [r for r in abandoned if r["granted"]]
        assert held
        before = await reps[0].stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="delta"))
        assert any(s.used > 0 for s in before.statuses)
        clock.advance(31)
        for _ in range(400):  # the replicas' sweepers run on their own; wait for them (bounded)
            result = await reps[0].stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id="delta"))
            if result.open_reservation_count == 0:
                break
            await asyncio.sleep(0.05)
        assert result.open_reservation_count == 0
        assert result.balanced, result.differences
        after = await reps[1].stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="delta"))
        assert all(s.used == 0 for s in after.statuses)
        ops = ledger_ops(redis_url, "delta")
        assert ops.count("reserve") == ops.count("expire") == len(held)
        usage = await reps[0].stub.GetUsage(budget_pb2.GetUsageRequest(tenant_id="delta", end_date="2026-01-01"))
        assert usage.rows[0].expired_count == len(held) and usage.rows[0].request_count == 0


async def test_a_late_commit_after_expiry_still_charges_the_real_usage(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1, reservation_ttl_s=10) as (rep,):
        r = await rep.stub.ReserveBudget(reserve_req("kilo"))
        clock.advance(11)
        assert await rep.budget.sweep() == 1
        done = await rep.stub.CommitBudget(
            budget_pb2.CommitBudgetRequest(name=r.reservation.name, input_tokens=8, output_tokens=6, partial=True)
        )
        assert done.reservation.state == budget_pb2.RESERVATION_STATE_COMMITTED
        assert done.delta_tokens == PER_REQUEST_TOKENS  # the expiry had returned the whole estimate
        b = await rep.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="kilo"))
        assert {s.quota.unit: s.used for s in b.statuses}[budget_pb2.QUOTA_UNIT_TOKENS] == PER_REQUEST_TOKENS
        assert ledger_ops(redis_url, "kilo") == ["reserve", "expire", "commit"]
        await reconcile(rep.stub, "kilo")


# --- one reservation --------------------------------------------------------------------------


async def test_commit_returns_the_difference_and_is_idempotent(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        r = await rep.stub.ReserveBudget(reserve_req("gamma", input_tokens=100, max_output_tokens=50))
        res = r.reservation
        assert res.tokens == 150 and res.cost_usd_nanos == 100 * 150 + 50 * 600
        assert res.pricing_version.startswith("p-")
        commit = budget_pb2.CommitBudgetRequest(
            name=res.name, input_tokens=100, output_tokens=20, cached_input_tokens=60, provider="openai"
        )
        first = await rep.stub.CommitBudget(commit)
        # Cached input tokens at their own price: 40 x 150 + 60 x 75 + 20 x 600 nanos.
        assert first.reservation.cost_usd_nanos == 40 * 150 + 60 * 75 + 20 * 600
        assert first.delta_tokens == 120 - 150
        assert first.delta_cost_usd_nanos == first.reservation.cost_usd_nanos - res.cost_usd_nanos
        again = await rep.stub.CommitBudget(commit)
        assert again == first
        err = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            rep.stub.CommitBudget(budget_pb2.CommitBudgetRequest(name=res.name, input_tokens=100, output_tokens=21)),
        )
        assert details(err)["ErrorInfo"].reason == "ALREADY_COMMITTED"
        await expect(
            grpc.StatusCode.FAILED_PRECONDITION, rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=res.name))
        )
        await reconcile(rep.stub, "gamma")
        assert ledger_ops(redis_url, "gamma").count("commit") == 1


async def test_release_is_idempotent_and_a_released_reservation_cannot_be_committed(
    redis_url: str, plans_file: Path
) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        r = await rep.stub.ReserveBudget(reserve_req("gamma"))
        name = r.reservation.name
        one = await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=name, reason="provider_error"))
        two = await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=name))
        assert one.reservation.state == two.reservation.state == budget_pb2.RESERVATION_STATE_RELEASED
        err = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            rep.stub.CommitBudget(budget_pb2.CommitBudgetRequest(name=name, input_tokens=8, output_tokens=1)),
        )
        assert details(err)["ErrorInfo"].reason == "ALREADY_RELEASED"
        await reconcile(rep.stub, "gamma")


async def test_a_retried_reserve_with_the_same_request_id_holds_nothing_more(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        before = await rep.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="gamma"))
        reserves = ledger_ops(redis_url, "gamma").count("reserve")
        a = await rep.stub.ReserveBudget(reserve_req("gamma", request_id="req-42"))
        b = await rep.stub.ReserveBudget(reserve_req("gamma", request_id="req-42"))
        assert a.reservation.name == b.reservation.name
        after = await rep.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="gamma"))
        assert after.statuses[0].used - before.statuses[0].used == 24
        assert ledger_ops(redis_url, "gamma").count("reserve") == reserves + 1
        await rep.stub.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=a.reservation.name))
        await reconcile(rep.stub, "gamma")


async def test_refusal_names_the_quota_and_when_it_resets(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        # beta: 1,000 tokens a minute. Batch may fill 800, normal 900, interactive all of it.
        ok = await rep.stub.ReserveBudget(
            reserve_req("beta", input_tokens=750, max_output_tokens=50, priority=budget_pb2.PRIORITY_BATCH)
        )
        assert ok.tightest_tokens.remaining == 0
        batch = reserve_req("beta", input_tokens=10, max_output_tokens=10, priority=budget_pb2.PRIORITY_BATCH)
        err = await expect(grpc.StatusCode.RESOURCE_EXHAUSTED, rep.stub.ReserveBudget(batch))
        d = details(err)
        assert d["ErrorInfo"].reason == "BUDGET_EXHAUSTED"
        assert d["ErrorInfo"].metadata["window"] == "minute" and d["ErrorInfo"].metadata["priority"] == "batch"
        assert [v.subject for v in d["QuotaFailure"].violations] == ["tenants/beta"]
        assert "minute token quota" in d["QuotaFailure"].violations[0].description
        assert 0 < d["RetryInfo"].retry_delay.seconds <= 60
        assert dict(err.trailing_metadata()).get("retry-after")
        normal = reserve_req("beta", input_tokens=10, max_output_tokens=10, priority=budget_pb2.PRIORITY_NORMAL)
        await rep.stub.ReserveBudget(normal)  # 820 <= 900
        await rep.stub.ReserveBudget(reserve_req("beta", input_tokens=150, max_output_tokens=30))  # interactive: 1000
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED, rep.stub.ReserveBudget(reserve_req("beta", max_output_tokens=1))
        )
        clock.advance(60)  # the next minute has a fresh counter
        await rep.stub.ReserveBudget(batch)
        await reconcile(rep.stub, "beta")


async def test_key_feature_and_conversation_quotas_apply_to_their_subjects(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    clock.advance(3600 * 5)
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        await rep.stub.ReserveBudget(reserve_req("beta", api_key_id="k1", input_tokens=250, max_output_tokens=40))
        err = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", api_key_id="k1", input_tokens=10, max_output_tokens=10)),
        )
        assert [v.subject for v in details(err)["QuotaFailure"].violations] == ["tenants/beta/keys/k1"]
        await rep.stub.ReserveBudget(reserve_req("beta", api_key_id="k2", input_tokens=10, max_output_tokens=10))
        err = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", feature="summarise", input_tokens=90, max_output_tokens=20)),
        )
        assert details(err)["QuotaFailure"].violations[0].subject == "tenants/beta/features/summarise"
        await rep.stub.ReserveBudget(reserve_req("beta", feature="chat", input_tokens=90, max_output_tokens=20))
        clock.advance(120)  # a conversation's budget does not reset with the minute
        await rep.stub.ReserveBudget(reserve_req("beta", conversation_id="c1", input_tokens=150, max_output_tokens=40))
        clock.advance(120)
        err = await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", conversation_id="c1", input_tokens=10, max_output_tokens=10)),
        )
        d = details(err)
        assert d["QuotaFailure"].violations[0].subject == "tenants/beta/conversations/c1"
        assert "RetryInfo" not in d  # it never resets
        await reconcile(rep.stub, "beta")


async def test_fewer_output_tokens_are_granted_only_when_the_caller_accepts_them(
    redis_url: str, plans_file: Path
) -> None:
    clock = Clock()
    clock.advance(3600 * 9)
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        await rep.stub.ReserveBudget(reserve_req("beta", input_tokens=900, max_output_tokens=60))
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", input_tokens=20, max_output_tokens=64)),
        )
        r = await rep.stub.ReserveBudget(
            reserve_req("beta", input_tokens=20, max_output_tokens=64, min_output_tokens=8)
        )
        assert r.reservation.granted_output_tokens == 1000 - 960 - 20
        assert r.tightest_tokens.remaining == 0
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rep.stub.ReserveBudget(reserve_req("beta", input_tokens=1, max_output_tokens=64, min_output_tokens=1)),
        )
        await reconcile(rep.stub, "beta")


# --- bad input --------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_the_field_named_and_nothing_changed(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    clock.advance(3600 * 13)  # beta's minute and hour counters of other tests are not this one's
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        s = rep.stub
        before = ledger_ops(redis_url, "beta")
        for req, code, field in [
            (reserve_req("beta", input_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "input_tokens"),
            (reserve_req("beta", max_output_tokens=-5), grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens"),
            (reserve_req("beta", max_output_tokens=65), grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens"),
            (reserve_req("", model="gpt-4o-mini"), grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
            (reserve_req("beta", feature="a|b"), grpc.StatusCode.INVALID_ARGUMENT, "feature"),
            (reserve_req("beta", priority=7), grpc.StatusCode.INVALID_ARGUMENT, "priority"),
            (reserve_req("nobody"), grpc.StatusCode.NOT_FOUND, ""),
            (reserve_req("beta", model="no-such-model"), grpc.StatusCode.NOT_FOUND, ""),
        ]:
            err = await expect(code, s.ReserveBudget(req))
            if field:
                assert field in [v.field for v in details(err)["BadRequest"].field_violations], err.details()
        r = await s.ReserveBudget(reserve_req("beta", input_tokens=10, max_output_tokens=10))
        name = r.reservation.name
        for req, code in [
            (budget_pb2.CommitBudgetRequest(name="tenants/beta/reservations/" + "0" * 32), grpc.StatusCode.NOT_FOUND),
            (budget_pb2.CommitBudgetRequest(name="bogus"), grpc.StatusCode.INVALID_ARGUMENT),
            (budget_pb2.CommitBudgetRequest(name=name, input_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT),
            (
                budget_pb2.CommitBudgetRequest(name=name, input_tokens=5, cached_input_tokens=6),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            # gpt-4o-mini writes at most 16,384 tokens and reads 128,000: usage it cannot have made.
            (
                budget_pb2.CommitBudgetRequest(name=name, input_tokens=10, output_tokens=20000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                budget_pb2.CommitBudgetRequest(name=name, input_tokens=127_000, output_tokens=2000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            await expect(code, s.CommitBudget(req))
        assert ledger_ops(redis_url, "beta") == [*before, "reserve"]  # none of those changed anything
        await s.ReleaseBudget(budget_pb2.ReleaseBudgetRequest(name=name))
        await expect(grpc.StatusCode.NOT_FOUND, s.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="nobody")))
        await expect(grpc.StatusCode.NOT_FOUND, s.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="beta", plan="gold")))
        await expect(grpc.StatusCode.NOT_FOUND, s.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="nobody")))
        err = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            s.SetBudget(
                budget_pb2.SetBudgetRequest(
                    tenant_id="beta",
                    quotas=[
                        budget_pb2.Quota(
                            scope=budget_pb2.QUOTA_SCOPE_TENANT, unit=budget_pb2.QUOTA_UNIT_TOKENS, limit=5
                        )
                    ],
                )
            ),
        )
        assert "quotas[0].window" in err.details()
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            s.GetUsage(budget_pb2.GetUsageRequest(tenant_id="beta", start_date="2026-13-01")),
        )
        await reconcile(s, "beta")


def test_a_malformed_plans_file_stops_the_service_at_start_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "budget.yaml"
    bad.write_text(PLANS.replace("window: minute, tokens: 1000", "window: minute, tokens: 1000, tokns: 5"))
    with pytest.raises(PlansError, match=r"plans\.small\.quotas\[0\]\.tokns: unknown key"):
        build(BudgetConfig(plans=str(bad)), MeshConfig(redis_url="redis://127.0.0.1:1/0"))


async def test_a_bad_edit_of_the_plans_file_keeps_the_old_plans(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), count=1) as (rep,):
        await asyncio.to_thread(plans_file.write_text, PLANS + "\nsurprise: 1\n")
        rep.budget.reload_plans()
        assert "surprise: unknown key" in rep.budget._plans_source.last_error  # type: ignore[union-attr]
        await rep.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="beta"))
        await asyncio.to_thread(plans_file.write_text, PLANS.replace("beta: {plan: small}", "beta: {plan: roomy}"))
        rep.budget.reload_plans()
        b = await rep.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="beta"))
        assert b.budget.plan == "roomy"


# --- budgets and usage ------------------------------------------------------------------------


async def test_set_budget_is_seen_by_every_replica(redis_url: str, plans_file: Path) -> None:
    async with replicas(redis_url, plans_file, Clock(), overrides_poll_s=0.05) as (a, b):
        quota = budget_pb2.Quota(
            scope=budget_pb2.QUOTA_SCOPE_TENANT,
            window=budget_pb2.WINDOW_DAY,
            unit=budget_pb2.QUOTA_UNIT_TOKENS,
            limit=30,
        )
        new = await a.stub.SetBudget(
            budget_pb2.SetBudgetRequest(tenant_id="newco", plan="roomy", quotas=[quota], max_tokens_per_request=20)
        )
        assert new.budget.overridden and new.budget.max_tokens_per_request == 20
        for _ in range(200):  # b polls the overrides; wait for it (bounded)
            with contextlib.suppress(grpc.aio.AioRpcError):
                got = await b.stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id="newco"))
                break
            await asyncio.sleep(0.05)
        assert [q.limit for q in got.budget.quotas] == [30]
        await b.stub.ReserveBudget(reserve_req("newco", input_tokens=10, max_output_tokens=20))
        await expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED, b.stub.ReserveBudget(reserve_req("newco", max_output_tokens=1))
        )
        cleared = await a.stub.SetBudget(
            budget_pb2.SetBudgetRequest(tenant_id="newco", plan="roomy", clear_overrides=True)
        )
        assert [q.limit for q in cleared.budget.quotas] == [100000000]


async def test_usage_is_grouped_by_model_feature_and_key_and_paged(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1) as (rep,):
        await rep.stub.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="usageco", plan="roomy"))
        for _day in range(3):
            for feature, key in (("chat", "k1"), ("search", "k2")):
                r = await rep.stub.ReserveBudget(reserve_req("usageco", feature=feature, api_key_id=key))
                await rep.stub.CommitBudget(
                    budget_pb2.CommitBudgetRequest(
                        name=r.reservation.name, model="gpt-4o", input_tokens=8, output_tokens=6, provider="openai"
                    )
                )
            clock.advance(86400)
        by_model = await rep.stub.GetUsage(
            budget_pb2.GetUsageRequest(
                tenant_id="usageco", group_by=budget_pb2.USAGE_GROUP_MODEL, end_date="2026-01-03"
            )
        )
        assert [(r.date, r.group, r.request_count) for r in by_model.rows] == [
            ("2026-01-01", "gpt-4o", 2),
            ("2026-01-02", "gpt-4o", 2),
            ("2026-01-03", "gpt-4o", 2),
        ]
        assert by_model.rows[0].cost_usd_nanos == 2 * (8 * 2500 + 6 * 10000)  # priced as gpt-4o
        page = await rep.stub.GetUsage(
            budget_pb2.GetUsageRequest(
                tenant_id="usageco", group_by=budget_pb2.USAGE_GROUP_FEATURE, end_date="2026-01-03", page_size=4
            )
        )
        rest = await rep.stub.GetUsage(
            budget_pb2.GetUsageRequest(
                tenant_id="usageco",
                group_by=budget_pb2.USAGE_GROUP_FEATURE,
                end_date="2026-01-03",
                page_size=4,
                page_token=page.next_page_token,
            )
        )
        assert len(page.rows) == 4 and len(rest.rows) == 2 and not rest.next_page_token
        assert {r.group for r in page.rows} == {"chat", "search"}
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            rep.stub.GetUsage(budget_pb2.GetUsageRequest(tenant_id="usageco", page_token=page.next_page_token)),
        )
        await reconcile(rep.stub, "usageco")


async def test_pruned_counters_stay_reconciled(redis_url: str, plans_file: Path) -> None:
    clock = Clock()
    async with replicas(redis_url, plans_file, clock, count=1, counter_grace_s=60) as (rep,):
        await rep.stub.SetBudget(budget_pb2.SetBudgetRequest(tenant_id="pruneco", plan="small"))
        r = await rep.stub.ReserveBudget(reserve_req("pruneco", api_key_id="k9", input_tokens=10, max_output_tokens=10))
        await rep.stub.CommitBudget(
            budget_pb2.CommitBudgetRequest(name=r.reservation.name, input_tokens=10, output_tokens=3)
        )
        clock.advance(3 * 3600)  # the minute and hour windows ended long ago
        assert await rep.budget.prune() >= 3
        assert "prune" in ledger_ops(redis_url, "pruneco")
        result = await reconcile(rep.stub, "pruneco")
        assert result.counter_count == 0
