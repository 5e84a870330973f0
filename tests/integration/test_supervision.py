"""A part of the stack dies (SIGKILL): the supervisor starts it again, clients meanwhile get a 503
naming the part (never a refused connection at the edge), good answers resume, and nothing that
was acknowledged before a Redis kill is lost.

These tests kill processes, so they run on a small stack of their own (Redis, gateway, router,
cache, Envoy; free ports), never on the session stack other tests share.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.conftest import TEST_RUN_DIR
from tests.support.polling import eventually_sync
from tollway.cli import _create_key, _with_store
from tollway.gateway.auth import hash_key
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.launcher import runfile
from tollway.launcher.processes import Child, free_ports
from tollway.launcher.stack import Stack, StackOptions
from tollway.launcher.supervisor import RestartPolicy

pytestmark = pytest.mark.timeout(120)

# How long a restart may take before a test gives up: generous, since the suite may share the
# machine with other work; the figures (time to recovery) are measured by bench/faults.py.
RECOVERY_DEADLINE_S = 45.0


@pytest.fixture(scope="module")
def small_stack(catalog: Path, namespaces: Path) -> Iterator[Stack]:
    names = ["edge", "admin", "mesh", "redis", "local_model", "gateway", "router", "cache"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=Path(tempfile.mkdtemp(prefix="supervised-", dir=TEST_RUN_DIR or None)),
        catalog=catalog,
        with_model=False,
        services=("gateway", "router", "cache"),
        env={"TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces), "TOLLWAY_LOG_LEVEL": "WARNING"},
        # The first restart waits long enough that a request sent right after the kill meets the
        # outage, so the test sees what a client sees then (and not only the recovery).
        restart_policy=RestartPolicy(initial_delay_s=0.3, max_delay_s=2.0, reset_after_s=5.0),
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="module")
def key(small_stack: Stack) -> str:
    return asyncio.run(_create_key(small_stack.redis_url, "supervised"))[0]


def child(stack: Stack, name: str) -> Child:
    return next(c for c in stack.children if c.name == name)


def complete(stack: Stack, key: str, content: str | None = None, cache: bool = False) -> httpx.Response:
    """POST /v1/complete through Envoy. A connection refused raises: it is what must never happen."""
    body: dict[str, Any] = {
        "model": "fake-ok",
        "messages": [{"role": "user", "content": content or f"hello {uuid.uuid4()}"}],
    }
    if not cache:
        body["cache_policy"] = {"mode": "CACHE_MODE_BYPASS"}
    return httpx.post(
        f"{stack.edge_url}/v1/complete", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def kill(stack: Stack, name: str) -> tuple[Child, int, float]:
    """SIGKILLs the child ``name``; returns it, its dead pid, and when it was killed (monotonic)."""
    c = child(stack, name)
    pid = c.process.pid
    os.kill(pid, signal.SIGKILL)
    return c, pid, time.monotonic()


def wait_for_recovery(stack: Stack, key: str, c: Child, dead_pid: int) -> list[tuple[float, httpx.Response]]:
    """Sends requests until one succeeds on a restarted process; returns every response, timed.

    Raises:
        AssertionError: No good answer within the deadline.
    """
    seen: list[tuple[float, httpx.Response]] = []

    def answered() -> bool:
        r = complete(stack, key)
        seen.append((time.monotonic(), r))
        return r.status_code == 200 and c.process.pid != dead_pid

    eventually_sync(answered, timeout_s=RECOVERY_DEADLINE_S, interval_s=0.05, what=f"a good answer after {c.name}")
    return seen


def assert_outage_seen(seen: list[tuple[float, httpx.Response]], c: Child, part: str) -> None:
    """Every failure named ``part`` in a 503; a request answered before the new process existed failed."""
    failures = [r for _, r in seen if r.status_code != 200]
    for r in failures:
        assert r.status_code == 503, r.text
        assert part in r.json()["message"], r.text
        assert r.headers.get("retry-after"), r.headers
    # A request that came back before the supervisor even started the new process cannot have
    # been answered by it: the outage was met, and it was a 503.
    before_restart = [r for t, r in seen if t < c.started_monotonic]
    assert all(r.status_code == 503 for r in before_restart)
    assert failures, "no request met the outage; the kill should leave a window of restart_policy's delay"


def test_a_killed_router_is_restarted_and_named_while_down(small_stack: Stack, key: str) -> None:
    assert complete(small_stack, key).status_code == 200
    restarts = small_stack.supervisor.restart_counts()["router"] if small_stack.supervisor else 0
    c, pid, _ = kill(small_stack, "router")
    seen = wait_for_recovery(small_stack, key, c, pid)
    assert_outage_seen(seen, c, "router")
    # The gateway names the router (the channel could not connect), with a stable reason.
    details = [r.json()["details"] for _, r in seen if r.status_code == 503]
    assert {"ROUTER_UNAVAILABLE"} == {d["reason"] for ds in details for d in ds if "reason" in d}
    assert small_stack.supervisor is not None
    assert small_stack.supervisor.restart_counts()["router"] == restarts + 1
    status = {s["name"]: s for s in small_stack.supervisor.status()["children"]}
    assert status["router"]["last_exit"] == "killed by SIGKILL (signal 9)"
    assert status["router"]["pid"] == c.process.pid != pid


def test_a_killed_gateway_is_a_503_naming_it_at_the_edge_for_json_and_grpc(small_stack: Stack, key: str) -> None:
    assert complete(small_stack, key).status_code == 200
    c, pid, _ = kill(small_stack, "gateway")
    # Native gRPC through Envoy, sent at once: the gateway's restart waits restart_policy's delay.
    with grpc.insecure_channel(small_stack.mesh.edge.listen.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.GenerateRequest(model="fake-ok", messages=[{"role": "user", "content": "hi"}])
        try:
            list(stub.Generate(request, metadata=[("authorization", f"Bearer {key}")], timeout=10))
            error: grpc.RpcError | None = None
        except grpc.RpcError as exc:
            error = exc
    answered_at = time.monotonic()
    seen = wait_for_recovery(small_stack, key, c, pid)
    if answered_at < c.started_monotonic:  # answered before a new gateway existed: it must have failed
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        assert "service gateway is unavailable" in error.details()
    assert_outage_seen(seen, c, "gateway")
    for _, r in seen:
        if r.status_code == 503:
            assert r.json()["details"][0]["metadata"] == {"dependency": "gateway"}


def in_append_only_file(stack: Stack, needle: bytes) -> bool:
    """Whether ``needle`` was written to the stack's Redis append-only files."""
    folder = stack.options.run_dir / "redis" / "appendonlydir"
    return any(needle in f.read_bytes() for f in folder.glob("*.aof"))


def test_a_killed_redis_comes_back_with_every_acknowledged_write(small_stack: Stack, key: str) -> None:
    # Acknowledged before the kill: an answer (cached and recorded) and a key that was never used,
    # so no gateway has it in its in-memory auth cache: only Redis can vouch for it afterwards.
    question = f"What survives a restart? {uuid.uuid4()}"
    first = complete(small_stack, key, question, cache=True)
    assert first.status_code == 200, first.text
    request_id = first.json()["request_id"]
    eventually_sync(
        lambda: complete(small_stack, key, question, cache=True).json()["cache_tier"] == "CACHE_TIER_EXACT",
        what="the answer was stored in the cache",
    )
    eventually_sync(lambda: recorded(small_stack, request_id), what="the call record was written")
    fresh_key = asyncio.run(_create_key(small_stack.redis_url, "supervised"))[0]
    # With appendfsync everysec, Redis acknowledges a write before it reaches the append-only file
    # and, while a slow fsync runs (a busy disk, as on a fresh clone's install), may hold it back for
    # up to 2 s: a kill then loses it. What survives a kill is what reached the file, in order; so
    # wait until the last write (the fresh key) is there, rather than for a fixed time.
    eventually_sync(
        lambda: in_append_only_file(small_stack, hash_key(fresh_key).encode()),
        what="the fresh key reached Redis's append-only file",
    )

    c, pid, _ = kill(small_stack, "redis")
    seen = wait_for_recovery(small_stack, key, c, pid)
    for _, r in seen:
        # While Redis is away the gateway answers (auth from its in-memory cache, no response cache)
        # or says UNAVAILABLE naming Redis; never a 500.
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert "redis" in r.text.lower(), r.text
    eventually_sync(lambda: state(small_stack, "redis") == "running", timeout_s=RECOVERY_DEADLINE_S, what="Redis ready")

    assert complete(small_stack, fresh_key).status_code == 200
    assert recorded(small_stack, request_id)
    again = complete(small_stack, key, question, cache=True)
    assert again.status_code == 200 and again.json()["cache_tier"] == "CACHE_TIER_EXACT", again.text


def test_stopping_the_stack_ends_the_restarts_first(catalog: Path) -> None:
    names = ["edge", "admin", "mesh", "redis", "local_model", "router"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=Path(tempfile.mkdtemp(prefix="supervised-stop-", dir=TEST_RUN_DIR or None)),
        catalog=catalog,
        with_model=False,
        with_envoy=False,
        services=("router",),
        restart_policy=RestartPolicy(initial_delay_s=0.0, max_delay_s=0.0),
    )
    stack = Stack(options).start()
    try:
        router = child(stack, "router")
        os.kill(router.process.pid, signal.SIGKILL)
    finally:
        stack.stop()
    pids = [int(line.split()[0]) for line in (options.run_dir / "pids").read_text().splitlines()]
    assert not [pid for pid in pids if alive(pid)]
    assert stack.supervisor is not None and stack.supervisor.status()["stopped"]


def alive(pid: int) -> bool:
    # A zombie (dead, not reaped yet: an orphan in a container whose init does not reap) is not alive.
    return runfile.start_ticks(pid) is not None


def state(stack: Stack, name: str) -> str:
    assert stack.supervisor is not None
    return next(c["state"] for c in stack.supervisor.status()["children"] if c["name"] == name)


def recorded(stack: Stack, request_id: str) -> bool:
    rows = asyncio.run(_with_store(stack.redis_url, lambda store: store.recent_calls(10_000)))
    return any(row.get("request_id") == request_id for row in rows)
