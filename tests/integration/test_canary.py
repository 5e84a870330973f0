"""`tollway canary` against a real stack: Redis, the router (canary-ready) and Envoy, on free ports.

The router is the canaried service: an inner service, reached through Envoy's mesh listener, as
the gateway reaches it. The CLI runs as a subprocess (the stack runs in this process, and a launcher
does not count itself as another one), so every command here is what an operator would type.
Which version answered is read from Envoy's own per-cluster counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import TEST_RUN_DIR
from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.common.v1 import common_pb2
from tollway.launcher import runfile
from tollway.launcher.canary import Phase, read_history, read_record
from tollway.launcher.canary_envoy import sample_clusters
from tollway.launcher.processes import free_port, free_ports
from tollway.launcher.stack import ROOT, Stack, StackOptions
from tollway.router.v1 import router_pb2, router_pb2_grpc

pytestmark = pytest.mark.timeout(600)

CLUSTERS = ("router", "router_canary")


@pytest.fixture(scope="module")
def canary_stack(catalog: Path) -> Iterator[Stack]:
    run_dir = Path(tempfile.mkdtemp(prefix="canary-", dir=TEST_RUN_DIR or None))
    names = ["edge", "admin", "mesh", "redis", "local_model", "router"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run_dir,
        catalog=catalog,
        with_model=False,
        services=("router",),
        canary_ready=("router",),
        layout="split",
    )
    with Stack(options) as stack:
        yield stack
        for service in ("router",):
            record = read_record(run_dir, service)
            if record is not None and not record.phase.final:
                _cli(stack, "rollback", service, check=False)
    # A promoted ref's worktree outlives its canary (the stable instance ran from it); not the test.
    for src in (run_dir / "canary" / "src").glob("*"):
        subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=ROOT, check=False)


@pytest.fixture(autouse=True)
def _no_canary_left(canary_stack: Stack) -> Iterator[None]:
    """Rolls back a canary a failed test left running, so that the next test starts from none."""
    yield
    record = read_record(canary_stack.options.run_dir, "router")
    if record is not None and not record.phase.final:
        _cli(canary_stack, "rollback", "router", "--reason", "left by a failed test", check=False)


def _cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "canary", args[0], *args[1:], "--run-dir", str(stack.options.run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _counts(stack: Stack) -> dict[str, int]:
    samples = sample_clusters(stack.mesh.edge.admin.address, CLUSTERS)
    return {c: s.requests for c, s in samples.items()}


def _request(model: str = "fake-ok") -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(
        model=model, request_id=f"c-{time.monotonic_ns()}",
        messages=[common_pb2.Message(role="user", content="hello")],
    ))


async def _load(
    stack: Stack, total: int | None, *, stop: asyncio.Event | None = None, canary_header: bool = False,
    complete: bool = False, concurrency: int = 8,
) -> Counter[str]:
    """Calls the router through Envoy's mesh listener; returns the count of each status code name."""
    outcomes: Counter[str] = Counter()
    sent = 0
    metadata = (("x-canary", "1"),) if canary_header else ()
    async with grpc.aio.insecure_channel(stack.mesh.edge.mesh_listen.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def worker() -> None:
            nonlocal sent
            while (total is None or sent < total) and not (stop is not None and stop.is_set()):
                sent += 1
                try:
                    if complete:
                        await stub.Complete(_request(), metadata=metadata, timeout=20)
                    else:
                        await stub.ListModels(router_pb2.ListModelsRequest(), metadata=metadata, timeout=20)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def test_bad_canary_commands_say_what_to_fix_and_change_nothing(canary_stack: Stack, tmp_path: Path) -> None:
    cases = [
        (("start", "cache", "--version", "v2"), "was not started canary-ready"),
        (("start", "nosuch", "--version", "v2"), "was not started canary-ready"),
        (("start", "router", "--version", "Stable!"), "--version has value 'Stable!'"),
        (("start", "router", "--version", "v2", "--weight", "101"), "--weight has value 101"),
        (("start", "router", "--version", "v2", "--dir", str(tmp_path)), "has no services/tollway/router/__main__.py"),
        (("start", "router", "--version", "v2", "--ref", "no-such-ref-xyz"), "which is no commit"),
        (("start", "router", "--version", "v2", "--env", "lower=1"), "--env has value 'lower=1'"),
        (("start", "router", "--version", "v2", "--max-error-rate-increase", "2"), "must be 0..1"),
        (("promote", "router"), "no canary of router is running"),
        (("rollback", "router"), "no canary of router is running"),
        (("weight", "router", "50"), "no canary of router is running"),
    ]
    # Each refusal changes nothing, so the commands may run side by side (a CLI start is ~1 s of imports).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda args: _cli(canary_stack, *args, check=False), [args for args, _ in cases]))
    for (args, message), out in zip(cases, outs, strict=True):
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
    assert read_record(canary_stack.options.run_dir, "router") is None
    out = _cli(canary_stack, "status", check=False)
    assert out.returncode == 1 and "no canary on record" in out.stderr


def test_a_canary_at_10_percent_gets_10_percent_and_the_header_reaches_it(canary_stack: Stack) -> None:
    run_dir = canary_stack.options.run_dir
    out = _cli(canary_stack, "start", "router", "--version", "v2", "--weight", "10")
    assert "router canary v2 (checkout): running, weight 10%" in out.stdout
    assert _cli(canary_stack, "start", "router", "--version", "v3", check=False).stderr.count("already running") == 1

    before = _counts(canary_stack)
    outcomes = asyncio.run(_load(canary_stack, 2000))
    after = _counts(canary_stack)
    assert outcomes == Counter({"OK": 2000})
    stable, canary = (after[c] - before[c] for c in CLUSTERS)
    assert stable + canary == 2000
    # Envoy draws each request's cluster at random: 200 +- 13 (one standard deviation of the
    # binomial). The bound is five of them, so a correct split fails it once in millions of
    # runs (at three, 160..240, it failed CI once with 242), while 5 % or 15 % still fail it.
    assert 133 <= canary <= 267, f"canary got {canary} of 2000 ({canary / 20:.1f} %), not 10 % (5 sigma: 133..267)"

    # x-canary: 1 always reaches the canary, and status shows both versions side by side.
    before = _counts(canary_stack)
    assert asyncio.run(_load(canary_stack, 100, canary_header=True)) == Counter({"OK": 100})
    after = _counts(canary_stack)
    assert (after["router"] - before["router"], after["router_canary"] - before["router_canary"]) == (0, 100)

    def status_counts() -> tuple[int, int] | None:
        # Envoy's counters the status reads can trail the last responses by a moment.
        status = _cli(canary_stack, "status", "router").stdout
        stable_line = next(line for line in status.splitlines() if line.strip().startswith("stable"))
        canary_line = next(line for line in status.splitlines() if line.strip().startswith("canary"))
        counts = int(stable_line.split()[1]), int(canary_line.split()[1])
        return counts if counts[0] >= stable and counts[1] >= canary + 100 else None

    eventually_sync(status_counts, timeout_s=15, interval_s=0.5, what="status counting every request")

    # Shifting the weight takes effect without a restart.
    _cli(canary_stack, "weight", "router", "100")
    before = _counts(canary_stack)
    asyncio.run(_load(canary_stack, 100))
    after = _counts(canary_stack)
    assert after["router_canary"] - before["router_canary"] == 100

    out = _cli(canary_stack, "rollback", "router", "--reason", "test over")
    assert "rolled_back" in out.stdout and "reason: test over" in out.stdout
    before = _counts(canary_stack)
    assert asyncio.run(_load(canary_stack, 200, canary_header=True)) == Counter({"OK": 200})
    assert _counts(canary_stack)["router"] - before["router"] == 200  # header with no canary: the stable one
    assert read_history(run_dir)[-1]["reason"] == "test over"


def test_promote_and_rollback_under_steady_load_drop_nothing(canary_stack: Stack, tmp_path: Path) -> None:
    run_dir = canary_stack.options.run_dir
    # The canary's catalog has one model more: after promotion the stable instance must list it.
    catalog = tmp_path / "models.yaml"
    catalog.write_text(Path(canary_stack.options.catalog or "").read_text() + "  promoted-only: {provider: fakeai}\n")
    old_pid = _router_pid(run_dir)

    async def promote_under_load() -> tuple[Counter[str], subprocess.CompletedProcess[str]]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(canary_stack, None, stop=stop, concurrency=4))
        start = await asyncio.to_thread(
            _cli, canary_stack, "start", "router", "--version", "v2", "--weight", "30", "--ref", "HEAD",
            "--env", f"TOLLWAY_ROUTER_CATALOG={catalog}",
        )
        assert "running" in start.stdout
        promoted = await asyncio.to_thread(_cli, canary_stack, "promote", "router")
        await asyncio.sleep(1)
        stop.set()
        return await load, promoted

    outcomes, promoted = asyncio.run(promote_under_load())
    assert set(outcomes) == {"OK"} and outcomes["OK"] > 100, outcomes
    assert "promoted" in promoted.stdout
    record = read_record(run_dir, "router")
    assert record is not None and record.phase is Phase.PROMOTED
    assert _router_pid(run_dir) != old_pid
    models = asyncio.run(_list_models(canary_stack))
    assert "promoted-only" in models  # the stable instance runs the canary's code and config now

    async def rollback_under_load() -> Counter[str]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(canary_stack, None, stop=stop, concurrency=4))
        await asyncio.to_thread(_cli, canary_stack, "start", "router", "--version", "v3", "--weight", "50")
        await asyncio.sleep(1)
        out = await asyncio.to_thread(_cli, canary_stack, "rollback", "router")
        assert "rolled_back" in out.stdout
        await asyncio.sleep(1)
        stop.set()
        return await load

    outcomes = asyncio.run(rollback_under_load())
    assert set(outcomes) == {"OK"} and outcomes["OK"] > 100, outcomes


def test_a_canary_that_fails_is_rolled_back_automatically_with_the_reason(canary_stack: Stack, tmp_path: Path) -> None:
    run_dir = canary_stack.options.run_dir
    # The canary's config sends fake-ok to a provider nobody listens on: its Complete calls fail
    # (UNAVAILABLE) through the router's real code path, while the stable router's succeed.
    dead = free_port()
    catalog = tmp_path / "bad-models.yaml"
    catalog.write_text(
        "providers:\n"
        f"  canarydead: {{wire: openai_compat, base_url: 'http://127.0.0.1:{dead}/v1', timeout_s: 2}}\n"
        "models:\n"
        "  fake-ok: {provider: canarydead}\n"
    )
    _cli(
        canary_stack, "start", "router", "--version", "bad", "--weight", "50", "--min-requests", "20",
        "--env", f"TOLLWAY_ROUTER_CATALOG={catalog}",
    )

    async def until_rolled_back() -> Counter[str]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(canary_stack, 2000, stop=stop, complete=True, concurrency=4))
        for _ in range(600):
            record = read_record(run_dir, "router")
            if record is not None and record.phase.final:
                break
            await asyncio.sleep(0.1)
        stop.set()
        return await load

    outcomes = asyncio.run(until_rolled_back())
    assert outcomes["UNAVAILABLE"] >= 10 and outcomes["OK"] > 0, outcomes
    record = read_record(run_dir, "router")
    assert record is not None and record.phase is Phase.ROLLED_BACK and record.automatic
    assert "error rate" in record.reason and "worse" in record.reason, record.reason
    last = read_history(run_dir)[-1]
    assert last["version"] == "bad" and last["automatic"] is True and last["reason"] == record.reason
    # After the rollback every call is the stable router's, and succeeds.
    assert asyncio.run(_load(canary_stack, 40, complete=True)) == Counter({"OK": 40})
    assert "(automatic)" in _cli(canary_stack, "status", "router").stdout


def _router_pid(run_dir: Path) -> int:
    status = runfile.read_status(run_dir) or {}
    return next(int(c["pid"]) for c in status["children"] if c["name"] == "router")


async def _list_models(stack: Stack) -> set[str]:
    async with grpc.aio.insecure_channel(stack.address("router")) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).ListModels(router_pb2.ListModelsRequest(), timeout=10)
    return {m.name for m in reply.models}


def test_history_is_json_lines(canary_stack: Stack) -> None:
    out = _cli(canary_stack, "history")
    for line in out.stdout.splitlines():
        assert json.loads(line)["service"] == "router"


@pytest.fixture(scope="module")
def edge_stack(catalog: Path) -> Iterator[Stack]:
    """The gateway canary-ready: a public service, split at the edge's public listener."""
    run_dir = Path(tempfile.mkdtemp(prefix="canary-edge-", dir=TEST_RUN_DIR or None))
    names = ["edge", "admin", "mesh", "redis", "local_model", "gateway", "router"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run_dir,
        catalog=catalog,
        with_model=False,
        services=("gateway", "router"),
        canary_ready=("gateway",),
        layout="split",
    )
    with Stack(options) as stack:
        yield stack
        record = read_record(run_dir, "gateway")
        if record is not None and not record.phase.final:
            _cli(stack, "rollback", "gateway", check=False)


def test_a_public_service_is_split_at_the_edge_too(edge_stack: Stack) -> None:
    key, _ = asyncio.run(_create_key(edge_stack.redis_url, "acme"))
    _cli(edge_stack, "start", "gateway", "--version", "v2", "--weight", "50")

    def get(headers: dict[str, str]) -> int:
        request = urllib.request.Request(
            f"{edge_stack.edge_url}/v1/catalog/models", headers={"authorization": f"Bearer {key}", **headers}
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status

    clusters = ("gateway", "gateway_canary")
    admin = edge_stack.mesh.edge.admin.address
    before = {c: s.requests for c, s in sample_clusters(admin, clusters).items()}
    assert [get({}) for _ in range(200)] == [200] * 200
    middle = {c: s.requests for c, s in sample_clusters(admin, clusters).items()}
    assert [get({"x-canary": "1"}) for _ in range(50)] == [200] * 50
    after = {c: s.requests for c, s in sample_clusters(admin, clusters).items()}
    canary = middle["gateway_canary"] - before["gateway_canary"]
    assert 60 <= canary <= 140, f"{canary} of 200 JSON requests reached the 50 % canary"
    assert (after["gateway"] - middle["gateway"], after["gateway_canary"] - middle["gateway_canary"]) == (0, 50)
    assert "rolled_back" in _cli(edge_stack, "rollback", "gateway").stdout


def test_a_canary_whose_process_dies_is_rolled_back_and_traffic_returns(canary_stack: Stack) -> None:
    run_dir = canary_stack.options.run_dir
    _cli(canary_stack, "start", "router", "--version", "crash", "--weight", "50")
    record = read_record(run_dir, "router")
    assert record is not None and record.phase is Phase.RUNNING
    os.kill(record.canary_pid, signal.SIGKILL)
    for _ in range(200):
        record = read_record(run_dir, "router")
        if record is not None and record.phase.final:
            break
        time.sleep(0.1)
    assert record is not None and record.phase is Phase.ROLLED_BACK and record.automatic
    assert "the canary's process exited" in record.reason
    assert asyncio.run(_load(canary_stack, 100)) == Counter({"OK": 100})


def test_a_canary_ends_with_its_stack(catalog: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="canary-stop-", dir=TEST_RUN_DIR or None))
    names = ["edge", "admin", "mesh", "redis", "local_model", "router"]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)), run_dir=run_dir, catalog=catalog,
        with_model=False, services=("router",), canary_ready=("router",), layout="split",
    )
    with Stack(options) as stack:
        _cli(stack, "start", "router", "--version", "v2", "--weight", "10")
        record = read_record(run_dir, "router")
        assert record is not None
        canary_pid, controller_pid = record.canary_pid, record.controller_pid
    for _ in range(200):
        record = read_record(run_dir, "router")
        done = runfile.start_ticks(canary_pid) is None and runfile.start_ticks(controller_pid) is None
        if record is not None and record.phase.final and done:
            break
        time.sleep(0.1)
    assert record is not None and record.phase is Phase.ROLLED_BACK, record
    assert record.reason == "the tollway up it belongs to stopped"
    assert runfile.start_ticks(canary_pid) is None and runfile.start_ticks(controller_pid) is None
