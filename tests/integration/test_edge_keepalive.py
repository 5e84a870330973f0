"""Envoy's pooled connections to the OpenAI surface are not cut under it (issue 13).

uvicorn's default keep-alive (5 s) closed idle connections that Envoy's pool still held; a request
Envoy sent on one as it closed came back 503 "upstream connect error or disconnect/reset before
headers. reset reason: connection termination" (47 of 200 in a burst after 3 s idle, load 4.5).
Now Envoy closes idle upstream connections first (60 s) and the surface keeps them 75 s.

The launcher's stack (Envoy, the OpenAI surface, gateway, router, budget, real Redis) before the
wire-exact fake OpenAI server, the only stand-in.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.small_stack import roomy_stack
from tollway.cli import _create_key
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(180)

TENANT = "keepalive-co"
OLD_KEEP_ALIVE_S = 5  # uvicorn's default, what the surface ran with before


@pytest.fixture(scope="module")
def surface_stack(fake_openai: str) -> Iterator[Stack]:
    models = "  fake-ok: {provider: fakeai, upstream_model: fake-ok}\n"
    services = ("gateway", "router", "budget", "openai_compat")
    with roomy_stack(
        "edge-keepalive-", models, fake_openai, TENANT, services=services, tokens=1_000_000_000, timeout_s=30
    ) as stack:
        yield stack


def test_the_surface_keeps_an_idle_connection_past_the_old_keep_alive(surface_stack: Stack) -> None:
    host, port = surface_stack.address("openai_compat").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/openapi.json")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        sock = conn.sock
        time.sleep(OLD_KEEP_ALIVE_S + 1.5)  # the server would have closed it by now
        # http.client does not reconnect by itself: a closed socket fails this request.
        conn.request("GET", "/openapi.json")
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock
    finally:
        conn.close()


async def _burst(url: str, key: str, n: int, bodies: dict[int, str]) -> collections.Counter[int]:
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=120) as http:
        go = asyncio.Event()

        async def one() -> int:
            await go.wait()
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            if r.status_code != 200:
                bodies.setdefault(r.status_code, r.text[:300])
            return r.status_code

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.2)
        go.set()
        return collections.Counter(await asyncio.gather(*tasks))


async def test_bursts_of_200_after_idle_gaps_are_never_cut(surface_stack: Stack) -> None:
    key, _ = await _create_key(surface_stack.redis_url, TENANT)
    bodies: dict[int, str] = {}
    await _burst(surface_stack.edge_url, key, 200, bodies)  # warm-up: pools, imports, Redis connections
    bodies.clear()
    seen: collections.Counter[int] = collections.Counter()
    # Gaps near and past the old keep-alive, measured from the end of the previous burst:
    # connections used early in a burst have been idle longer still. (Shorter gaps cannot meet a
    # 5 s keep-alive at all.)
    for gap in (OLD_KEEP_ALIVE_S - 1.0, OLD_KEEP_ALIVE_S + 0.5):
        await asyncio.sleep(gap)
        seen.update(await _burst(surface_stack.edge_url, key, 200, bodies))
    assert not any("connection termination" in b for b in bodies.values()), bodies
    assert seen == {200: 400}, (seen, bodies)
