"""Jobs through a real stack: Redis, the gateway (with budget, cache and router), the jobs service and
Envoy, one process per service (split: tests here kill processes), the fake OpenAI provider behind.

Covered: a job completes through the gateway's lifecycle as its submitter's key and is charged once; a
forged or foreign on-behalf-of token is refused by the gateway; a jobs process SIGKILLed mid-job is
restarted, the job is reclaimed from the pending list and finishes once, charged once; webhooks are
signed, retried and dead-lettered; bad input gets the right status and changes nothing; batches.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from tests.conftest import TEST_RUN_DIR
from tests.support.jobs import (
    HOOK_SECRET,
    SECRET,
    assert_charged_once,
    auth,
    commits,
    generate,
    serving,
    stack_options,
    wait_done,
    write_catalog,
)
from tests.support.polling import eventually
from tollway.cli import _create_key
from tollway.common import delegation
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.jobs import webhooks
from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(180)

SLOW_MODEL = "fake-gap-60-words-60"  # about 3.6 s of streaming: long enough to be killed mid-job
SERVICES = ("gateway", "router", "cache", "budget", "jobs")


@pytest.fixture(scope="module")
def jobs_catalog(run_dir: Path, fake_openai: str) -> Path:
    return write_catalog(
        run_dir / "jobs-models.yaml", fake_openai, ("fake-ok", "fake-words-20", "fake-400", SLOW_MODEL)
    )


@pytest.fixture(scope="module")
def jobs_stack(jobs_catalog: Path, budget_plans: Path, namespaces: Path) -> Iterator[Stack]:
    with Stack(stack_options("jobs-", jobs_catalog, budget_plans, namespaces, TEST_RUN_DIR)) as running:
        yield running


@pytest.fixture(scope="module")
def tenant_key(jobs_stack: Stack) -> tuple[str, str]:
    tenant = "jobs-" + os.urandom(3).hex()
    return tenant, asyncio.run(_create_key(jobs_stack.redis_url, tenant))[0]


async def test_a_job_completes_as_its_key_and_is_charged_once(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    tenant, key = tenant_key
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        submitted = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate()), metadata=auth(key))).job
        assert submitted.name.startswith("jobs/")
        assert not submitted.done
        assert submitted.metadata.state == jobs_pb2.JOB_STATE_QUEUED
        job = await wait_done(stub, key, submitted.name)
    assert job.metadata.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.WhichOneof("result") == "response"
    assert job.response.text
    assert job.response.request_id == "job-" + job.name.removeprefix("jobs/")
    assert job.metadata.attempt_count == 1
    assert job.metadata.priority == gateway_pb2.PRIORITY_BATCH
    assert job.metadata.HasField("expire_time")
    await eventually(lambda: len(commits(jobs_stack.redis_url, tenant, job.name)) == 1, what="one ledger commit")


async def test_jobs_over_http_through_envoy(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    _, key = tenant_key
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=jobs_stack.edge_url, timeout=10) as client:
        body = {"request": {"model": "fake-ok", "messages": [{"role": "user", "content": "hi over http"}]}}
        r = await client.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 200, r.text
        name = r.json()["job"]["name"]

        async def done() -> dict | None:
            got = (await client.get(f"/v1/{name}", headers=headers)).json()["job"]
            return got if got.get("done") else None

        job = await eventually(done, timeout_s=30, interval_s=0.1, what="the job done over HTTP")
        assert job["response"]["text"]
        listed = (await client.get("/v1/jobs", params={"state": "JOB_STATE_SUCCEEDED"}, headers=headers)).json()
        assert name in [j["name"] for j in listed["jobs"]]
        missing = await client.get("/v1/jobs/0000000000000000000000", headers=headers)
        assert missing.status_code == 404
        finished = await client.post(f"/v1/{name}:cancel", json={}, headers=headers)
        assert finished.status_code == 400  # FAILED_PRECONDITION
        assert "already succeeded" in finished.text


async def test_bad_input_is_refused_and_changes_nothing(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    tenant, key = tenant_key
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        before = (await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000), metadata=auth(key))).jobs

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetJob(jobs_pb2.GetJobRequest(name="jobs/0000000000000000000000"), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetJob(jobs_pb2.GetJobRequest(name="operations/x"), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "jobs/<id>" in (err.value.details() or "")
        for url, why in (
            ("ftp://example.com/hook", "http:// or https://"),
            ("http://10.1.2.3/hook", "private, loopback or reserved"),
            ("http://169.254.169.254/latest/meta-data", "private, loopback or reserved"),
            ("https://[::ffff:192.168.0.1]/x", "private, loopback or reserved"),
            ("not a url", "http:// or https://"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate(), webhook_url=url), metadata=auth(key))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert why in (err.value.details() or ""), (url, err.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate()), metadata=auth("tw-not-a-key"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        no_messages = jobs_pb2.SubmitJobRequest(request=gateway_pb2.GenerateRequest(model="fake-ok"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(no_messages, metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request.messages" in (err.value.details() or "")
        items = [jobs_pb2.BatchItem(request=generate()) for _ in range(301)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBatch(jobs_pb2.SubmitBatchRequest(items=items), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 300 items" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBatch(jobs_pb2.SubmitBatchRequest(), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = (await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000), metadata=auth(key))).jobs
    assert [j.name for j in after] == [j.name for j in before]
    assert tenant


async def test_a_job_the_gateway_refuses_fails_with_its_status(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    _, key = tenant_key
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        req = generate(model="no-such-model")
        name = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=req), metadata=auth(key))).job.name
        job = await wait_done(stub, key, name)
    assert job.metadata.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-model" in job.error.message
    assert job.metadata.attempt_count == 1  # not retried: the request itself is wrong


async def test_the_gateway_refuses_forged_and_foreign_tokens(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    tenant, key = tenant_key
    key_id = key[:9]
    good = delegation.mint(SECRET.encode(), tenant, key_id, delegation.key_sha256(key), "test")
    forged = delegation.mint(b"some-other-secret-of-enough-length", tenant, key_id, delegation.key_sha256(key), "test")
    payload, _, mac = good.removeprefix(delegation.PREFIX).rpartition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["t"] = "someone-else"
    other_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    tampered = f"{delegation.PREFIX}{other_payload}.{mac}"
    expired = delegation.sign(
        SECRET.encode(), delegation.Delegation(tenant, key_id, delegation.key_sha256(key), "test", int(time.time()) - 5)
    )
    async with grpc.aio.insecure_channel(jobs_stack.address("gateway")) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        caller = await stub.GetCaller(gateway_pb2.GetCallerRequest(), metadata=auth(good))
        assert (caller.tenant, caller.key_id) == (tenant, key_id)
        for token in (forged, tampered, expired, delegation.PREFIX + "x.y"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetCaller(gateway_pb2.GetCallerRequest(), metadata=auth(token))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token


async def test_a_worker_killed_mid_job_is_reclaimed_and_the_job_finishes_once(
    jobs_stack: Stack, tenant_key: tuple[str, str]
) -> None:
    tenant, key = tenant_key
    jobs_child = jobs_stack.child_of("jobs")
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        name = (
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate(SLOW_MODEL)), metadata=auth(key))
        ).job.name

        async def running() -> bool:
            job = (await stub.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=auth(key))).job
            return job.metadata.state == jobs_pb2.JOB_STATE_RUNNING

        await eventually(running, timeout_s=20, what="the slow job running")
        dead = jobs_child.process.pid
        os.kill(dead, signal.SIGKILL)
        await eventually(lambda: jobs_child.process.pid != dead and serving(jobs_child), timeout_s=30, what="jobs back")
        job = await wait_done(stub, key, name, timeout_s=90)
    assert job.metadata.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.metadata.attempt_count == 2
    assert job.response.text
    assert_charged_once(jobs_stack.redis_url, tenant, name)


class Receiver:
    """A webhook receiver: refuses the first ``fail_first`` deliveries of each job with a 500, then
    accepts; verifies every signature; records what it accepted."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.tries: dict[str, int] = {}
        self.accepted: list[str] = []
        self.bad_signatures = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                ok = webhooks.verify(
                    HOOK_SECRET.encode(),
                    body,
                    self.headers[webhooks.TIMESTAMP_HEADER],
                    self.headers[webhooks.SIGNATURE_HEADER],
                )
                delivery = self.headers[webhooks.DELIVERY_HEADER]
                if not ok:
                    outer.bad_signatures += 1
                n = outer.tries.get(delivery, 0) + 1
                outer.tries[delivery] = n
                status = 500 if n <= outer.fail_first else 204
                if status == 204:
                    assert json.loads(body)["name"] == delivery
                    outer.accepted.append(delivery)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_webhooks_are_signed_retried_and_delivered_once(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    _, key = tenant_key
    receiver = Receiver(fail_first=2)
    try:
        async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
            stub = jobs_pb2_grpc.JobsServiceStub(ch)
            names = []
            for _ in range(3):
                req = jobs_pb2.SubmitJobRequest(request=generate(), webhook_url=receiver.url)
                names.append((await stub.SubmitJob(req, metadata=auth(key))).job.name)

            async def delivered() -> list[jobs_pb2.Job] | None:
                jobs = [(await stub.GetJob(jobs_pb2.GetJobRequest(name=n), metadata=auth(key))).job for n in names]
                return jobs if all(j.metadata.webhook_state == "delivered" for j in jobs) else None

            jobs = await eventually(delivered, timeout_s=60, interval_s=0.1, what="every webhook delivered")
    finally:
        receiver.close()
    assert receiver.bad_signatures == 0
    assert sorted(receiver.accepted) == sorted(names)  # each once
    for job in jobs:
        statuses = [d.http_status for d in job.metadata.webhook_deliveries]
        assert statuses == [500, 500, 204]
        assert [bool(d.error) for d in job.metadata.webhook_deliveries] == [True, True, False]


async def test_a_webhook_that_never_answers_is_dead_lettered(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    _, key = tenant_key
    receiver = Receiver(fail_first=1000)
    try:
        async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
            stub = jobs_pb2_grpc.JobsServiceStub(ch)
            req = jobs_pb2.SubmitJobRequest(request=generate(), webhook_url=receiver.url)
            name = (await stub.SubmitJob(req, metadata=auth(key))).job.name

            async def dead() -> jobs_pb2.Job | None:
                job = (await stub.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=auth(key))).job
                return job if job.metadata.webhook_state == "dead_lettered" else None

            job = await eventually(dead, timeout_s=60, interval_s=0.1, what="the webhook dead-lettered")
    finally:
        receiver.close()
    assert len(job.metadata.webhook_deliveries) == 4  # TOLLWAY_JOBS_WEBHOOK_MAX_ATTEMPTS
    assert receiver.accepted == []
    client = redis.Redis.from_url(jobs_stack.redis_url)
    try:
        letters = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange("{tw:jobs}:deadletter")]
    finally:
        client.close()
    assert name in [letter["job"] for letter in letters]


async def test_cancelling_a_running_job(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    _, key = tenant_key
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        name = (
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=generate(SLOW_MODEL)), metadata=auth(key))
        ).job.name
        cancelled = (await stub.CancelJob(jobs_pb2.CancelJobRequest(name=name), metadata=auth(key))).job
        assert cancelled.done
        assert cancelled.metadata.state == jobs_pb2.JOB_STATE_CANCELLED
        assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
        again = (await stub.CancelJob(jobs_pb2.CancelJobRequest(name=name), metadata=auth(key))).job
        assert again.metadata.state == jobs_pb2.JOB_STATE_CANCELLED


async def test_a_batch_runs_every_item_once(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    tenant, key = tenant_key
    async with grpc.aio.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        items = [jobs_pb2.BatchItem(request=generate(), custom_id=f"item-{i}") for i in range(20)]
        items.append(jobs_pb2.BatchItem(request=generate(model="no-such-model"), custom_id="bad"))
        batch = (await stub.SubmitBatch(jobs_pb2.SubmitBatchRequest(items=items), metadata=auth(key))).batch
        assert batch.total_count == 21

        async def done() -> jobs_pb2.Batch | None:
            b = (await stub.GetBatch(jobs_pb2.GetBatchRequest(name=batch.name), metadata=auth(key))).batch
            return b if b.done else None

        final = await eventually(done, timeout_s=60, interval_s=0.2, what="the batch done")
        assert (final.succeeded_count, final.failed_count, final.cancelled_count) == (20, 1, 0)
        seen: list[jobs_pb2.Job] = []
        token = ""
        while True:
            page = await stub.ListJobs(
                jobs_pb2.ListJobsRequest(batch=batch.name, page_size=7, page_token=token), metadata=auth(key)
            )
            seen += page.jobs
            token = page.next_page_token
            if not token:
                break
        assert [j.metadata.custom_id for j in seen] == [f"item-{i}" for i in range(20)] + ["bad"]
        assert [j.metadata.batch_index for j in seen] == list(range(21))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelBatch(jobs_pb2.CancelBatchRequest(name=batch.name), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for j in seen[:20]:
        await eventually(lambda j=j: len(commits(jobs_stack.redis_url, tenant, j.name)) == 1, what=f"{j.name} charged")


def test_openai_batches_by_base_url(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    """The OpenAI SDK's batch flow, unchanged but for the base URL: upload JSONL, create, poll,
    read the output JSONL; a malformed line is refused naming it."""
    import openai

    _, key = tenant_key
    client = openai.OpenAI(base_url=jobs_stack.edge_url + "/v1", api_key=key, max_retries=0)
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "fake-ok", "messages": [{"role": "user", "content": f"batch line {i}"}]},
        }
        for i in range(5)
    ]
    upload = client.files.create(
        file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()), purpose="batch"
    )
    assert upload.id.startswith("file-")
    assert upload.purpose == "batch"
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "in_progress"
    assert batch.request_counts is not None
    assert batch.request_counts.total == 5

    deadline = time.monotonic() + 60
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
    assert batch.output_file_id
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == [f"req-{i}" for i in range(5)]
    for o in out:
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["object"] == "chat.completion"
        assert o["response"]["body"]["choices"][0]["message"]["content"]

    bad = "\n".join([json.dumps(lines[0]), "{not json", json.dumps(lines[1])]).encode()
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", bad), purpose="batch")
    assert "line 2" in str(err.value)
    wrong_url = json.dumps({**lines[0], "url": "/v1/embeddings"}).encode()
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", wrong_url), purpose="batch")
    assert "line 1" in str(err.value)
    listed = client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_0000000000000000000000")
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)  # finished: nothing left to cancel


def test_openai_files_list_and_delete_by_base_url(jobs_stack: Stack, tenant_key: tuple[str, str]) -> None:
    """The OpenAI SDK's files.list (paged by `after`) and files.delete; another key's tenant sees none."""
    import openai

    _, key = tenant_key
    client = openai.OpenAI(base_url=jobs_stack.edge_url + "/v1", api_key=key, max_retries=0)
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body})
    uploaded = [client.files.create(file=(f"list-{i}.jsonl", line.encode()), purpose="batch").id for i in range(3)]
    listed = [f.id for f in client.files.list(purpose="batch", limit=2)]  # the SDK follows `after` across pages
    assert listed[:3] == uploaded[::-1]
    assert client.files.list(purpose="batch", limit=1).has_more

    deleted = client.files.delete(uploaded[1])
    assert (deleted.id, deleted.deleted) == (uploaded[1], True)
    assert uploaded[1] not in [f.id for f in client.files.list(purpose="batch")]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded[1])
    with pytest.raises(openai.NotFoundError):
        client.files.delete(uploaded[1])
    with pytest.raises(openai.BadRequestError) as err:
        client.files.list(limit=0)
    assert "limit" in str(err.value)

    other_key, _ = asyncio.run(_create_key(jobs_stack.redis_url, "files-other-tenant"))
    other = openai.OpenAI(base_url=jobs_stack.edge_url + "/v1", api_key=other_key, max_retries=0)
    assert not set(uploaded) & {f.id for f in other.files.list()}
    with pytest.raises(openai.NotFoundError):
        other.files.delete(uploaded[0])


def test_the_cli_lists_shows_and_cancels(
    jobs_stack: Stack, tenant_key: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tollway.cli import main

    _, key = tenant_key
    with grpc.insecure_channel(jobs_stack.address("jobs")) as ch:
        stub = jobs_pb2_grpc.JobsServiceStub(ch)
        slow = jobs_pb2.SubmitJobRequest(request=generate(SLOW_MODEL))
        name = stub.SubmitJob(slow, metadata=auth(key)).job.name
    base = ["jobs", "--target", jobs_stack.address("jobs"), "--key", key]
    assert main([*base, "list", "--limit", "1000"]) == 0
    assert name in capsys.readouterr().out
    assert main([*base, "show", name.removeprefix("jobs/")]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == name
    assert main([*base, "cancel", name]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main([*base, "list", "--state", "cancelled"]) == 0
    assert name in capsys.readouterr().out
    assert main([*base, "show", "jobs/0000000000000000000000"]) == 2
    assert "does not exist" in capsys.readouterr().err


async def test_a_revoked_key_stops_its_queued_jobs(jobs_stack: Stack) -> None:
    """The gateway checks the key an on-behalf-of token names on every run, not only its signature."""
    from tollway.cli import _with_store
    from tollway.gateway.auth import KeyRing

    tenant = "jobs-revoked-" + os.urandom(2).hex()
    key = (await _create_key(jobs_stack.redis_url, tenant))[0]
    token = delegation.mint(SECRET.encode(), tenant, key[:9], delegation.key_sha256(key), "test")
    async with grpc.aio.insecure_channel(jobs_stack.address("gateway")) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        assert (await stub.GetCaller(gateway_pb2.GetCallerRequest(), metadata=auth(token))).tenant == tenant
        await _with_store(jobs_stack.redis_url, lambda store: KeyRing(store).revoke(key))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetCaller(gateway_pb2.GetCallerRequest(), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.value.details() or "")
