"""The public HTTP edge: Envoy transcoding to the gateway, SSE streaming, and every bad input."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(60)


def chat(model: str = "fake-ok", content: str = "hi", **extra: Any) -> dict[str, Any]:
    """A request that skips the response cache, so every test reaches the provider."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    body.setdefault("cache_policy", {"mode": "CACHE_MODE_BYPASS"})
    return body


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(block[len("data: ") :]) for block in text.split("\n\n") if block.startswith("data: ")]


@pytest.fixture
def client(stack: Stack, api_key: str) -> httpx.Client:
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30) as c:
        yield c


def test_generate_streams_server_sent_events(client: httpx.Client) -> None:
    r = client.post("/v1/generate", json=chat("fake-words-20"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert list(events[0]) == ["started"] and list(events[-1]) == ["completed"]
    started, completed = events[0]["started"], events[-1]["completed"]
    assert started["model"] == "fake-words-20" and started["provider"] == "fakeai"
    assert started["attempt_count"] == 1 and started["cache_tier"] == "CACHE_TIER_UNSPECIFIED"
    assert len(started["request_id"]) == 32
    text = "".join(e["delta"]["text"] for e in events[1:-1])
    assert text == "".join(f"w{i} " for i in range(20))
    assert completed["finish_reason"] == "FINISH_REASON_STOP"
    assert completed["usage"]["output_tokens"] == 20
    assert int(completed["latency_ms"]) >= int(completed["ttft_ms"]) >= 0


def test_generate_delivers_deltas_before_the_answer_ends(client: httpx.Client, fake_openai: str) -> None:
    # fake-gap-40-words-40 sends a delta every 40 ms for 1.6 s: the first reaches the client while
    # the provider is still sending the rest, i.e. before the fake counts the stream as completed
    # (1.6 s of margin: the suite's passes run side by side on two cores).
    def completed_streams() -> int:
        return httpx.get(f"{fake_openai}/_stats").json()["streams_completed"]

    before = completed_streams()
    provider_done_at_first_delta = None
    pieces: list[str] = []
    with client.stream("POST", "/v1/generate", json=chat("fake-gap-40-words-40", max_tokens=40)) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"delta"' in line:
                pieces.append(json.loads(line.removeprefix("data: "))["delta"]["text"])
                if len(pieces) == 1:
                    provider_done_at_first_delta = completed_streams() > before
    # Deltas that reach the gateway together may leave as one: the text is whole, in pieces.
    assert "".join(pieces) == "".join(f"tick{i} " for i in range(40)) and len(pieces) > 1
    assert provider_done_at_first_delta is False


def test_complete_returns_the_whole_answer_as_json(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json=chat(request_id="req-123"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "Hello from fake-ok."
    assert body["request_id"] == "req-123"
    assert body["model"] == "fake-ok" and body["provider"] == "fakeai"
    assert body["finish_reason"] == "FINISH_REASON_STOP"
    assert body["usage"]["output_tokens"] == 4


def test_malformed_json_is_400_with_the_parser_complaint(client: httpx.Client) -> None:
    r = client.post(
        "/v1/complete", content=b'{"model": "fake-ok", "messages": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "Unexpected end of string" in r.text or "Unexpected" in r.text or "parse" in r.text.lower()


def test_body_over_the_limit_is_413_naming_the_limit(stack: Stack, client: httpx.Client) -> None:
    limit = stack.mesh.edge.max_request_body_bytes
    r = client.post("/v1/complete", json=chat(content="x" * (limit + 10)))
    assert r.status_code == 413
    assert str(limit) in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "fake-ok", "messages": []}, "messages"),
        ({"model": "fake-ok", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "fake-ok", "messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        (chat(temperature=3.5), "temperature"),
        (chat(max_tokens=-1), "max_tokens"),
    ],
)
def test_invalid_request_is_400_with_a_field_violation(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    for path in ("/v1/complete", "/v1/generate"):
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        status = r.json()
        assert status["code"] == 3
        violations = next(d for d in status["details"] if d["@type"].endswith("BadRequest"))["field_violations"]
        assert field in [v["field"] for v in violations]


def test_unknown_path_is_404(client: httpx.Client) -> None:
    assert client.post("/v1/nope", json={}).status_code == 404


def test_unknown_model_is_404_naming_the_known_ones(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json=chat("no-such-model"))
    assert r.status_code == 404
    assert "no-such-model" in r.json()["message"] and "fake-ok" in r.json()["message"]


@pytest.mark.parametrize("header", [None, "Bearer tw-not-a-real-key", "Basic abc"])
def test_missing_or_invalid_key_is_401(stack: Stack, header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    r = httpx.post(stack.edge_url + "/v1/complete", json=chat(), headers=headers)
    assert r.status_code == 401
    assert "API key" in r.json()["message"]


def test_unreachable_provider_is_503_naming_it(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json=chat("unreachable"))
    assert r.status_code == 503
    assert "deadai" in r.json()["message"]


def test_rate_limited_provider_is_429_with_retry_after(client: httpx.Client) -> None:
    r = client.post("/v1/complete", json=chat("fake-429"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"


def test_provider_cut_mid_stream_ends_with_an_error_event(client: httpx.Client) -> None:
    events = sse_events(client.post("/v1/generate", json=chat("fake-cut-mid-stream")).text)
    assert "started" in events[0] and "delta" in events[1]
    error = events[-1]["error"]
    assert error["code"] == 14 and error["reason"] == "PROVIDER_STREAM_CUT"
    assert error["partial_usage"]["output_tokens"] > 0


def test_client_disconnect_cancels_the_provider_call(stack: Stack, api_key: str, fake_openai: str) -> None:
    before = httpx.get(f"{fake_openai}/_stats").json()["streams_aborted_by_client"]
    body = json.dumps(chat("fake-gap-50")).encode()
    host, port = stack.mesh.edge.listen.host, stack.mesh.edge.listen.port
    with socket.create_connection((host, port)) as s:
        s.sendall(
            b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {api_key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b'"delta"') < 2:
            received += s.recv(4096)
    # The socket is closed: Envoy cancels the gateway call, which cancels the router call,
    # which closes the provider connection. The fake counts that.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if httpx.get(f"{fake_openai}/_stats").json()["streams_aborted_by_client"] > before:
            return
        time.sleep(0.05)
    pytest.fail("the provider stream was not closed after the client disconnected")


def test_cors_preflight_from_an_allowed_origin(stack: Stack) -> None:
    origin = stack.mesh.edge.cors_origins[0]
    r = httpx.options(
        stack.edge_url + "/v1/generate",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin


def test_call_record_is_written(client: httpx.Client, stack: Stack) -> None:
    import redis

    client.post("/v1/complete", json=chat(request_id="record-me", feature="search")).raise_for_status()
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = [f for _, f in r.xrevrange("tollway:calls", count=50) if f.get("request_id") == "record-me"]
        if rows:
            row = rows[0]
            assert row["tenant"] == "acme" and row["feature"] == "search" and row["status"] == "OK"
            assert row["model"] == "fake-ok" and row["provider"] == "fakeai" and int(row["output_tokens"]) == 4
            assert int(row["latency_ms"]) >= 0 and len(row["prompt_hash"]) == 32
            return
        time.sleep(0.05)
    pytest.fail("no call record for request 'record-me'")


def test_a_failing_model_falls_through_and_says_so(client: httpx.Client) -> None:
    # Another model may answer only when the request allows it (the default keeps the model).
    allow = {"x-tollway-allow-fallback": "true"}
    events = sse_events(client.post("/v1/generate", json=chat("falls-back"), headers=allow).text)
    started, completed = events[0]["started"], events[-1]["completed"]
    assert started["model"] == "fake-ok" and started["provider"] == "fakeai"
    assert started["attempt_count"] >= 2
    assert completed["fallback_path"] and completed["fallback_path"][0].startswith("falls-back")
    body = client.post("/v1/complete", json=chat("falls-back"), headers=allow).json()
    assert body["model"] == "fake-ok" and body["fallback_path"][0].startswith("falls-back")
    assert started["fallback_path"][0].startswith("falls-back")
