"""The gateway dies (SIGKILL) and the supervisor restarts it: meanwhile every public surface answers
503 (gRPC UNAVAILABLE) naming the gateway, never a socket error or a channel's text.

The three surfaces reach the gateway differently: native JSON and gRPC through Envoy (its local
reply names the cluster), the OpenAI API through openai_compat's own gRPC channel (openai_compat
names the gateway when that channel cannot reach it). The stack is a small one of its own, split
(one process per service), because the test kills a process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.conftest import TEST_RUN_DIR
from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.launcher.processes import Child, free_ports
from tollway.launcher.stack import Stack, StackOptions
from tollway.launcher.supervisor import RestartPolicy

pytestmark = pytest.mark.timeout(120)

# Generous: the suite may share the machine; the recovery time is measured by bench/faults_kill.py.
RECOVERY_DEADLINE_S = 45.0
SURFACES = ("json", "grpc", "openai")


@pytest.fixture(scope="module")
def gateway_stack(catalog: Path, namespaces: Path) -> Iterator[Stack]:
    services = ("gateway", "router", "cache", "openai_compat")
    names = ["edge", "admin", "mesh", "redis", "local_model", *services]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=Path(tempfile.mkdtemp(prefix="gateway-restart-", dir=TEST_RUN_DIR or None)),
        catalog=catalog,
        with_model=False,
        services=services,
        env={"TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces), "TOLLWAY_LOG_LEVEL": "WARNING"},
        # The first restart waits long enough that the requests sent right after the kill meet
        # the outage on every surface.
        restart_policy=RestartPolicy(initial_delay_s=0.5, max_delay_s=2.0, reset_after_s=5.0),
        layout="split",
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway_stack: Stack) -> str:
    return asyncio.run(_create_key(gateway_stack.redis_url, "gateway-restart"))[0]


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as its client saw it: ``status`` is the HTTP status, or the gRPC code's name."""

    surface: str
    sent: float
    ok: bool
    status: str
    message: str
    retry_after: str | None = None


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"hello {uuid.uuid4()}"}]


def ask(stack: Stack, key: str, surface: str) -> Seen:
    """One request on ``surface``. A refused connection or reset raises: it must never happen."""
    sent = time.monotonic()
    auth = {"authorization": f"Bearer {key}"}
    if surface == "grpc":
        with grpc.insecure_channel(stack.mesh.edge.listen.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_pb2.GenerateRequest(model="fake-ok", messages=_messages())
            request.cache_policy.mode = common_pb2.CACHE_MODE_BYPASS
            try:
                list(stub.Generate(request, metadata=list(auth.items()), timeout=10))
            except grpc.RpcError as exc:
                return Seen(surface, sent, False, exc.code().name, exc.details() or "")
        return Seen(surface, sent, True, "OK", "")
    if surface == "json":
        body = {"model": "fake-ok", "messages": _messages(), "cache_policy": {"mode": "CACHE_MODE_BYPASS"}}
        r = httpx.post(f"{stack.edge_url}/v1/complete", json=body, headers=auth, timeout=30)
        message = "" if r.status_code == 200 else r.json()["message"]
    else:
        body = {"model": "fake-ok", "messages": _messages()}
        headers = {**auth, "x-tollway-cache-mode": "bypass"}
        r = httpx.post(f"{stack.edge_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        message = "" if r.status_code == 200 else r.json()["error"]["message"]
    return Seen(surface, sent, r.status_code == 200, str(r.status_code), message, r.headers.get("retry-after"))


def test_every_surface_names_the_gateway_while_it_restarts(gateway_stack: Stack, key: str) -> None:
    for surface in SURFACES:
        before = ask(gateway_stack, key, surface)
        assert before.ok, before
    gateway: Child = next(c for c in gateway_stack.children if c.name == "gateway")
    dead = gateway.process.pid
    os.kill(dead, signal.SIGKILL)

    seen: list[Seen] = []

    def every_surface_answers() -> bool:
        round_ = [ask(gateway_stack, key, surface) for surface in SURFACES]
        seen.extend(round_)
        return gateway.process.pid != dead and all(s.ok for s in round_)

    eventually_sync(
        every_surface_answers, timeout_s=RECOVERY_DEADLINE_S, interval_s=0.05, what="good answers on every surface"
    )

    failures = [s for s in seen if not s.ok]
    for s in failures:
        assert s.status in ("503", "UNAVAILABLE"), s
        assert "gateway" in s.message, s
        if s.surface != "grpc":
            assert s.retry_after, s
    # Requests sent before the new gateway existed cannot have been answered: each surface met the
    # outage, and answered it as above.
    met = {s.surface for s in seen if s.sent < gateway.started_monotonic}
    assert met == set(SURFACES), "no round met the outage; the restart delay should leave one"
    assert {s.surface for s in failures} == set(SURFACES)
