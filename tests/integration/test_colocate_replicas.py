"""A co-located group whose members share `replicas: 2` runs as two processes behind Envoy (issue 12).

The launcher's stack (Envoy, the core group twice, real Redis) before the wire-exact fake OpenAI
server: each instance serves its members on their replica ports, Envoy balances both public
surfaces over the two instances, and each instance's calls between its members stay in-process.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import httpx
import pytest

from tests.support.small_stack import roomy_stack
from tollway.cli import _create_key
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(180)

TENANT = "replicated-core"
CORE = ("gateway", "router", "cache", "budget", "openai_compat")


@pytest.fixture(scope="module")
def two_cores(fake_openai: str) -> Iterator[Stack]:
    models = "  fake-ok: {provider: fakeai, upstream_model: fake-ok}\n"
    with roomy_stack(
        "core-replicas-",
        models,
        fake_openai,
        TENANT,
        services=CORE,
        tokens=10**9,
        replicas=dict.fromkeys(CORE, 2),
        layout="colocated",
    ) as stack:
        yield stack


def _requests_per_host(admin: str, cluster: str) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in httpx.get(f"http://{admin}/clusters", timeout=5).text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total":
            counts[parts[1]] += int(parts[3])
    return dict(counts)


def test_two_instances_serve_both_surfaces(two_cores: Stack) -> None:
    (group,) = two_cores.groups()
    assert group.replicas == 2
    names = {c.name for c in two_cores.children}
    assert {"core-0", "core-1"} <= names and not names & set(CORE)
    assert two_cores.child_of("router").name == "core-0"

    key, _ = asyncio.run(_create_key(two_cores.redis_url, TENANT))
    auth = {"authorization": f"Bearer {key}"}
    chat = {"model": "fake-ok", "messages": [{"role": "user", "content": "hello"}]}
    admin = two_cores.mesh.edge.admin.address
    surface: dict[str, int] = {}
    gateway: dict[str, int] = {}
    sent = 0
    with httpx.Client(base_url=f"http://{two_cores.mesh.edge.listen.address}", timeout=30) as http:
        # Round robin reaches both within a few requests once Envoy's health checks passed both.
        while sent < 100:
            r = http.post("/v1/chat/completions", json=chat, headers={**auth, "x-tollway-cache-mode": "bypass"})
            assert r.status_code == 200, r.text
            native = http.post(
                "/v1/complete", json={**chat, "cache_policy": {"mode": "CACHE_MODE_BYPASS"}}, headers=auth
            )
            assert native.status_code == 200, native.text
            sent += 1
            surface = _requests_per_host(admin, "openai_compat")
            gateway = _requests_per_host(admin, "gateway")
            if all(len(c) == 2 and all(c.values()) for c in (surface, gateway)):
                break
    assert len(surface) == 2 and all(n > 0 for n in surface.values()), surface
    # The surface's calls to the gateway are in-process: Envoy's gateway cluster sees /v1/complete only.
    assert len(gateway) == 2 and all(n > 0 for n in gateway.values()), gateway
    assert sum(gateway.values()) == sent, (gateway, sent)
