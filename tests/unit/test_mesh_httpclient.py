"""The lean provider HTTP client against a real local HTTP server (tests/fakes/http.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.fakes.http import FakeHTTPServer, Request, Response
from tollway.mesh.httpclient import HttpClient, HttpError, HttpTimeout


async def handler(request: Request) -> Response:
    if request.path == "/json":
        return Response(body=json.dumps({"echo": request.json(), "ua": request.headers.get("x-test")}).encode())
    if request.path == "/slow":
        await asyncio.sleep(1)
        return Response(body=b"{}")
    if request.path == "/sse":

        async def events() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"data: {i}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return Response(stream=events(), headers={"content-type": "text/event-stream"})
    return Response(status=404, body=b'{"error": "nope"}')


@pytest.fixture
async def server() -> AsyncIterator[FakeHTTPServer]:
    srv = FakeHTTPServer(handler)
    await srv.start()
    yield srv
    await srv.stop()


async def test_json_round_trip_and_connection_reuse(server: FakeHTTPServer) -> None:
    client = HttpClient()
    url = f"http://127.0.0.1:{server.port}/json"
    for i in range(5):
        async with client.stream("POST", url, json={"i": i}, headers={"x-test": "yes"}) as r:
            assert r.status_code == 200
            assert json.loads(await r.aread()) == {"echo": {"i": i}, "ua": "yes"}
    assert server.stats.open_connections == 1
    await client.aclose()


async def test_streamed_lines_arrive_in_order_and_the_connection_is_kept(server: FakeHTTPServer) -> None:
    client = HttpClient()
    for _ in range(3):
        async with client.stream("POST", f"http://127.0.0.1:{server.port}/sse") as r:
            lines = []
            async for line in r.aiter_lines():
                lines.append(line)
                if line == "data: [DONE]":
                    break  # an SSE reader stops here; the chunked terminator is still drained
        assert [x for x in lines if x] == [*(f"data: {i}" for i in range(5)), "data: [DONE]"]
    assert server.stats.open_connections == 1 and server.stats.streams_completed == 3
    await client.aclose()


async def test_error_status_is_returned_not_raised(server: FakeHTTPServer) -> None:
    client = HttpClient()
    async with client.stream("GET", f"http://127.0.0.1:{server.port}/missing") as r:
        assert r.status_code == 404 and json.loads(await r.aread()) == {"error": "nope"}
    await client.aclose()


async def test_read_timeout(server: FakeHTTPServer) -> None:
    client = HttpClient()
    with pytest.raises(HttpTimeout):
        async with client.stream("GET", f"http://127.0.0.1:{server.port}/slow", timeout_s=0.1):
            pass
    await client.aclose()


async def test_refused_connection_is_an_http_error() -> None:
    from tollway.launcher.processes import free_port

    with pytest.raises(HttpError, match="cannot connect"):
        async with HttpClient().stream("GET", f"http://127.0.0.1:{free_port()}/"):
            pass


async def test_leaving_a_stream_early_closes_the_connection(server: FakeHTTPServer) -> None:
    client = HttpClient()
    with pytest.raises(RuntimeError):
        async with client.stream("POST", f"http://127.0.0.1:{server.port}/sse") as r:
            async for _ in r.aiter_lines():
                raise RuntimeError("consumer failed")
    await asyncio.sleep(0.05)
    assert server.stats.open_connections == 0


@pytest.mark.parametrize("split", ["bytewise", "all-at-once"])
async def test_chunked_bodies_decode_however_the_bytes_are_split(split: str) -> None:
    payloads = [b"data: one\n\n", b"x" * 300, b"data: [DONE]\n\n"]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\nx-trailer: t\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(head)
            if split == "bytewise":
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    await writer.drain()
            else:
                writer.write(body)
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpClient()
    for _ in range(2):
        async with client.stream("GET", f"http://127.0.0.1:{port}/") as r:
            assert await r.aread() == b"".join(payloads)
    assert connections == 1  # the connection went back to the pool after a complete body
    await client.aclose()
    server.close()


def test_json_bodies_take_integers_beyond_64_bits() -> None:
    # orjson refuses them; a tool schema may hold one ("maximum": 10**30).
    from tollway.mesh.httpclient import _json_bytes

    assert json.loads(_json_bytes({"maximum": 10**30, "t": [0.5, "é"]})) == {"maximum": 10**30, "t": [0.5, "é"]}


async def test_a_whole_request_reads_the_body_and_keeps_the_connection(server: FakeHTTPServer) -> None:
    client = HttpClient()
    url = f"http://127.0.0.1:{server.port}"
    for i in range(3):
        response, body = await client.request("POST", url + "/json", json={"i": i})
        assert response.status_code == 200 and json.loads(body) == {"echo": {"i": i}, "ua": None}
    response, body = await client.request("GET", url + "/missing")
    assert response.status_code == 404 and json.loads(body) == {"error": "nope"}
    # A chunked answer is read whole too.
    response, body = await client.request("POST", url + "/sse")
    assert body.endswith(b"data: [DONE]\n\n")
    assert server.stats.open_connections == 1  # every answer was read to its end: one connection
    with pytest.raises(HttpTimeout):
        await client.request("GET", url + "/slow", timeout_s=0.1)
    await client.aclose()


async def _one_answer_server(answer: bytes) -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_body_cut_short_says_how_much_is_missing() -> None:
    server, port = await _one_answer_server(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    client = HttpClient()
    with pytest.raises(HttpError, match="7 body bytes missing"):
        await client.request("GET", f"http://127.0.0.1:{port}/")
    async with client.stream("GET", f"http://127.0.0.1:{port}/") as r:
        with pytest.raises(HttpError, match="7 body bytes missing"):
            await r.aread()
    await client.aclose()
    server.close()


async def test_a_body_without_a_length_is_read_until_the_server_closes() -> None:
    server, port = await _one_answer_server(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end")
    client = HttpClient()
    response, body = await client.request("GET", f"http://127.0.0.1:{port}/")
    assert (response.status_code, body) == (200, b"to the end")
    await client.aclose()
    server.close()
