"""A minimal HTTP/1.1 server on asyncio for the wire-exact provider fakes.

Keep-alive, Content-Length request bodies, and responses either whole or chunked
(Server-Sent Events). It counts open connections and connections the client closed
in the middle of a streamed response, so tests can prove that cancelling a request
reaches the provider. Tests can also take the whole provider down and bring it back:
:meth:`FakeHTTPServer.kill` (connections refused and open ones reset, as when the
process dies) and :attr:`FakeHTTPServer.override` (every request answered by another
handler, e.g. a 503 outage).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when the request head was read.
    received_at: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        _, _, q = self.path.partition("?")
        return dict(p.partition("=")[::2] for p in q.split("&") if p)


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # When set, the body is streamed chunk by chunk (each item is sent as it is produced).
    stream: AsyncIterator[bytes] | None = None
    # Close the connection abruptly after the stream instead of ending it properly.
    cut: bool = False
    # With `cut`: send a TCP RST (SO_LINGER 0) instead of a plain close.
    reset: bool = False


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Site Overloaded",
}


@dataclasses.dataclass
class Stats:
    requests: int = 0
    open_connections: int = 0
    streams_aborted_by_client: int = 0
    streams_completed: int = 0
    connections_accepted: int = 0


class FakeHTTPServer:
    """Serves ``handler`` on 127.0.0.1; ``/_stats`` reports :class:`Stats` as JSON.

    Attributes:
        override: When set, answers every request instead of ``handler`` (an outage).
        log: The last 10,000 requests served (not ``/_stats``), oldest first.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.override: Handler | None = None
        self.stats = Stats()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.log: collections.deque[Request] = collections.deque(maxlen=10_000)
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        """Listens on ``port`` (0: a free one); returns the port. Also restarts after kill()."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def kill(self) -> None:
        """Stops listening and resets every open connection, like a crashed process."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    def requests_for(self, needle: str) -> list[Request]:
        """Logged requests whose path or body contains ``needle`` (e.g. a model name)."""
        raw = needle.encode()
        return [r for r in self.log if needle in r.path or raw in r.body]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.open_connections += 1
        self.stats.connections_accepted += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body, time.monotonic())
                if path == "/_stats":
                    response = Response(body=json.dumps(dataclasses.asdict(self.stats)).encode())
                else:
                    self.stats.requests += 1
                    self.log.append(request)
                    response = await (self.override or self.handler)(request)
                if not await self._write(writer, response):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.stats.open_connections -= 1
            self._writers.discard(writer)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, response: Response) -> bool:
        status = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
        headers = {"content-type": "application/json", **response.headers}
        if response.stream is None:
            headers["content-length"] = str(len(response.body))
            writer.write((status + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
            writer.write(response.body)
            await writer.drain()
            return True
        headers["transfer-encoding"] = "chunked"
        writer.write((status + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
        try:
            async for chunk in response.stream:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                if writer.transport.is_closing():
                    raise ConnectionResetError
            if response.cut:
                await asyncio.sleep(0.01)  # let the last chunk leave before the connection dies
                if response.reset:
                    _reset(writer)
                else:
                    writer.transport.abort()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.stats.streams_completed += 1
            return True
        except (ConnectionError, asyncio.CancelledError):
            self.stats.streams_aborted_by_client += 1
            return False


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def main(handler: Handler, description: str) -> None:
    """``python -m tests.fakes.<provider> [--port N]``: serves ``handler`` and prints ``LISTENING <port>``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    port = parser.parse_args().port

    async def serve() -> None:
        bound = await FakeHTTPServer(handler).start(port)
        print(f"LISTENING {bound}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())
