"""Native gRPC and gRPC-Web through Envoy, the CLI, and the real local model over SSE."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import grpc
import httpx
import pytest

from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(120)


def _request(model: str = "fake-ok") -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(model=model, messages=[common_pb2.Message(role="user", content="hi")])


async def test_native_grpc_stream_through_envoy(stack: Stack, api_key: str) -> None:
    async with grpc.aio.insecure_channel(stack.mesh.edge.listen.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        events = [e async for e in stub.Generate(_request(), metadata=[("authorization", f"Bearer {api_key}")])]
    kinds = [e.WhichOneof("event") for e in events]
    # Deltas that are ready together travel as one message, so only the shape is fixed.
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert set(kinds[1:-1]) == {"delta"}
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "Hello from fake-ok."


async def test_native_grpc_error_carries_rich_details(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.mesh.edge.listen.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(gateway_pb2.CompleteRequest(model="fake-ok"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in err.value.details()


def test_grpc_web_unary_through_envoy(stack: Stack, api_key: str) -> None:
    req = gateway_pb2.CompleteRequest(model="fake-ok", messages=[common_pb2.Message(role="user", content="hi")])
    payload = req.SerializeToString()
    origin = stack.mesh.edge.cors_origins[0]
    r = httpx.post(
        stack.edge_url + "/tollway.gateway.v1.GatewayService/Complete",
        content=b"\x00" + struct.pack(">I", len(payload)) + payload,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {api_key}",
            "origin": origin,
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    body = r.content
    assert body[0] == 0
    size = struct.unpack(">I", body[1:5])[0]
    reply = gateway_pb2.CompleteResponse.FromString(body[5 : 5 + size])
    assert reply.text == "Hello from fake-ok."
    trailer = body[5 + size :]
    assert trailer[0] == 0x80 and b"grpc-status:0" in trailer.replace(b" ", b"")


def test_keys_create_prints_a_working_key_on_its_last_line(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "--redis-url", stack.redis_url, "keys", "create", "--tenant", "cli-test"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("tw-")
    r = httpx.post(
        stack.edge_url + "/v1/complete",
        json={"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200


def test_keys_create_rejects_a_bad_tenant_name(stack: Stack) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "--redis-url", stack.redis_url, "keys", "create", "--tenant", "Bad Name"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "not a valid name" in proc.stderr


@pytest.mark.model
def test_real_local_model_answers_over_sse(stack: Stack, api_key: str) -> None:
    body = {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
        ],
        "max_tokens": 24,
        "temperature": 0,
    }
    r = httpx.post(
        stack.edge_url + "/v1/generate", json=body, headers={"authorization": f"Bearer {api_key}"}, timeout=60
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]
    assert events[0]["started"]["provider"] == "local"
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert "Paris" in text
    completed = events[-1]["completed"]
    assert completed["usage"]["output_tokens"] > 0 and completed["usage"]["input_tokens"] > 0


def test_keys_list_revoke_and_calls(stack: Stack) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        base = [sys.executable, "-m", "tollway.cli", "--redis-url", stack.redis_url]
        return subprocess.run([*base, *argv], capture_output=True, text=True)

    key = cli("keys", "create", "--tenant", "revoke-me").stdout.strip().splitlines()[-1]
    listing = cli("keys", "list").stdout
    assert "tenant=revoke-me" in listing and key[:9] in listing and key not in listing
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "request_id": "cli-calls"}
    assert httpx.post(stack.edge_url + "/v1/complete", json=body, headers={"authorization": f"Bearer {key}"}).is_success
    assert cli("keys", "revoke", key).returncode == 0
    assert cli("keys", "revoke", key).returncode == 1  # already gone
    assert "tenant=revoke-me" not in cli("keys", "list").stdout
    import time

    for _ in range(50):
        records = [json.loads(line) for line in cli("calls", "--last", "50").stdout.splitlines()]
        if any(r["request_id"] == "cli-calls" and r["tenant"] == "revoke-me" for r in records):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the call record of request cli-calls was not printed")
