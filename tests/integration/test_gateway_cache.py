"""The response cache as a client sees it through Envoy: exact and semantic hits, scopes,
bypass, nothing partial stored, and a stale answer when every provider is down."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis

from tests.support.polling import eventually_sync
from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(60)


def body(content: str, model: str = "fake-ok", namespace: str = "", mode: str = "", **extra: Any) -> dict[str, Any]:
    policy: dict[str, str] = {}
    if namespace:
        policy["namespace"] = namespace
    if mode:
        policy["mode"] = mode
    return {"model": model, "messages": [{"role": "user", "content": content}], "cache_policy": policy, **extra}


def generate(client: httpx.Client, payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    r = client.post("/v1/generate", json=payload)
    assert r.status_code == 200, r.text
    events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    return events[0]["started"], text, events[-1]


def provider_requests(fake: str) -> int:
    return httpx.get(f"{fake}/_stats").json()["requests"]


def store_count(stack: Stack, namespace: str) -> int:
    with grpc.insecure_channel(stack.address("cache")) as channel:
        stats = cache_pb2_grpc.CacheServiceStub(channel).GetStats(
            cache_pb2.GetStatsRequest(namespace=namespace), timeout=5
        )
    return stats.namespaces[0].store_count


@contextlib.contextmanager
def stored(stack: Stack, namespace: str = "default") -> Iterator[None]:
    """Waits, after the block, until the cache has stored one more answer in ``namespace``.

    The gateway stores an answer after it was sent, so the next request may come first.
    """
    before = store_count(stack, namespace)
    yield
    eventually_sync(lambda: store_count(stack, namespace) > before, what=f"a store in namespace {namespace!r}")


def recorded(stack: Stack, request_id: str) -> None:
    """Waits until the call record of ``request_id`` is written.

    For a request that must store nothing: the gateway hands a store to the cache before it
    queues the call record, and writes records in batches later, so a store made by mistake
    has landed by the time the record is visible.
    """
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        eventually_sync(
            lambda: any(f.get("request_id") == request_id for _, f in client.xrevrange("tollway:calls", count=100)),
            what=f"the call record of {request_id!r}",
        )
    finally:
        client.close()


@pytest.fixture
def client(stack: Stack, api_key: str) -> httpx.Client:
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30) as c:
        yield c


def test_the_same_request_is_answered_from_the_exact_tier(
    client: httpx.Client, stack: Stack, fake_openai: str
) -> None:
    question = f"What is the refund policy? {uuid.uuid4()}"
    with stored(stack):
        first, text, _ = generate(client, body(question))
    assert first["cache_tier"] == "CACHE_TIER_MISS" and first["attempt_count"] == 1
    before = provider_requests(fake_openai)
    second, cached_text, completed = generate(client, body(question))
    assert second["cache_tier"] == "CACHE_TIER_EXACT" and second["attempt_count"] == 0
    assert second["model"] == "fake-ok" and second["provider"] == "fakeai"
    assert cached_text == text
    assert completed["completed"]["cost"]["cost_usd_micros"] == "0"
    assert provider_requests(fake_openai) == before


def test_a_paraphrase_is_answered_from_the_semantic_tier(client: httpx.Client, stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    with stored(stack):
        generate(client, body(f"How do I reset my password for account {tag}?"))
    started, _, _ = generate(client, body(f"How can I reset the password of account {tag}?"))
    assert started["cache_tier"] == "CACHE_TIER_SEMANTIC"


def test_a_near_miss_with_other_numbers_is_not_served(client: httpx.Client, stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    with stored(stack):
        generate(client, body(f"What is 15 percent of 200 dollars? ref {tag}"))
    started, _, _ = generate(client, body(f"What is 25 percent of 200 dollars? ref {tag}"))
    assert started["cache_tier"] == "CACHE_TIER_MISS"


def test_bypass_neither_reads_nor_writes(client: httpx.Client, stack: Stack) -> None:
    question = f"bypass me {uuid.uuid4()}"
    request_id = f"bypass-{uuid.uuid4().hex[:8]}"
    started, _, _ = generate(client, body(question, mode="CACHE_MODE_BYPASS", request_id=request_id))
    assert started["cache_tier"] == "CACHE_TIER_UNSPECIFIED"
    recorded(stack, request_id)
    started, _, _ = generate(client, body(question))
    assert started["cache_tier"] == "CACHE_TIER_MISS"


def test_user_scoped_answers_are_never_served_to_another_user(client: httpx.Client, stack: Stack) -> None:
    question = f"What is my account balance? {uuid.uuid4()}"
    with stored(stack, "personal"):
        generate(client, body(question, namespace="personal", user="alice"))
    other, _, _ = generate(client, body(question, namespace="personal", user="bob"))
    assert other["cache_tier"] == "CACHE_TIER_MISS"
    own, _, _ = generate(client, body(question, namespace="personal", user="alice"))
    assert own["cache_tier"] == "CACHE_TIER_EXACT"


def test_another_tenant_never_sees_a_tenant_scoped_answer(stack: Stack, client: httpx.Client) -> None:
    import asyncio

    from tollway.cli import _create_key

    question = f"internal roadmap question {uuid.uuid4()}"
    with stored(stack):
        generate(client, body(question))
    other_key, _ = asyncio.run(_create_key(stack.redis_url, "globex"))
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {other_key}"}) as other:
        started, _, _ = generate(other, body(question))
    assert started["cache_tier"] == "CACHE_TIER_MISS"


def test_a_stream_cut_mid_answer_is_not_stored(client: httpx.Client, stack: Stack) -> None:
    question = f"cut me {uuid.uuid4()}"
    for attempt in range(2):
        request_id = f"cut-{attempt}-{uuid.uuid4().hex[:8]}"
        started, _, last = generate(client, body(question, model="fake-cut-mid-stream", request_id=request_id))
        assert started["cache_tier"] == "CACHE_TIER_MISS"
        assert "error" in last
        recorded(stack, request_id)


def test_every_provider_down_serves_the_stale_answer_marked_degraded(
    client: httpx.Client, stack: Stack, killable_openai: tuple[subprocess.Popen[bytes], str]
) -> None:
    question = f"What are the office hours? {uuid.uuid4()}"
    with stored(stack, "short"):
        _, fresh_text, _ = generate(client, body(question, model="fake-killable", namespace="short"))
    time.sleep(1.3)  # time itself: past the namespace's 1 s TTL, inside its grace period
    proc, _ = killable_openai
    proc.kill()
    proc.wait()
    started, text, last = generate(client, body(question, model="fake-killable", namespace="short"))
    assert started["degraded"] is True and started["cache_tier"] == "CACHE_TIER_STALE"
    assert text == fresh_text and "completed" in last
    r = client.post("/v1/complete", json=body(question, model="fake-killable", namespace="short"))
    assert r.status_code == 200 and r.json()["degraded"] is True
    # With nothing cached, the same outage is a clear error naming the provider.
    r = client.post("/v1/complete", json=body(f"never asked {uuid.uuid4()}", model="fake-killable"))
    assert r.status_code == 503 and "killable" in r.json()["message"]


def test_call_records_say_which_tier_answered(client: httpx.Client, stack: Stack) -> None:
    question = f"record the tier {uuid.uuid4()}"
    with stored(stack):
        generate(client, body(question, request_id="tier-miss"))
    generate(client, body(question, request_id="tier-hit"))
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = {f["request_id"]: f for _, f in r.xrevrange("tollway:calls", count=100)}
        if "tier-hit" in rows and "tier-miss" in rows:
            assert rows["tier-miss"]["cache_tier"] == "miss" and rows["tier-hit"]["cache_tier"] == "exact"
            assert rows["tier-hit"]["attempts"] == "0" and rows["tier-hit"]["cache_entry"]
            return
        time.sleep(0.05)
    pytest.fail("call records missing")


def test_cli_purge_of_a_namespace_removes_its_answers(client: httpx.Client, stack: Stack) -> None:
    import sys

    question = f"purge me {uuid.uuid4()}"
    with stored(stack, "sampled"):
        generate(client, body(question, namespace="sampled"))
    assert generate(client, body(question, namespace="sampled"))[0]["cache_tier"] in (
        "CACHE_TIER_EXACT",
        "CACHE_TIER_SEMANTIC",
    )
    cli = [sys.executable, "-m", "tollway.cli", "cache", "purge", "--target", stack.address("cache")]
    out = subprocess.run([*cli, "--namespace", "sampled"], capture_output=True, text=True, check=True).stdout
    assert "removed" in out
    assert generate(client, body(question, namespace="sampled"))[0]["cache_tier"] == "CACHE_TIER_MISS"


async def test_sampled_semantic_hits_are_answered_fresh_and_compared(client: httpx.Client, stack: Stack) -> None:
    import asyncio

    tag = uuid.uuid4().hex[:8]
    with stored(stack, "sampled"):
        generate(client, body(f"How do I change the billing email of workspace {tag}?", namespace="sampled"))
    started, _, _ = generate(
        client, body(f"How can I change the billing email for workspace {tag}?", namespace="sampled")
    )
    assert started["cache_tier"] == "CACHE_TIER_SEMANTIC"
    async with grpc.aio.insecure_channel(stack.address("cache")) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for _ in range(50):
            stats = await stub.GetStats(cache_pb2.GetStatsRequest(namespace="sampled"))
            if stats.namespaces[0].quality_sample_count >= 1:
                # Both answers come from the same fake model, so they agree completely.
                assert stats.namespaces[0].quality_token_f1_mean == pytest.approx(1.0)
                return
            await asyncio.sleep(0.1)
    pytest.fail("no quality sample was recorded for a sampled semantic hit")


def test_refresh_skips_the_lookup_and_stores_a_semantically_findable_answer(
    client: httpx.Client, stack: Stack
) -> None:
    tag = uuid.uuid4().hex[:8]
    question = f"How do I export the audit log of project {tag}?"
    # Only a refresh has ever answered this question: the entry must carry its vector.
    with stored(stack):
        started, _, _ = generate(client, body(question, mode="CACHE_MODE_REFRESH"))
    assert started["cache_tier"] == "CACHE_TIER_MISS" and started["attempt_count"] == 1
    paraphrase, _, _ = generate(client, body(f"How can I export the audit log for project {tag}?"))
    assert paraphrase["cache_tier"] == "CACHE_TIER_SEMANTIC"
