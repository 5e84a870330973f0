"""Call insights on a real Redis: totals kept by the call-log batch, tenant-scoped pages, raw
text kept only where allowed and expiring, feedback that replaces itself in every total."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.support.redis_server import local_redis
from tollway.common.chat import ChatMessage
from tollway.gateway.calllog import CallLog, RawPolicy
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.insights import Insights, Viewer
from tollway.gateway.store import GatewayStore
from tollway.mesh.errors import InvalidArgument, NotFound, PermissionDenied

pytestmark = pytest.mark.timeout(30)

ACME = Viewer("acme", admin=False)
BETA = Viewer("beta", admin=False)
ADMIN = Viewer("admin", admin=True)


@pytest.fixture
async def store() -> AsyncIterator[GatewayStore]:
    with local_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        yield GatewayStore(client)
        await client.aclose()


def call(rid: str, tenant: str, model: str = "fake-ok", cost_micros: int = 100) -> CallRecord:
    rec = CallRecord.begin(rid, tenant, "search", "u1", model, "h", prompt_template="triage", prompt_version="2")
    rec.input_tokens, rec.output_tokens, rec.cost_usd = 12, 4, cost_micros / 1e6
    rec.latency_ms, rec.ttft_ms = 100, 20
    return rec


async def test_the_batch_keeps_totals_that_usage_reads_per_tenant(store: GatewayStore) -> None:
    log = CallLog(store)
    for i in range(5):
        log.add(call(f"a{i}", "acme", model="big" if i < 2 else "small", cost_micros=300 if i < 2 else 100))
    log.add(call("b0", "beta"))
    await log.flush()
    insights = Insights(store, ["admin"])

    rows, days = await insights.usage(ACME, "model", "", "")
    assert [(r.group, r.requests, r.cost_usd_micros) for r in rows] == [("big", 2, 600), ("small", 3, 300)]
    assert rows[0].input_tokens == 24 and rows[0].mean_latency_ms == 100
    assert len(days) == 8
    all_tenants, _ = await insights.usage(ADMIN, "tenant", "", "")
    assert {r.group: r.requests for r in all_tenants} == {"acme": 5, "beta": 1}
    by_prompt, _ = await insights.usage(BETA, "prompt", "", "")
    assert [(r.group, r.requests) for r in by_prompt] == [("triage@2", 1)]
    with pytest.raises(PermissionDenied):
        await insights.usage(BETA, "model", "", "acme")


async def test_totals_are_kept_when_redis_lost_its_scripts_between_batches(store: GatewayStore) -> None:
    log = CallLog(store)
    log.add(call("s0", "acme"))
    await log.flush()
    await store.redis.script_flush()  # as a Redis restarted empty: the next batch's EVALSHA finds no script
    log.add(call("s1", "acme"))
    log.add(call("s2", "acme"))
    await log.flush()
    rows, _ = await Insights(store, ["admin"]).usage(ACME, "model", "", "")
    assert [(r.group, r.requests) for r in rows] == [("fake-ok", 3)]
    assert len(await store.redis.xrange("tollway:calls")) == 3


async def test_calls_are_paged_newest_first_and_scoped_to_the_tenant(store: GatewayStore) -> None:
    log = CallLog(store)
    for i in range(5):
        log.add(call(f"a{i}", "acme"))
        log.add(call(f"b{i}", "beta"))
    await log.flush()
    insights = Insights(store, ["admin"])

    seen: list[str] = []
    token = ""
    while True:
        page, token = await insights.calls(ACME, "", 2, token)
        seen += [c.fields["request_id"] for c in page]
        if not token:
            break
    assert seen == ["a4", "a3", "a2", "a1", "a0"]
    everyone, _ = await insights.calls(ADMIN, "", 100, "")
    assert len(everyone) == 10
    only_beta, _ = await insights.calls(ADMIN, "beta", 100, "")
    assert {c.fields["tenant"] for c in only_beta} == {"beta"}
    with pytest.raises(PermissionDenied):
        await insights.calls(ACME, "beta", 10, "")
    with pytest.raises(InvalidArgument, match="page_token"):
        await insights.calls(ACME, "", 10, "not-a-token")


async def test_raw_text_is_kept_apart_only_where_allowed_and_expires(store: GatewayStore) -> None:
    log = CallLog(store, raw=RawPolicy.parse("acme", retention_s=1))
    prompt = (ChatMessage("user", "my secret question"),)
    log.add(call("kept", "acme"), prompt, "the answer")
    log.add(call("not-kept", "beta"), prompt, "the answer")
    await log.flush()
    insights = Insights(store, ["admin"])

    raw = await insights.raw(ACME, "kept")
    assert raw is not None and "my secret question" in raw["prompt"] and raw["response"] == "the answer"
    assert await insights.raw(BETA, "not-kept") is None
    [listed] = (await insights.calls(ACME, "", 10, ""))[0]
    assert listed.raw_state == "hot" and listed.fields["raw_stored"] == "1"
    [other] = (await insights.calls(BETA, "", 10, ""))[0]
    assert other.raw_state == "not_kept"
    # Nothing of the raw text is in the record itself: only its hashes.
    assert "my secret question" not in str(listed.fields)
    with pytest.raises(NotFound):
        await insights.raw(BETA, "kept")
    view, raw_text = await insights.call(ACME, "kept")
    assert view.fields["request_id"] == "kept" and view.raw_state == "hot"
    assert raw_text is not None and raw_text["response"] == "the answer"
    other_view, nothing = await insights.call(BETA, "not-kept")
    assert other_view.raw_state == "not_kept" and nothing is None
    with pytest.raises(NotFound):
        await insights.call(BETA, "kept")
    # The retention is a Redis TTL: waiting for time to pass is the test (nothing to poll).
    deadline = time.monotonic() + 5
    while (await insights.calls(ACME, "", 10, ""))[0][0].raw_state != "expired":
        assert time.monotonic() < deadline, "the raw text never expired"
        await asyncio.sleep(0.2)
    assert await insights.raw(ACME, "kept") is None
    view, raw_text = await insights.call(ACME, "kept")
    assert view.raw_state == "expired" and raw_text is None


async def test_feedback_counts_once_per_call_and_only_for_its_tenant(store: GatewayStore) -> None:
    log = CallLog(store)
    log.add(call("a0", "acme", model="big"))
    log.add(call("a1", "acme", model="big"))
    await log.flush()
    insights = Insights(store, ["admin"])

    assert await insights.feedback(ACME, "a0", 1.0, "great") is False
    assert await insights.feedback(ACME, "a0", 0.5, "on second thought") is True  # replaces, not adds
    assert await insights.feedback(ACME, "a1", 0.0, "") is False
    [big] = (await insights.usage(ACME, "model", "", ""))[0]
    assert big.feedback_count == 2 and big.mean_feedback == pytest.approx(0.25)
    [prompt] = (await insights.usage(ACME, "prompt", "", ""))[0]
    assert prompt.feedback_count == 2

    with pytest.raises(NotFound):
        await insights.feedback(BETA, "a0", 1.0, "")  # another tenant's call: as if unknown
    with pytest.raises(NotFound):
        await insights.feedback(ACME, "never-made", 1.0, "")
    with pytest.raises(InvalidArgument):
        await insights.feedback(ACME, "a0", 2.0, "")
    # Refused feedback changed nothing.
    [big] = (await insights.usage(ACME, "model", "", ""))[0]
    assert big.feedback_count == 2 and big.mean_feedback == pytest.approx(0.25)
    page, _ = await insights.calls(ACME, "", 10, "")
    assert {c.fields["request_id"]: c.feedback_score for c in page} == {"a1": 0.0, "a0": 0.5}


async def test_without_totals_only_the_records_are_written(store: GatewayStore) -> None:
    log = CallLog(store, aggregate=False)
    log.add(call("a0", "acme"))
    await log.flush()
    assert len(await store.recent_calls(10)) == 1
    assert await store.usage_tenants() == []


def test_tollway_insights_usage_prints_a_table_or_csv(capsys: pytest.CaptureFixture[str]) -> None:
    from tollway.cli import main

    with local_redis() as server:

        async def write() -> None:
            client = aioredis.Redis.from_url(server.url)
            log = CallLog(GatewayStore(client))
            for i in range(3):
                log.add(call(f"c{i}", "acme" if i else "beta"))
            await log.flush()
            await client.aclose()

        asyncio.run(write())
        assert main(["--redis-url", server.url, "insights", "usage", "--by", "tenant", "--csv"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("tenant,requests,input_tokens,output_tokens,cached_tokens,cost_usd")
        assert sorted(lines[1:]) == sorted([
            "acme,2,24,8,0,0.000200,100.0,20.0,0,0,0,", "beta,1,12,4,0,0.000100,100.0,20.0,0,0,0,",
        ])
        assert main(["--redis-url", server.url, "insights", "usage", "--by", "user", "--tenant", "acme"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith("usage by user") and table[2].split()[:2] == ["u1", "2"]
        assert main(["--redis-url", server.url, "insights", "usage", "--since", "yesterday"]) == 2
        assert "since 'yesterday' is not a date" in capsys.readouterr().err


async def test_quality_samples_add_agreement_per_model_and_prompt(store: GatewayStore) -> None:
    log = CallLog(store)
    log.add(call("a0", "acme", model="big"))
    log.add_agreement("acme", "default", "big", "triage", "2", 0.9)
    log.add_agreement("acme", "default", "big", "triage", "2", 0.5)
    await log.flush()
    log.add_agreement("acme", "default", "big", "triage", "2", 0.4)  # alone in a batch: still written
    await log.flush()
    insights = Insights(store, ["admin"])
    [big] = (await insights.usage(ACME, "model", "", ""))[0]
    assert big.requests == 1 and big.agreement_samples == 3 and big.mean_agreement == pytest.approx(0.6)
    [prompt] = (await insights.usage(ACME, "prompt", "", ""))[0]
    assert prompt.group == "triage@2" and prompt.agreement_samples == 3
    by_namespace = {r.group: r.agreement_samples for r in (await insights.usage(ACME, "namespace", "", ""))[0]}
    assert by_namespace["default"] == 3
    # Feedback on a call still lands in the packed fields the agreement grew.
    assert await insights.feedback(ACME, "a0", 1.0, "") is False
    [big] = (await insights.usage(ACME, "model", "", ""))[0]
    assert big.feedback_count == 1 and big.agreement_samples == 3
