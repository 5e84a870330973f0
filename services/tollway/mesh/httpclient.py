"""A lean HTTP/1.1 client for calls to model providers.

Why not httpx: on this hot path httpx costs ~1.5 ms of Python per streamed call (several
layers of stream wrappers per chunk); this client sends the request in one write, reads
Content-Length or chunked bodies straight from an asyncio stream, and keeps connections
alive per host. It does what provider calls need and nothing else: plain http:// and
https://, JSON bodies, streamed responses read line by line, and a timeout for each phase:
connecting, the response head, and every read of the body (so a peer that keeps the
connection open but stops sending, such as a stopped process, is noticed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import ssl
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

_MAX_HEADER_BYTES = 64 * 1024


def _json_bytes(value: Any) -> bytes:
    """``value`` as JSON: orjson (a provider request is encoded on every call), or the standard
    library's encoder for what orjson refuses (an integer beyond 64 bits in a tool's schema)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return jsonlib.dumps(value, separators=(",", ":")).encode()


class HttpError(Exception):
    """A transport failure: refused, reset, malformed response."""


class HttpConnectError(HttpError):
    """Connecting failed at once (refused, unreachable, unknown host): nothing was sent.

    Kept apart from other transport failures because it is the cheapest failure to try again:
    the peer never saw a request (a circuit breaker probes such a peer again soon).
    """


class HttpTimeout(HttpError):
    """Connecting or reading took longer than allowed.

    Attributes:
        phase: Which wait ran out: "connect", "head" (the response's status and headers)
            or "body" (the next piece of the body once it has begun).
        timeout_s: The limit that ran out, in seconds.
    """

    def __init__(self, message: str, *, phase: str, timeout_s: float) -> None:
        super().__init__(message)
        self.phase = phase
        self.timeout_s = timeout_s


class _Conn:
    __slots__ = ("key", "reader", "writer")

    def __init__(self, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Response:
    """A response whose body is read on demand.

    Attributes:
        status_code: The HTTP status.
        headers: Header names in lower case; repeated headers keep the last value.
        read_timeout_s: Longest wait for each read of the body; a caller may change it
            while reading (a stream waits longer for its first token than between tokens).
    """

    def __init__(self, conn: _Conn, status: int, headers: dict[str, str], read_timeout_s: float) -> None:
        self._conn = conn
        self.status_code = status
        self.headers = headers
        self.read_timeout_s = read_timeout_s
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._remaining = int(headers.get("content-length", "0")) if not self._chunked else 0
        self._until_close = not self._chunked and "content-length" not in headers
        self.complete = not self._chunked and not self._until_close and self._remaining == 0
        self.reusable = True

    async def _read(self, coro: Any) -> Any:
        try:
            # asyncio.timeout schedules a timer; wait_for (3.11) would make a task per read.
            async with asyncio.timeout(self.read_timeout_s):
                return await coro
        except TimeoutError as exc:
            limit = self.read_timeout_s
            raise HttpTimeout(f"no data for {limit:g}s", phase="body", timeout_s=limit) from exc
        except asyncio.IncompleteReadError as exc:  # a read of a known length
            raise HttpError(f"connection closed with {exc.expected - len(exc.partial)} body bytes missing") from exc
        except ConnectionError as exc:
            raise HttpError(f"connection closed mid-body: {exc!r}") from exc

    async def aiter_bytes(self) -> AsyncGenerator[bytes, None]:
        """Yields body pieces as they arrive."""
        reader = self._conn.reader
        if self._chunked:
            # Closed here, not left to the garbage collector (whose close goes through the
            # event loop's thread-safe wakeup and a task of its own) when a reader stops early.
            async with contextlib.aclosing(self._dechunk(reader)) as pieces:
                async for piece in pieces:
                    yield piece
            return
        while not self.complete:
            if self._until_close:
                data = await self._read(reader.read(65536))
                if not data:
                    self.complete = True
                    return
                yield data
            else:
                data = await self._read(reader.read(min(self._remaining, 65536)))
                if not data:
                    raise HttpError(f"connection closed with {self._remaining} body bytes missing")
                self._remaining -= len(data)
                self.complete = self._remaining == 0
                yield data

    async def _dechunk(self, reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
        """Chunked transfer decoding from a buffer: one await per network read, not two per chunk.

        A streamed answer arrives as many small chunks, often several in one TCP segment;
        each is parsed from what was already read, and their payloads leave as one piece.
        """
        pending = bytearray()
        data_left = -1  # bytes of the current chunk's payload still to come; -1: a size line is next
        trailer = False  # after the last (empty) chunk: trailer lines up to an empty one
        while True:
            out = bytearray()
            while True:
                if trailer:
                    end = pending.find(b"\r\n")
                    if end < 0:
                        break
                    line = bytes(pending[:end])
                    del pending[: end + 2]
                    if not line:
                        self.complete = True
                        # Bytes past the body would belong to nothing: never reuse such a connection.
                        self.reusable = not pending
                        if out:
                            yield bytes(out)
                        return
                elif data_left < 0:
                    end = pending.find(b"\r\n")
                    if end < 0:
                        break
                    try:
                        size = int(bytes(pending[:end]).split(b";", 1)[0].strip(), 16)
                    except ValueError as exc:
                        raise HttpError(f"malformed chunk size line {bytes(pending[:end])[:40]!r}") from exc
                    del pending[: end + 2]
                    if size == 0:
                        trailer = True
                    else:
                        data_left = size
                elif data_left > 0:
                    if not pending:
                        break
                    take = min(data_left, len(pending))
                    out += pending[:take]
                    del pending[:take]
                    data_left -= take
                else:  # the payload is complete; its CRLF follows
                    if len(pending) < 2:
                        break
                    del pending[:2]
                    data_left = -1
            if out:
                yield bytes(out)
            data = await self._read(reader.read(65536))
            if not data:
                raise HttpError("connection closed mid-body (chunked)")
            pending += data

    async def aiter_lines(self) -> AsyncGenerator[str, None]:
        """Yields body lines without their line ends, as each line completes."""
        pending = b""
        async with contextlib.aclosing(self.aiter_bytes()) as pieces:
            async for piece in pieces:
                pending += piece
                if b"\n" not in pending:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r").decode()
        if pending:
            yield pending.rstrip(b"\r").decode()

    async def aread(self) -> bytes:
        """The rest of the body."""
        if self._chunked or self._until_close:
            return b"".join([piece async for piece in self.aiter_bytes()])
        if self.complete:
            return b""
        # Its length is known: one read, with no generator between it and the caller.
        data = await self._read(self._conn.reader.readexactly(self._remaining))
        self._remaining = 0
        self.complete = True
        return data


class HttpClient:
    """A keep-alive connection pool per (scheme, host, port). Safe for concurrent use."""

    def __init__(self, *, max_idle_per_host: int = 128, connect_timeout_s: float = 2.0) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.connect_timeout_s = connect_timeout_s
        self._idle: defaultdict[tuple[str, str, int], deque[_Conn]] = defaultdict(deque)
        self._ssl: ssl.SSLContext | None = None

    async def _connect(self, key: tuple[str, str, int], timeout_s: float) -> _Conn:
        scheme, host, port = key
        idle = self._idle[key]
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        ctx = None
        if scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            ctx = self._ssl
        try:
            # Once per new connection, not per chunk: wait_for's extra task is affordable here.
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=_MAX_HEADER_BYTES), timeout_s
            )
        except TimeoutError as exc:
            raise HttpTimeout(
                f"connecting to {host}:{port} took over {timeout_s:g}s", phase="connect", timeout_s=timeout_s
            ) from exc
        except OSError as exc:
            raise HttpConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return _Conn(key, reader, writer)

    def _release(self, conn: _Conn, response: Response) -> None:
        reusable = response.complete and response.reusable and response.headers.get("connection", "").lower() != "close"
        if reusable and len(self._idle[conn.key]) < self.max_idle_per_host:
            self._idle[conn.key].append(conn)
        else:
            conn.close()

    async def _send(
        self,
        method: str,
        url: str,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout_s: float,
        connect_timeout_s: float | None,
        read_timeout_s: float | None,
    ) -> tuple[_Conn, Response]:
        """Sends a request and reads the response head (see :meth:`stream`)."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = content if content is not None else (_json_bytes(json) if json is not None else b"")
        head = [f"{method} {target} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {len(body)}"]
        if json is not None:
            head.append("content-type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        key = (scheme, host, port)
        for attempt in (0, 1):
            conn = await self._connect(key, self.connect_timeout_s if connect_timeout_s is None else connect_timeout_s)
            fresh = attempt == 1
            try:
                conn.writer.write(request)
                async with asyncio.timeout(timeout_s):
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                break
            except TimeoutError as exc:
                conn.close()
                raise HttpTimeout(
                    f"no response head from {host}:{port} within {timeout_s:g}s", phase="head", timeout_s=timeout_s
                ) from exc
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
                conn.close()
                # A pooled connection the server closed while idle: retry once on a new one.
                if fresh or isinstance(exc, asyncio.LimitOverrunError):
                    raise HttpError(f"{host}:{port} closed the connection before answering: {exc!r}") from exc
            except BaseException:
                # The caller left while the answer was awaited (a whole answer is awaited for as long
                # as it takes to generate): closing tells the server, and the connection, its
                # answer still due, can never be reused.
                conn.close()
                raise
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            conn.close()
            raise HttpError(f"malformed status line {lines[0][:80]!r}") from exc
        response_headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                response_headers[name.strip().lower()] = value.strip()
        return conn, Response(conn, status, response_headers, timeout_s if read_timeout_s is None else read_timeout_s)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
    ) -> AsyncIterator[Response]:
        """Sends a request and yields the response with its body unread.

        Args:
            timeout_s: Longest wait for the response head after the request was sent.
            connect_timeout_s: Longest wait for a new connection; None uses the client's.
            read_timeout_s: Longest wait for each read of the body (the gap between two
                pieces of a stream); None uses ``timeout_s``. Each read costs one timer
                (``asyncio.timeout``), never a task.

        The connection goes back to the pool when the body was read to its end (a short
        tail still in flight, such as a chunked terminator after an SSE ``[DONE]``, is read
        first); otherwise it is closed, which also tells the server the client is gone.

        Raises:
            HttpConnectError: Connecting failed at once; nothing was sent.
            HttpError: Connecting, sending or reading the response head failed.
            HttpTimeout: Connecting or a read took longer than allowed.
        """
        conn, response = await self._send(
            method, url, json, content, headers, timeout_s, connect_timeout_s, read_timeout_s
        )
        try:
            yield response
            if not response.complete:
                with contextlib.suppress(HttpError, TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._drain(response)
        except BaseException:
            conn.close()
            raise
        self._release(conn, response)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
    ) -> tuple[Response, bytes]:
        """Sends a request and reads the whole response: the response (its body read) and the body.

        What :meth:`stream` and :meth:`Response.aread` do together, without the context manager
        and generators between them (a whole answer is the common call). Same arguments and errors.
        """
        conn, response = await self._send(
            method, url, json, content, headers, timeout_s, connect_timeout_s, read_timeout_s
        )
        try:
            body = await response.aread()
        except BaseException:
            conn.close()
            raise
        self._release(conn, response)
        return response, body

    @staticmethod
    async def _drain(response: Response, limit: int = 64 * 1024) -> None:
        seen = 0
        async with contextlib.aclosing(response.aiter_bytes()) as pieces:
            async for piece in pieces:
                seen += len(piece)
                if seen > limit:
                    return

    async def aclose(self) -> None:
        """Closes idle connections. Safe to call more than once."""
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
