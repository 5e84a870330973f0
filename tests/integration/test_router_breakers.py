"""Circuit breakers on a real redis-server: the shared state machine, fail-fast without
network calls, the single half-open probe, and two router processes sharing one breaker."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import RedisServer, RouterProcess
from tests.support.polling import eventually
from tests.support.redis_cluster import local_redis_cluster
from tests.support.redis_server import TEST_REDIS
from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.common.route import RouteStarted
from tollway.common.v1 import common_pb2
from tollway.mesh import errors
from tollway.mesh.errors import from_rpc_error
from tollway.mesh.redis import connect
from tollway.router.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, BreakerSettings, Permit
from tollway.router.engine import Router
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.store import RedisBreakerStore
from tollway.router.v1 import router_pb2, router_pb2_grpc

FAST = BreakerSettings(
    failure_threshold=3, error_rate=0.0, window_s=10, min_requests=100, cooldown_s=0.4, probe_timeout_s=5
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_url(redis_server: RedisServer) -> Iterator[str]:
    """The breakers' Redis: this server, or a Redis Cluster under TOLLWAY_TEST_REDIS=cluster."""
    if TEST_REDIS == "cluster":
        with local_redis_cluster() as cluster:
            yield cluster.url
    else:
        yield redis_server.url


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(store_url)
    yield c
    await c.aclose()


def board(client: aioredis.Redis, settings: BreakerSettings = FAST, replica: str = "r1") -> Breakers:
    # A store call may take longer than the service's 0.5 s on a loaded test machine (a cluster
    # client's first call to a node connects first); these tests are about the shared state, and
    # a fail-open read would let a call through that they expect refused. The bound's own test
    # (below) sets its own.
    return Breakers(RedisBreakerStore(client), settings, replica=replica, store_timeout_s=5.0)


def name() -> str:
    return f"p/m-{uuid.uuid4().hex[:8]}/default"


async def _probe_granted(b: Breakers, key: str) -> bool:
    return (await b.acquire(key)).probe


async def fail(b: Breakers, key: str, times: int = 1) -> None:
    for _ in range(times):
        permit = await b.acquire(key)
        assert permit.allowed
        await b.record(permit, ok=False, detail="SERVER_ERROR: HTTP 500")


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# -- the state machine -----------------------------------------------------------------


async def test_opens_after_n_consecutive_failures(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    await fail(b, key, 2)
    assert (await b.snapshots([key]))[0].state == CLOSED
    await fail(b, key)
    snap = (await b.snapshots([key]))[0]
    assert snap.state == OPEN and snap.consecutive_failures == 3 and snap.last_error.startswith("SERVER_ERROR")
    assert snap.next_probe_at_ms - snap.opened_at_ms == 400
    [t] = await b.transitions(10, breaker=key)
    assert (t.from_state, t.to_state, t.replica) == (CLOSED, OPEN, "r1")
    assert t.reason.startswith("3 consecutive failures")
    # Visible in this replica's Prometheus metrics too.
    assert REGISTRY.get_sample_value("tollway_router_breaker_state", {"breaker": key}) == 2
    labels = {"breaker": key, "from_state": CLOSED, "to_state": OPEN}
    assert REGISTRY.get_sample_value("tollway_router_breaker_transitions_total", labels) == 1
    await b.acquire(key)
    assert REGISTRY.get_sample_value("tollway_router_breaker_rejections_total", {"breaker": key}) == 1


async def test_a_success_resets_the_consecutive_count(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    await fail(b, key, 2)
    permit = await b.acquire(key)
    await b.record(permit, ok=True)
    await fail(b, key, 2)
    snap = (await b.snapshots([key]))[0]
    assert snap.state == CLOSED and snap.consecutive_failures == 2
    assert (snap.window_requests, snap.window_failures) == (5, 4)


async def test_opens_on_the_error_rate_over_the_window(client: aioredis.Redis) -> None:
    settings = dataclasses.replace(FAST, failure_threshold=100, error_rate=0.5, min_requests=6)
    b, key = board(client, settings), name()
    for ok in (True, False, True, False, True):
        permit = await b.acquire(key)
        await b.record(permit, ok=ok, detail="TIMEOUT")
    assert (await b.snapshots([key]))[0].state == CLOSED  # too few calls to judge
    await fail(b, key)
    assert (await b.snapshots([key]))[0].state == OPEN
    [t] = await b.transitions(1, breaker=key)
    assert t.reason.startswith("3 of 6 calls failed")


async def test_fails_fast_while_open_without_any_network_call(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    await fail(b, key, 3)
    before = await evalsha_calls(client)
    for _ in range(20):
        permit = await b.acquire(key)
        assert not permit.allowed and permit.state == OPEN and 0 < permit.retry_in_s <= 0.4
    # Known open locally: not even Redis was asked.
    assert await evalsha_calls(client) == before


async def test_another_replica_learns_it_is_open_from_redis(client: aioredis.Redis) -> None:
    a, other, key = board(client, replica="a"), board(client, replica="b"), name()
    await fail(a, key, 3)
    permit = await other.acquire(key)
    assert not permit.allowed and permit.state == OPEN


async def test_half_opens_after_the_cooldown_with_a_single_probe(client: aioredis.Redis) -> None:
    replicas = [board(client, replica=f"r{i}") for i in range(4)]
    key = name()
    await fail(replicas[0], key, 3)
    await asyncio.sleep(0.45)
    permits = await asyncio.gather(*(b.acquire(key) for b in replicas for _ in range(5)))
    probes = [p for p in permits if p.allowed]
    assert len(probes) == 1 and probes[0].probe and probes[0].state == HALF_OPEN
    assert all(p.state == HALF_OPEN for p in permits if not p.allowed)


async def test_a_successful_probe_closes_it(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    await fail(b, key, 3)
    await asyncio.sleep(0.45)
    probe = await b.acquire(key)
    await b.record(probe, ok=True)
    snap = (await b.snapshots([key]))[0]
    assert snap.state == CLOSED and snap.consecutive_failures == 0 and snap.window_requests == 0
    assert [(t.from_state, t.to_state) for t in await b.transitions(10, breaker=key)] == [
        (HALF_OPEN, CLOSED),
        (OPEN, HALF_OPEN),
        (CLOSED, OPEN),
    ]
    assert (await b.acquire(key)).allowed


async def test_a_failed_probe_reopens_it_for_another_cooldown(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    await fail(b, key, 3)
    await asyncio.sleep(0.45)
    probe = await b.acquire(key)
    await b.record(probe, ok=False, detail="CONNECTION: refused")
    assert (await b.snapshots([key]))[0].state == OPEN
    assert not (await b.acquire(key)).allowed
    [t] = await b.transitions(1, breaker=key)
    assert (t.from_state, t.to_state) == (HALF_OPEN, OPEN) and "probe failed" in t.reason


async def test_an_abandoned_probe_frees_the_lease(client: aioredis.Redis) -> None:
    a, other, key = board(client, replica="a"), board(client, replica="b"), name()
    await fail(a, key, 3)
    await asyncio.sleep(0.45)
    probe = await a.acquire(key)
    assert probe.probe and not (await other.acquire(key)).allowed
    a.abandon(probe)  # frees the lease in the background
    await eventually(lambda: _probe_granted(other, key), what="the abandoned probe's lease freed")


async def test_a_stuck_probe_lease_expires(client: aioredis.Redis) -> None:
    settings = dataclasses.replace(FAST, probe_timeout_s=0.2)
    a, other, key = board(client, settings, "a"), board(client, settings, "b"), name()
    await fail(a, key, 3)
    await asyncio.sleep(0.45)
    assert (await a.acquire(key)).probe  # this replica "dies" holding the probe
    assert not (await other.acquire(key)).allowed
    await asyncio.sleep(0.25)
    assert (await other.acquire(key)).probe


async def test_a_late_result_does_not_move_an_open_breaker(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    early = [await b.acquire(key) for _ in range(4)]
    for permit in early[:3]:
        await b.record(permit, ok=False, detail="x")
    await b.record(early[3], ok=True)  # began before it opened; must not close it
    assert (await b.snapshots([key]))[0].state == OPEN


async def test_transitions_page_newest_first(client: aioredis.Redis) -> None:
    b, key = board(client), name()
    for _ in range(3):
        await fail(b, key, 3)
        await asyncio.sleep(0.45)
        probe = await b.acquire(key)
        await b.record(probe, ok=True)
    first = await b.transitions(4, breaker=key)
    rest = await b.transitions(100, before_id=first[-1].id, breaker=key)
    assert len(first) == 4 and len(rest) == 5
    assert [t.at_ms for t in first + rest] == sorted((t.at_ms for t in first + rest), reverse=True)


class CountingStore(RedisBreakerStore):
    calls = 0

    async def acquire(self, *args: Any) -> Any:
        self.calls += 1
        return await super().acquire(*args)


async def test_redis_down_fails_open_without_asking_it_on_every_call(redis_server: RedisServer) -> None:
    dead = aioredis.Redis(port=1, socket_connect_timeout=0.2)
    store = CountingStore(dead)
    b = Breakers(store, FAST, replica="r", store_timeout_s=0.3)
    permits = [await b.acquire(name()) for _ in range(20)]
    assert all(p.allowed and p.state == "unknown" for p in permits)
    for p in permits:
        await b.record(p, ok=False)
    # One bounded attempt, then the store is left alone for a while: no stall per request.
    assert store.calls == 1
    with pytest.raises(errors.Unavailable, match="cannot read the breaker state"):
        await Breakers(RedisBreakerStore(dead), FAST).snapshots(["x"])
    await dead.aclose()


# -- the engine with breakers ----------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeHTTPServer]:
    server = fake_openai.make_server()
    await server.start()
    yield server
    await server.kill()


async def test_an_open_breaker_sends_requests_straight_to_the_fallback(
    client: aioredis.Redis, fake: FakeHTTPServer
) -> None:
    tag = uuid.uuid4().hex[:6]
    catalog = parse_catalog(
        {
            "providers": {f"p{tag}": {"base_url": f"http://127.0.0.1:{fake.port}/v1", "timeout_s": 5}},
            "models": {
                "down": {"provider": f"p{tag}", "upstream_model": "fake-500", "fallbacks": ["up"]},
                "up": {"provider": f"p{tag}", "upstream_model": "fake-ok"},
            },
            "routing": {"model_fallback": True},
        },
        env={},
    )
    adapter = OpenAICompatAdapter()
    router = Router(catalog, {"openai_compat": adapter}, breakers=board(client))
    request = ChatRequest("down", (ChatMessage("user", "hi"),))

    paths = []
    for _ in range(3):
        events = [e async for e in router.generate(request)]
        assert isinstance(events[0], RouteStarted) and events[0].model == "up"
        paths.append(events[0].fallback_path)
    assert paths[0] == ("down (SERVER_ERROR)",) and paths[-1] == ("down (BREAKER_OPEN)",)
    calls_to_down = sum(1 for r in fake.log if r.json()["model"] == "fake-500")
    assert calls_to_down == 3  # two on the first request, one on the second: then open

    lone = Router(
        parse_catalog(
            {
                "providers": {f"p{tag}": {"base_url": f"http://127.0.0.1:{fake.port}/v1"}},
                "models": {"down": {"provider": f"p{tag}", "upstream_model": "fake-500"}},
            },
            env={},
        ),
        {"openai_compat": adapter},
        breakers=router.breakers,
    )
    with pytest.raises(errors.Unavailable) as info:
        [e async for e in lone.generate(request)]
    assert info.value.reason == "CIRCUIT_OPEN" and info.value.retry_after_s is not None
    assert f"p{tag}/down/default" in info.value.message
    assert sum(1 for r in fake.log if r.json()["model"] == "fake-500") == 3  # no network call
    await adapter.aclose()


# -- two router processes share one breaker --------------------------------------------


def _request(model: str) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(model=model, messages=[common_pb2.Message(role="user", content="hi")])


async def _generate(stub: router_pb2_grpc.RouterServiceStub, model: str) -> list[Any]:
    try:
        return [e async for e in stub.Generate(_request(model), timeout=10)]
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


async def _state(stub: router_pb2_grpc.RouterServiceStub, key: str) -> int:
    reply = await stub.ListBreakers(router_pb2.ListBreakersRequest(name_prefix=key), timeout=5)
    return reply.breakers[0].state


async def test_two_router_processes_share_the_breaker(redis_server: RedisServer, fake: FakeHTTPServer) -> None:
    tag = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="routers-"))
    catalog = workdir / "models.yaml"
    catalog.write_text(
        f"providers:\n  shared{tag}: {{wire: openai_compat, base_url: 'http://127.0.0.1:{fake.port}/v1'}}\n"
        f"models:\n  flaky: {{provider: shared{tag}, upstream_model: fake-ok}}\n"
    )
    key = f"shared{tag}/flaky/default"
    settings = {"breaker_failure_threshold": 3, "breaker_cooldown_s": 1.0, "breaker_refresh_s": 0.2}
    a = await asyncio.to_thread(RouterProcess, "router-a", workdir, catalog, redis_server.url, **settings)
    b = await asyncio.to_thread(RouterProcess, "router-b", workdir, catalog, redis_server.url, **settings)
    try:
        async with grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
            stub_a, stub_b = router_pb2_grpc.RouterServiceStub(ch_a), router_pb2_grpc.RouterServiceStub(ch_b)
            assert (await _generate(stub_b, "flaky"))[-1].HasField("completed")  # healthy

            fake.override = fake_openai.outage(500)
            for _ in range(2):  # 2 attempts each (interactive retry): the third failure opens it
                with pytest.raises(errors.Unavailable):
                    await _generate(stub_a, "flaky")
            assert await _state(stub_b, key) == router_pb2.BREAKER_STATE_OPEN

            # B never saw a failure, yet refuses without calling the provider.
            seen = fake.stats.requests
            with pytest.raises(errors.Unavailable) as info:
                await _generate(stub_b, "flaky")
            assert info.value.reason == "CIRCUIT_OPEN" and fake.stats.requests == seen

            fake.override = None
            await asyncio.sleep(1.1)  # the cooldown
            events = await _generate(stub_b, "flaky")  # B's probe succeeds and closes it for everyone
            assert events[0].started.model == "flaky"
            assert await _state(stub_a, key) == router_pb2.BREAKER_STATE_CLOSED
            assert (await _generate(stub_a, "flaky"))[-1].HasField("completed")

            page = await stub_a.ListBreakerTransitions(
                router_pb2.ListBreakerTransitionsRequest(breaker=key, page_size=10), timeout=5
            )
            steps = [(t.from_state, t.to_state) for t in reversed(page.transitions)]
            assert steps == [
                (router_pb2.BREAKER_STATE_CLOSED, router_pb2.BREAKER_STATE_OPEN),
                (router_pb2.BREAKER_STATE_OPEN, router_pb2.BREAKER_STATE_HALF_OPEN),
                (router_pb2.BREAKER_STATE_HALF_OPEN, router_pb2.BREAKER_STATE_CLOSED),
            ]
            replicas = [t.replica.rsplit(":", 1)[1] for t in reversed(page.transitions)]
            assert replicas == [str(a.proc.pid), str(b.proc.pid), str(b.proc.pid)]
            assert all(t.time.seconds > time.time() - 60 for t in page.transitions)
    finally:
        a.stop()
        b.stop()


# -- a refused connection: the short cooldown -------------------------------------------

# The full cooldown is long enough that a test which sees a probe granted can only have seen
# the short one.
SHORT = dataclasses.replace(FAST, cooldown_s=30.0, refused_cooldown_s=0.2)


async def fail_with(b: Breakers, key: str, times: int, refused: bool) -> None:
    for _ in range(times):
        permit = await b.acquire(key)
        assert permit.allowed
        detail = "CONNECTION: cannot connect: Connection refused" if refused else "TIMEOUT: no first token"
        await b.record(permit, ok=False, detail=detail, refused=refused)


async def _cooldown_ms(b: Breakers, key: str) -> int:
    snap = (await b.snapshots([key]))[0]
    assert snap.state == OPEN
    return snap.next_probe_at_ms - snap.opened_at_ms


async def test_refused_connections_open_it_for_the_short_cooldown(client: aioredis.Redis) -> None:
    b, key = board(client, SHORT), name()
    await fail_with(b, key, 3, refused=True)
    assert await _cooldown_ms(b, key) == 200
    refused = await b.acquire(key)
    assert not refused.allowed and 0 < refused.retry_in_s <= 0.2  # what CIRCUIT_OPEN's retry-after says
    probe = await eventually(lambda: _probe_granted(b, key), what="a probe after the short cooldown")
    assert probe
    [t] = await b.transitions(1, breaker=key)
    assert (t.from_state, t.to_state) == (OPEN, HALF_OPEN) and "200 ms" in t.reason


async def _probe(b: Breakers, key: str) -> Permit | None:
    permit = await b.acquire(key)
    return permit if permit.probe else None


async def test_a_refused_probe_reopens_it_for_the_short_cooldown_again(client: aioredis.Redis) -> None:
    b, key = board(client, SHORT), name()
    await fail_with(b, key, 3, refused=True)
    for _ in range(2):  # a server that stays down is probed again and again, cheaply
        probe = await eventually(lambda: _probe(b, key), what="a probe after the short cooldown")
        await b.record(probe, ok=False, detail="CONNECTION: refused", refused=True)
        assert await _cooldown_ms(b, key) == 200


async def test_failures_that_cost_the_provider_keep_the_full_cooldown(client: aioredis.Redis) -> None:
    b, key = board(client, SHORT), name()
    await fail_with(b, key, 3, refused=False)
    assert await _cooldown_ms(b, key) == 30_000

    # A probe that reached a server which then failed it (refusals had opened the breaker)
    # says the server is up but unwell: the full cooldown this time.
    other = name()
    await fail_with(b, other, 3, refused=True)
    probe = await eventually(lambda: _probe(b, other), what="a probe after the short cooldown")
    await b.record(probe, ok=False, detail="SERVER_ERROR: HTTP 500")
    assert await _cooldown_ms(b, other) == 30_000


async def test_a_provider_restarted_on_its_port_gets_traffic_back_after_the_short_cooldown(
    client: aioredis.Redis,
) -> None:
    """End to end: the router meets a dead port (refused), opens the breaker, and sends the
    next request through once a server listens there again, well before the full cooldown."""
    server = fake_openai.make_server()
    port = await server.start()
    await server.kill()  # the provider "dies": its port refuses connections
    tag = uuid.uuid4().hex[:6]
    catalog = parse_catalog(
        {
            "providers": {f"r{tag}": {"base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 5}},
            "models": {"m": {"provider": f"r{tag}", "upstream_model": "fake-ok"}},
        },
        env={},
    )
    adapter = OpenAICompatAdapter()
    router = Router(catalog, {"openai_compat": adapter}, breakers=board(client, SHORT))
    request = ChatRequest("m", (ChatMessage("user", "hi"),))
    key = f"r{tag}/m/default"
    try:
        while True:  # interactive requests: two refused attempts each, until the breaker opens
            with pytest.raises(errors.Unavailable) as info:
                [e async for e in router.generate(request)]
            if info.value.reason == "CIRCUIT_OPEN":
                break
            assert "Connection refused" in info.value.message or "cannot connect" in info.value.message
        assert await _cooldown_ms(router.breakers, key) == 200

        await server.start(port)  # the supervisor restarted it on the same port

        async def answered() -> bool:
            try:
                events = [e async for e in router.generate(request)]
            except errors.Unavailable as exc:
                assert exc.reason == "CIRCUIT_OPEN", exc.message  # refused by the breaker, nothing else
                return False
            return isinstance(events[0], RouteStarted) and events[0].model == "m"

        # Far sooner than the 30 s cooldown: only the short one can let this through.
        await eventually(answered, timeout_s=10, what="an answer from the restarted provider")
        assert (await router.breakers.snapshots([key]))[0].state == CLOSED
    finally:
        await adapter.aclose()
        await server.kill()
