"""Provider limits on a real redis-server through the real router: the script agrees with
the arithmetic, two router processes share one deployment's limit, a limited deployment is
skipped for another, a request waits for the window and is served, and one that cannot be
served is refused naming the limit. Providers are the wire-exact OpenAI fake."""

from __future__ import annotations

import asyncio
import random
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from redis.crc import key_slot

from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import RedisServer, RouterProcess
from tollway.common.catalog import Deployment, parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.common.route import RouteStarted
from tollway.common.v1 import common_pb2
from tollway.mesh import errors
from tollway.router.engine import Router
from tollway.router.limits import BUCKET_MS, ProviderLimits, check
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.store import RedisLimitStore, limit_key
from tollway.router.v1 import router_pb2, router_pb2_grpc


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeHTTPServer]:
    server = fake_openai.make_server()
    await server.start()
    yield server
    await server.kill()


async def redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _catalog(fake: FakeHTTPServer, tag: str, deployments: str, limits: str = "") -> dict[str, Any]:
    import yaml

    return yaml.safe_load(
        f"providers:\n  p{tag}: {{wire: openai_compat, base_url: 'http://127.0.0.1:{fake.port}/v1'}}\n"
        f"models:\n  lim:\n    provider: p{tag}\n    upstream_model: fake-ok\n{limits}"
        f"    deployments: {deployments}\n"
    )


def _request() -> ChatRequest:
    return ChatRequest(model="lim", messages=(ChatMessage("user", "hi"),), max_tokens=10)


async def _run(router: Router) -> list[Any]:
    return [e async for e in router.generate(_request())]


# -- the script agrees with the arithmetic ---------------------------------------------


async def test_the_script_and_check_agree_on_random_windows(client: aioredis.Redis) -> None:
    store = RedisLimitStore(client)
    rng = random.Random(13)
    for case in range(60):
        dep = Deployment("p", "http://x", "m", name=f"parity{uuid.uuid4().hex[:6]}", model="m")
        dep = Deployment(
            "p", "http://x", "m", name=dep.name, model="m", rpm=rng.choice([0, 3, 8]), tpm=rng.choice([0, 50, 120])
        )
        if not (dep.rpm or dep.tpm):
            dep = Deployment("p", "http://x", "m", name=dep.name, model="m", rpm=5)
        now = await redis_now_ms(client)
        bucket = now // BUCKET_MS
        # Buckets from 59 s ago to now: none crosses the window's edge during the test.
        buckets = {
            bucket - rng.randint(0, 58): (rng.randint(0, 3), rng.randint(0, 40)) for _ in range(rng.randint(0, 5))
        }
        mapping: dict[str, int] = {}
        for b, (r, t) in buckets.items():
            mapping[f"r:{b}"], mapping[f"t:{b}"] = r, t
        if mapping:
            await client.hset(limit_key(dep.key), mapping=mapping)
        tokens = rng.randint(1, 60)
        expected = check(buckets, now, dep.rpm, dep.tpm, tokens)
        taken = await store.take([dep], tokens)
        assert (taken.chosen == 0) == expected.fits, case
        if not expected.fits:
            [got] = taken.verdicts
            assert got.limit == expected.limit, case
            # The script reads the clock a few milliseconds later.
            assert got.wait_ms == expected.wait_ms or abs(got.wait_ms - expected.wait_ms) < 100, case


def test_keys_share_one_hash_tag() -> None:
    a = Deployment("p", "http://x", "m", name="a", model="m", rpm=1)
    b = Deployment("q", "http://x", "n", name="b", model="n", rpm=1)
    # The slot a cluster would put each key in (this server runs without cluster support).
    assert len({key_slot(limit_key(d.key).encode()) for d in (a, b)}) == 1


# -- through the router ----------------------------------------------------------------


async def test_a_limited_deployment_is_skipped_for_another(client: aioredis.Redis, fake: FakeHTTPServer) -> None:
    tag = uuid.uuid4().hex[:6]
    catalog = parse_catalog(
        _catalog(fake, tag, "[{name: k1, weight: 100, limits: {rpm: 1}}, {name: k2, weight: 0.01, limits: {rpm: 10}}]"),
        env={},
    )
    router = Router(catalog, {"openai_compat": OpenAICompatAdapter()}, limits=ProviderLimits(RedisLimitStore(client)))
    try:
        first = (await _run(router))[0]
        assert isinstance(first, RouteStarted) and first.deployment == f"p{tag}/lim/k1"
        assert first.fallback_path == ()
        second = (await _run(router))[0]
        assert isinstance(second, RouteStarted) and second.deployment == f"p{tag}/lim/k2"
        assert second.fallback_path == (f"p{tag}/lim/k1 (LIMIT_RPM)",)
        assert fake.stats.requests == 2
    finally:
        await router.adapters["openai_compat"].aclose()


async def test_tokens_per_minute_skip_a_deployment_the_request_does_not_fit(
    client: aioredis.Redis, fake: FakeHTTPServer
) -> None:
    tag = uuid.uuid4().hex[:6]
    # The request counts its prompt plus max_tokens 10: more than k1's whole minute.
    catalog = parse_catalog(
        _catalog(fake, tag, "[{name: k1, weight: 100, limits: {tpm: 5}}, {name: k2, weight: 0.01}]"), env={}
    )
    router = Router(catalog, {"openai_compat": OpenAICompatAdapter()}, limits=ProviderLimits(RedisLimitStore(client)))
    try:
        started = (await _run(router))[0]
        assert started.deployment == f"p{tag}/lim/k2"
        assert started.fallback_path == (f"p{tag}/lim/k1 (LIMIT_TPM)",)
    finally:
        await router.adapters["openai_compat"].aclose()


async def test_a_request_waits_for_the_window_then_is_served(client: aioredis.Redis, fake: FakeHTTPServer) -> None:
    tag = uuid.uuid4().hex[:6]
    catalog = parse_catalog(_catalog(fake, tag, "[{name: k1}]", "    limits: {rpm: 2}\n"), env={})
    # Two calls counted 59 s ago: they leave the window within two seconds.
    now = await redis_now_ms(client)
    await client.hset(
        limit_key(f"p{tag}/lim/k1"), mapping={f"r:{now // BUCKET_MS - 59}": 2, f"t:{now // 1000 - 59}": 0}
    )
    router = Router(
        catalog,
        {"openai_compat": OpenAICompatAdapter()},
        limits=ProviderLimits(RedisLimitStore(client)),
        limit_wait_s={"interactive": 3.0},
    )
    try:
        events = await _run(router)
        started = events[0]
        assert isinstance(started, RouteStarted) and started.deployment == f"p{tag}/lim/k1"
        [waited] = [p for p in started.fallback_path if "WAITED" in p]
        assert waited.startswith("lim (WAITED_") and waited.endswith("MS_FOR_LIMIT)")
        assert started.fallback_path[0] == f"p{tag}/lim/k1 (LIMIT_RPM)"
        assert fake.stats.requests == 1
    finally:
        await router.adapters["openai_compat"].aclose()


async def test_all_limited_and_too_long_to_wait_is_refused_without_a_call(
    client: aioredis.Redis, fake: FakeHTTPServer
) -> None:
    tag = uuid.uuid4().hex[:6]
    catalog = parse_catalog(_catalog(fake, tag, "[{name: k1}, {name: k2}]", "    limits: {rpm: 1}\n"), env={})
    router = Router(catalog, {"openai_compat": OpenAICompatAdapter()}, limits=ProviderLimits(RedisLimitStore(client)))
    try:
        await _run(router)
        await _run(router)
        with pytest.raises(errors.ResourceExhausted) as info:
            await _run(router)
        exc = info.value
        assert exc.reason == "DEPLOYMENT_LIMIT"
        assert exc.retry_after_s is not None and 2.0 < exc.retry_after_s <= 61.0
        assert sorted(s for s, _ in exc.quota_violations) == [f"deployment:p{tag}/lim/k1", f"deployment:p{tag}/lim/k2"]
        assert all("limit of 1 requests per minute is reached" in d for _, d in exc.quota_violations)
        assert fake.stats.requests == 2
    finally:
        await router.adapters["openai_compat"].aclose()


# -- two router processes share one limit ----------------------------------------------


def _grpc_request() -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="lim", max_tokens=10, messages=[common_pb2.Message(role="user", content="hi")]
    )


async def _generate(stub: router_pb2_grpc.RouterServiceStub) -> list[Any]:
    return [e async for e in stub.Generate(_grpc_request(), timeout=10)]


async def test_two_router_processes_share_a_deployments_limit(redis_server: RedisServer, fake: FakeHTTPServer) -> None:
    import yaml

    tag = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="routers-"))
    catalog = workdir / "models.yaml"
    catalog.write_text(yaml.safe_dump(_catalog(fake, tag, "[{name: k1}]", "    limits: {rpm: 4}\n")))
    a = await asyncio.to_thread(RouterProcess, "router-a", workdir, catalog, redis_server.url, breakers="false")
    b = await asyncio.to_thread(RouterProcess, "router-b", workdir, catalog, redis_server.url, breakers="false")
    try:
        async with grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
            stubs = [router_pb2_grpc.RouterServiceStub(ch_a), router_pb2_grpc.RouterServiceStub(ch_b)]
            listed = await stubs[0].ListModels(router_pb2.ListModelsRequest(), timeout=5)
            [dep] = next(m for m in listed.models if m.name == "lim").deployments
            assert (dep.requests_per_minute, dep.tokens_per_minute) == (4, 0)
            # Six concurrent requests, three per replica, against 4 a minute: exactly 4 served.
            results = await asyncio.gather(*(_generate(stubs[i % 2]) for i in range(6)), return_exceptions=True)
            served = [r for r in results if isinstance(r, list)]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert (len(served), len(refused)) == (4, 2), results
            assert fake.stats.requests == 4
            for call in refused:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert f"deployment p{tag}/lim/k1: its limit of 4 requests per minute is reached" in call.details()
                status = rpc_status.from_call(call)
                assert status is not None
                kinds = {d.type_url.rsplit(".", 1)[1]: d for d in status.details}
                quota = error_details_pb2.QuotaFailure()
                kinds["QuotaFailure"].Unpack(quota)
                assert [v.subject for v in quota.violations] == [f"deployment:p{tag}/lim/k1"]
                retry = error_details_pb2.RetryInfo()
                kinds["RetryInfo"].Unpack(retry)
                assert 0 < retry.retry_delay.seconds <= 61
    finally:
        a.stop()
        b.stop()
