"""A lean HTTP/1.1 load client for the benchmarks: asyncio streams on uvloop, one
keep-alive connection per worker, no client library in the way.

It understands Content-Length and chunked bodies, and for a streamed answer records the
time of the first chunk that carries answer text (``first_text_marker``), i.e. TTFT as
a client sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and what to send.

    Attributes:
        name: Label in the results.
        host: Server host.
        port: Server port.
        path: Request path.
        body: The JSON body.
        headers: Extra headers.
        first_text_marker: Bytes that appear in the first chunk carrying answer text.
        ok_marker: Bytes a successful response body must contain.
    """

    name: str
    host: str
    port: int
    path: str
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    first_text_marker: bytes = b'"content":"H'
    ok_marker: bytes = b""

    def request(self) -> bytes:
        payload = json.dumps(self.body, separators=(",", ":")).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            f"content-length: {len(payload)}",
            "connection: keep-alive",
        ]
        head += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Connection:
    """One keep-alive connection, one request at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.request = endpoint.request()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def send(self) -> tuple[float, float | None]:
        """Sends the request; returns (total seconds, seconds to first answer text or None).

        Raises:
            RuntimeError: A non-200 status or a body without ``ok_marker``.
        """
        assert self.reader is not None and self.writer is not None
        start = time.perf_counter()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        first: float | None = None
        marker = self.endpoint.first_text_marker
        body = bytearray()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
                if first is None and marker in body:
                    first = time.perf_counter() - start
        else:
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body += await self.reader.readexactly(length)
        total = time.perf_counter() - start
        if status != 200 or (self.endpoint.ok_marker and self.endpoint.ok_marker not in body):
            raise RuntimeError(f"{self.endpoint.name}: HTTP {status}: {bytes(body[:300])!r}")
        return total, first


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def sequential(endpoint: Endpoint, n: int, warmup: int) -> dict[str, float]:
    """n requests one after another on one connection (after ``warmup`` unrecorded ones)."""
    conn = Connection(endpoint)
    await conn.open()
    totals: list[float] = []
    firsts: list[float] = []
    try:
        for i in range(warmup + n):
            total, first = await conn.send()
            if i >= warmup:
                totals.append(total)
                if first is not None:
                    firsts.append(first)
    finally:
        await conn.close()
    out = {
        "n": len(totals),
        "p50_ms": percentile(totals, 50) * 1e3,
        "p99_ms": percentile(totals, 99) * 1e3,
        "mean_ms": statistics.fmean(totals) * 1e3,
    }
    if firsts:
        out |= {"ttft_p50_ms": percentile(firsts, 50) * 1e3, "ttft_p99_ms": percentile(firsts, 99) * 1e3}
    return out


async def closed_loop(endpoint: Endpoint, concurrency: int, duration_s: float, max_requests: int) -> dict[str, float]:
    """``concurrency`` connections each sending back to back for ``duration_s`` (bounded)."""
    done = 0
    errors = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done, errors
        conn = Connection(endpoint)
        await conn.open()
        try:
            while time.perf_counter() < stop_at and done + errors < max_requests:
                try:
                    total, _ = await conn.send()
                    latencies.append(total)
                    done += 1
                except (RuntimeError, ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    await conn.close()
                    conn = Connection(endpoint)
                    await conn.open()
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": errors,
        "rps": done / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3 if latencies else 0.0,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else 0.0,
    }


async def alternating_pairs(
    base: Endpoint, other: Endpoint, pairs: int, warmup: int
) -> list[tuple[tuple[float, float | None], tuple[float, float | None]]]:
    """``pairs`` (base, other) results of ``Connection.send`` (seconds, first-text seconds), one
    request at a time on one connection each, alternating which goes first so drift hits both."""
    a, b = Connection(base), Connection(other)
    await a.open()
    await b.open()
    out = []
    try:
        for i in range(warmup + pairs):
            first, second = (a, b) if i % 2 == 0 else (b, a)
            r1 = await first.send()
            r2 = await second.send()
            if i >= warmup:
                out.append((r1, r2) if first is a else (r2, r1))
    finally:
        await a.close()
        await b.close()
    return out


async def round_robin(endpoints: list[Endpoint], n: int, warmup: int) -> dict[str, list[tuple[float, float | None]]]:
    """``n`` rounds of one request to each endpoint in turn (each on its own keep-alive
    connection, the order rotated every round), so every endpoint's samples are taken at the same
    moments of the machine's drift rather than in blocks minutes apart. Returns each endpoint's
    ``Connection.send`` results by name, round ``i`` at index ``i`` of every list."""
    if len({e.name for e in endpoints}) != len(endpoints):
        raise ValueError("round_robin needs endpoints with distinct names")
    conns = [Connection(e) for e in endpoints]
    for conn in conns:
        await conn.open()
    out: dict[str, list[tuple[float, float | None]]] = {e.name: [] for e in endpoints}
    try:
        for i in range(warmup + n):
            k = i % len(conns)
            for conn in conns[k:] + conns[:k]:
                result = await conn.send()
                if i >= warmup:
                    out[conn.endpoint.name].append(result)
    finally:
        for conn in conns:
            await conn.close()
    return out
