"""Helpers for the jobs tests and bench: a stack with the jobs service, requests, the budget ledger."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import redis

from tests.support.polling import eventually, eventually_sync
from tollway.gateway.v1 import gateway_pb2
from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from tollway.launcher.processes import Child, free_ports
from tollway.launcher.stack import StackOptions
from tollway.launcher.supervisor import RestartPolicy

SECRET = "jobs-test-delegation-secret-0123456789"
HOOK_SECRET = "jobs-test-webhook-secret"
SERVICES = ("gateway", "router", "cache", "budget", "jobs", "openai_compat")


def write_catalog(path: Path, fake_openai: str, models: tuple[str, ...]) -> Path:
    """A model catalog of fake models, all served by the fake OpenAI server at ``fake_openai``."""
    path.write_text(
        "providers:\n"
        f"  fakeai: {{wire: openai_compat, base_url: '{fake_openai}/v1', timeout_s: 30}}\n"
        "models:\n" + "".join(f"  {m}: {{provider: fakeai}}\n" for m in models)
    )
    return path


def stack_options(
    prefix: str, catalog: Path, budget_plans: Path, namespaces: Path, run_root: str | None, **env: str
) -> StackOptions:
    """One process per service (tests kill them), quick reclaims and webhook retries."""
    names = ["edge", "admin", "mesh", "redis", "local_model", *SERVICES]
    return StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=Path(tempfile.mkdtemp(prefix=prefix, dir=run_root or None)),
        catalog=catalog,
        with_model=False,
        services=SERVICES,
        env={
            "TOLLWAY_DELEGATION_SECRET": SECRET,
            "TOLLWAY_BUDGET_PLANS": str(budget_plans),
            "TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces),
            "TOLLWAY_JOBS_WEBHOOK_SECRET": HOOK_SECRET,
            "TOLLWAY_JOBS_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
            "TOLLWAY_JOBS_WEBHOOK_BACKOFF_MS": "100",
            "TOLLWAY_JOBS_WEBHOOK_MAX_ATTEMPTS": "4",
            "TOLLWAY_JOBS_CLAIM_IDLE_MS": "1500",
            "TOLLWAY_JOBS_HEARTBEAT_MS": "300",
            "TOLLWAY_JOBS_POLL_MS": "200",
            "TOLLWAY_JOBS_MAX_BATCH_ITEMS": "300",
            "TOLLWAY_LOG_LEVEL": "WARNING",
            **env,
        },
        restart_policy=RestartPolicy(initial_delay_s=0.2, max_delay_s=1.0, reset_after_s=5.0),
        layout="split",
    )


def auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def generate(model: str = "fake-ok", text: str = "") -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(
        model=model,
        messages=[{"role": "user", "content": text or f"hello {os.urandom(6).hex()}"}],
        max_tokens=64,
        cache_policy={"mode": 1},  # CACHE_MODE_BYPASS: every job reaches the provider
    )


def ledger(redis_url: str, tenant: str, job_name: str) -> list[dict[str, str]]:
    """The budget ledger's entries of one job (its request id is job-<id>)."""
    rid = "job-" + job_name.removeprefix("jobs/")
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"tw:budget:{{{tenant}}}:ledger")
    finally:
        client.close()
    rows = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
    return [r for r in rows if r.get("rid") == rid]


def commits(redis_url: str, tenant: str, job_name: str) -> list[dict[str, str]]:
    """The budget ledger's commit entries of one job."""
    return [r for r in ledger(redis_url, tenant, job_name) if r.get("op") == "commit"]


async def wait_done(stub: jobs_pb2_grpc.JobsServiceStub, key: str, name: str, timeout_s: float = 60) -> jobs_pb2.Job:
    async def done() -> jobs_pb2.Job | None:
        job = (await stub.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=auth(key))).job
        return job if job.done else None

    return await eventually(done, timeout_s=timeout_s, interval_s=0.1, what=f"{name} done")


def assert_charged_once(redis_url: str, tenant: str, name: str) -> None:
    """Never two commits for one job. Exactly one, unless its first run was released (killed before
    the provider took it): then the budget hands the repeated request id its released reservation,
    and the run that answers is not charged at all (a budget behaviour, reported in issue 19's notes)."""
    # The gateway settles off the response path: wait for the settlement before judging it.
    entries = eventually_sync(
        lambda: (e := ledger(redis_url, tenant, name)) and any(x["op"] in ("commit", "release") for x in e) and e,
        timeout_s=10,
        what=f"a settlement of {name} in the ledger",
    )
    ops = [e["op"] for e in entries]
    assert ops.count("commit") <= 1, entries
    if "release" not in ops:
        assert ops.count("commit") == 1, entries


def serving(child: Child) -> bool:
    try:
        return bool(child.ready())
    except Exception:  # refused while it starts
        return False
