"""Jobs (issue 19): throughput, end-to-end latency against a direct Complete, recovery after a worker kill.

    .venv/bin/python bench/jobs.py                      # every figure
    .venv/bin/python bench/jobs.py --jobs 400 --pairs 60 --kills 5

The stack is the launcher's on free ports, one process per service (gateway, router, cache, budget,
jobs), supervised as `tollway up` runs it, with a wire-exact fake OpenAI provider (tests/fakes/openai.py)
answering every model at once (`fake-ok`) or slowly (`fake-gap-...`). The budget plan has no quota.
Printed:

1. jobs/s: one batch of ``--jobs`` items (fake-ok, cache bypassed), from SubmitBatch to the batch
   done, with TOLLWAY_JOBS_WORKERS=1 and then 4 (a fresh stack each);
2. latency: ``--pairs`` interleaved pairs of one job (SubmitJob, then GetJob every 5 ms until done)
   and one direct GatewayService.Complete of the same request; p50/p95 of each. The job's figure
   includes up to 5 ms of polling and the worker's wait for the stream (it blocks for new entries);
3. recovery: a slow job (the provider answers after 1 s) is SIGKILLed with its worker ``--kills``
   times; per kill, the time to the restarted process serving (polled), to the job started again
   (reclaimed: its recorded `start_time`) and to the job done (its `end_time`).
   TOLLWAY_JOBS_CLAIM_IDLE_MS is ``--claim-idle-ms`` (a reclaim waits for that much silence; the
   default in production is 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from tests.fakes.procs import FakeProvider  # noqa: E402
from tests.support.jobs import auth, generate, serving, stack_options, write_catalog  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc  # noqa: E402
from tollway.launcher.stack import Stack  # noqa: E402

SLOW = "fake-ttft-1000-words-20"  # the provider waits 1 s before answering
MODELS = ("fake-ok", SLOW)


def _plans(run: Path) -> Path:
    path = run / "budget.yaml"
    path.write_text("version: 1\ndefault_plan: bench\nplans:\n  bench: {max_tokens_per_request: 0, quotas: []}\n")
    return path


def _namespaces(run: Path) -> Path:
    path = run / "namespaces.yaml"
    path.write_text(
        "defaults: {ttl_s: 3600, scope: tenant, semantic: false}\nnamespaces:\n  default: {threshold: 0.9}\n"
    )
    return path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(run: Path, provider: FakeProvider, **env: str) -> Stack:
    run.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(run / "models.yaml", provider.url, MODELS)
    options = stack_options("bench-jobs-", catalog, _plans(run), _namespaces(run), str(run), **env)
    options.startup_timeout_s = 120
    return Stack(options).start()


async def throughput(stack: Stack, key: str, n: int) -> float:
    async with grpc.aio.insecure_channel(stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        items = [jobs_pb2.BatchItem(request=generate("fake-ok")) for _ in range(n)]
        t0 = time.perf_counter()
        batch = (await stub.SubmitBatch(jobs_pb2.SubmitBatchRequest(items=items), metadata=auth(key))).batch
        while True:
            b = (await stub.GetBatch(jobs_pb2.GetBatchRequest(name=batch.name), metadata=auth(key))).batch
            if b.done:
                elapsed = time.perf_counter() - t0
                assert b.succeeded_count == n, b
                return n / elapsed
            await asyncio.sleep(0.02)


async def latency(stack: Stack, key: str, pairs: int) -> tuple[list[float], list[float]]:
    job_ms: list[float] = []
    direct_ms: list[float] = []
    async with (
        grpc.aio.insecure_channel(stack.address("jobs")) as jch,
        grpc.aio.insecure_channel(stack.address("gateway")) as gch,
    ):
        jobs = jobs_pb2_grpc.JobsServiceStub(jch)
        gateway = gateway_pb2_grpc.GatewayServiceStub(gch)
        for _ in range(pairs):
            req = generate("fake-ok")
            t0 = time.perf_counter()
            name = (await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=req), metadata=auth(key))).job.name
            while True:  # polled: the client of a job has nothing else to wait on
                if (await jobs.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=auth(key))).job.done:
                    break
                await asyncio.sleep(0.005)
            job_ms.append((time.perf_counter() - t0) * 1000)
            complete = gateway_pb2.CompleteRequest.FromString(generate("fake-ok").SerializeToString())
            t0 = time.perf_counter()
            await gateway.Complete(complete, metadata=auth(key))
            direct_ms.append((time.perf_counter() - t0) * 1000)
    return job_ms, direct_ms


async def recovery(stack: Stack, key: str) -> tuple[float, float, float]:
    child = stack.child_of("jobs")
    async with grpc.aio.insecure_channel(stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        name = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate(SLOW)), metadata=auth(key))).job.name

        async def get() -> jobs_pb2.Job | None:
            try:
                return (await stub.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=auth(key))).job
            except grpc.aio.AioRpcError:
                return None  # the jobs service is restarting

        while True:
            j = await get()
            if j is not None and j.metadata.state == jobs_pb2.JOB_STATE_RUNNING:
                break
            await asyncio.sleep(0.01)
        dead = child.process.pid
        killed_wall = time.time()
        t0 = time.perf_counter()
        os.kill(dead, signal.SIGKILL)
        ready = 0.0
        while True:
            now = time.perf_counter() - t0
            if not ready and child.process.pid != dead and serving(child):
                ready = now
            j = await get()
            if j is not None and j.done:
                assert j.metadata.state == jobs_pb2.JOB_STATE_SUCCEEDED, j.error
                assert j.metadata.attempt_count >= 2, "the job ended before the kill reached it"
                restarted = j.metadata.start_time.ToMilliseconds() / 1000 - killed_wall
                return ready or now, restarted, j.metadata.end_time.ToMilliseconds() / 1000 - killed_wall
            await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="items of the throughput batch")
    parser.add_argument("--pairs", type=int, default=40, help="job/direct pairs for latency")
    parser.add_argument("--kills", type=int, default=3, help="worker kills for recovery")
    parser.add_argument("--claim-idle-ms", type=int, default=1500)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    provider = FakeProvider("openai", run)
    try:
        for workers in (1, 4):
            stack = start(run / f"w{workers}", provider, TOLLWAY_JOBS_WORKERS=str(workers))
            try:
                key = asyncio.run(_create_key(stack.redis_url, f"bench-{workers}"))[0]
                asyncio.run(throughput(stack, key, 20))  # warm-up: channels, caches, the first reserve
                rate = asyncio.run(throughput(stack, key, args.jobs))
                print(
                    f"throughput  workers={workers}  {args.jobs} jobs  {rate:.1f} jobs/s  load {os.getloadavg()[0]:.1f}"
                )
                if workers == 4:
                    job_ms, direct_ms = asyncio.run(latency(stack, key, args.pairs))
                    print(
                        f"latency     job p50 {statistics.median(job_ms):.1f} ms p95 {_pct(job_ms, 0.95):.1f} ms | "
                        f"direct Complete p50 {statistics.median(direct_ms):.1f} ms p95 {_pct(direct_ms, 0.95):.1f} ms "
                        f"({args.pairs} pairs)  load {os.getloadavg()[0]:.1f}"
                    )
            finally:
                stack.stop()
        stack = start(run / "kill", provider, TOLLWAY_JOBS_CLAIM_IDLE_MS=str(args.claim_idle_ms))
        try:
            key = asyncio.run(_create_key(stack.redis_url, "bench-kill"))[0]
            for i in range(args.kills):
                ready, restarted, done = asyncio.run(recovery(stack, key))
                print(
                    f"recovery    kill {i + 1}: process serving {ready:.2f} s, job restarted {restarted:.2f} s, "
                    f"job done {done:.2f} s after SIGKILL (claim idle {args.claim_idle_ms} ms)  "
                    f"load {os.getloadavg()[0]:.1f}"
                )
        finally:
            stack.stop()
    finally:
        provider.stop()


if __name__ == "__main__":
    main()
