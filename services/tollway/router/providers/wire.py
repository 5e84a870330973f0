"""What every HTTP adapter shares: the pooled HTTP client (tollway.mesh.httpclient, lighter
than httpx on this hot path), Server-Sent Events parsing and HTTP failure translation."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatRequest
from tollway.mesh.frozen import frozen
from tollway.mesh.httpclient import HttpClient, HttpConnectError, HttpError, HttpTimeout, Response
from tollway.router.types import (
    Completion,
    ErrorKind,
    ProviderError,
    StreamEnd,
    StreamEvent,
    UsageUpdate,
    parse_retry_after,
)


@frozen
class SSEEvent:
    """One dispatched Server-Sent Event: its ``event:`` name ("message" when absent) and data."""

    event: str
    data: str


class SSEParser:
    """Server-Sent Events parsing as the WHATWG EventSource algorithm does, fed network reads.

    Several ``data:`` lines join with newlines; comments (``:``), ``id:`` and ``retry:``
    are skipped; an event is dispatched at a blank line, so one left incomplete by a cut
    connection is never returned.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[SSEEvent]:
        """The events ``piece`` completes (an event is complete at its blank line)."""
        pending = self._pending + piece
        if b"\n" not in pending:
            self._pending = pending
            return []
        *lines, self._pending = pending.split(b"\n")
        out: list[SSEEvent] = []
        data = self._data
        for raw in lines:
            line = raw.decode().rstrip("\r")
            if not line:
                if data:
                    out.append(SSEEvent(self._event or "message", "\n".join(data)))
                    data = self._data = []
                self._event = ""
                continue
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                self._event = value
        return out


async def sse_batches(pieces: AsyncGenerator[bytes, None]) -> AsyncGenerator[list[SSEEvent], None]:
    """The events of each network read of an SSE body, as one list per read (never empty).

    A fast provider's events arrive several to a read: handing them on together costs one
    pass through the adapter's generators per read instead of one per event, which is most
    of what a streamed answer costs the router.

    Closing it closes ``pieces``: an adapter stops at its end marker, and a body generator
    left to the garbage collector is closed by the event loop instead, through a thread-safe
    wakeup and a task of its own.
    """
    parser = SSEParser()
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            events = parser.feed(piece)
            if events:
                yield events


async def sse_events(pieces: AsyncGenerator[bytes, None]) -> AsyncGenerator[SSEEvent, None]:
    """The events of an SSE body one by one (see :class:`SSEParser`); closing it closes ``pieces``."""
    async with contextlib.aclosing(sse_batches(pieces)) as batches:
        async for batch in batches:
            for event in batch:
                yield event


def parse_json(provider: str, data: str) -> Any:
    """Decodes one event's JSON, or fails with a MALFORMED error quoting it.

    orjson: a streamed answer is one JSON document per event, and the standard library's
    decoder was the largest single cost of reading one.
    """
    try:
        return orjson.loads(data)
    except ValueError as exc:
        raise ProviderError(provider, f"malformed SSE data: {data[:200]!r}", kind=ErrorKind.MALFORMED) from exc


def error_text(raw: bytes) -> str:
    """The human message in an error body of any of the providers' shapes, else the raw text."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:500] or "(empty body)"
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return error_text(json.dumps(doc[0]).encode())
    return raw.decode(errors="replace")[:500]


@dataclasses.dataclass
class StreamProgress:
    """Whether a streamed answer has begun (its first event other than a usage report)."""

    begun: bool = False


def _timeout_setting(exc: HttpTimeout, progress: StreamProgress | None) -> str:
    """The catalog setting whose limit ``exc`` hit (how operators find the knob to turn)."""
    if exc.phase == "connect":
        return "connect_timeout_s"
    if progress is None:
        return "timeout_s"
    return "stall_timeout_s" if progress.begun else "first_token_timeout_s"


@contextlib.asynccontextmanager
async def post(
    client: HttpClient,
    deployment: Deployment,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    *,
    progress: StreamProgress | None = None,
) -> AsyncIterator[Response]:
    """POSTs ``body`` as JSON and yields the response with its body unread.

    Connecting may take ``deployment.connect_timeout_s``. A whole-answer call then waits
    at most ``timeout_s`` for each read. A stream (``progress`` given) waits at most
    ``ttft_timeout_s`` for each read until the caller marks it begun and sets
    ``response.read_timeout_s`` to the stall timeout (:func:`stream_call` does).

    Transport failures, whether sending or later while the caller reads the body, come
    out as ProviderError: TIMEOUT for a timeout (``timeout`` names the setting that ran
    out), CONNECTION for refused, reset or cut (``refused`` set when nothing was sent).
    """
    wait = deployment.timeout_s if progress is None else deployment.ttft_timeout_s
    try:
        async with client.stream(
            "POST",
            url,
            json=body,
            headers=headers,
            timeout_s=wait,
            connect_timeout_s=deployment.connect_timeout_s,
            read_timeout_s=wait,
        ) as response:
            yield response
    except HttpTimeout as exc:
        raise _timed_out(deployment, exc, progress) from exc
    except HttpError as exc:
        raise _failed(deployment, url, exc) from exc


async def post_whole(
    client: HttpClient,
    deployment: Deployment,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    retry_after: Callable[[bytes], float | None] | None = None,
) -> str:
    """POSTs ``body`` as JSON and returns the whole answer's text, a non-200 answer raised as
    :func:`raise_for_status` raises it.

    :func:`post`, :func:`raise_for_status` and a read of the body, without the context managers
    and generators between them: a whole answer is read in one go. The same limits and errors.
    """
    try:
        response, raw = await client.request(
            "POST",
            url,
            json=body,
            headers=headers,
            timeout_s=deployment.timeout_s,
            connect_timeout_s=deployment.connect_timeout_s,
            read_timeout_s=deployment.timeout_s,
        )
    except HttpTimeout as exc:
        raise _timed_out(deployment, exc, None) from exc
    except HttpError as exc:
        raise _failed(deployment, url, exc) from exc
    if response.status_code != 200:
        raise _refusal(response, raw, deployment.provider, retry_after)
    return raw.decode(errors="replace")


def _timed_out(deployment: Deployment, exc: HttpTimeout, progress: StreamProgress | None) -> ProviderError:
    setting = _timeout_setting(exc, progress)
    return ProviderError(
        deployment.provider,
        f"{deployment.key} timed out ({setting} {exc.timeout_s:g}s): {exc}",
        kind=ErrorKind.TIMEOUT,
        timeout=setting,
    )


def _failed(deployment: Deployment, url: str, exc: HttpError) -> ProviderError:
    return ProviderError(
        deployment.provider,
        f"connection to {url} failed: {exc}",
        kind=ErrorKind.CONNECTION,
        refused=isinstance(exc, HttpConnectError),
    )


async def raise_for_status(
    response: Response, provider: str, retry_after: Callable[[bytes], float | None] | None = None
) -> None:
    """Turns a non-200 answer into the ProviderError of its status, with the provider's message.

    Args:
        retry_after: Reads a retry delay from the body, for providers that put it there
            (Gemini's RetryInfo); the ``retry-after`` header wins when both exist.
    """
    if response.status_code == 200:
        return
    raise _refusal(response, await response.aread(), provider, retry_after)


def _refusal(
    response: Response, raw: bytes, provider: str, retry_after: Callable[[bytes], float | None] | None
) -> ProviderError:
    delay = parse_retry_after(response.headers.get("retry-after"))
    if delay is None and retry_after is not None:
        delay = retry_after(raw)
    return ProviderError.from_status(provider, response.status_code, error_text(raw), delay)


async def stream_call(
    client: HttpClient,
    deployment: Deployment,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    parse: Callable[[Response], AsyncGenerator[StreamEvent, None]],
    retry_after: Callable[[bytes], float | None] | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """POSTs a streaming call and yields ``parse``'s events.

    The end event is held back until the response body has been read to its end, so the
    connection goes back to the pool instead of being closed (a new connection per call
    would cost a TCP and TLS handshake each time).

    Until the answer begins (its first event other than a usage report) each read may
    take the first-token timeout; from then on, the stall timeout: a provider that stops
    sending mid-answer is noticed within ``deployment.stall_timeout_s``.
    """
    end: StreamEvent | None = None
    progress = StreamProgress()
    async with post(client, deployment, url, body, headers, progress=progress) as response:
        await raise_for_status(response, deployment.provider, retry_after)
        async with contextlib.aclosing(parse(response)) as events:
            with malformed_shapes(deployment.provider):
                async for event in events:
                    if not progress.begun and not isinstance(event, UsageUpdate):
                        # The same per-read timer from here on, with its own limit: no new cost.
                        response.read_timeout_s = deployment.stall_timeout_s
                        progress.begun = True
                    if isinstance(event, StreamEnd):
                        end = event
                        break
                    yield event
    if end is not None:
        yield end


# What reading a provider's JSON raises when a value has another shape than its API documents
# (a list where an object was, a string for a number): the adapters read documented shapes.
_SHAPE_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError)


@contextlib.contextmanager
def malformed_shapes(provider: str) -> Iterator[None]:
    """Turns a parser's shape error into the MALFORMED ProviderError of ``provider``.

    Whatever JSON a provider sends, its adapter then fails like any failed call (the router
    may fall through) rather than with an exception the service reports as INTERNAL.
    """
    try:
        yield
    except _SHAPE_ERRORS as exc:
        raise ProviderError(
            provider, f"malformed answer: {type(exc).__name__}: {str(exc)[:200]}", kind=ErrorKind.MALFORMED
        ) from exc


def parses_answer(
    complete: Callable[[Any, ChatRequest, Deployment], Awaitable[Completion]],
) -> Callable[[Any, ChatRequest, Deployment], Awaitable[Completion]]:
    """Decorates an adapter's ``complete``: shape errors become MALFORMED (see malformed_shapes)."""

    @functools.wraps(complete)
    async def wrapper(self: Any, request: ChatRequest, deployment: Deployment) -> Completion:
        with malformed_shapes(deployment.provider):
            return await complete(self, request, deployment)

    return wrapper


def new_client() -> HttpClient:
    """The pooled client an adapter shares across all its deployments."""
    return HttpClient(max_idle_per_host=128, connect_timeout_s=2.0)


def stream_cut(provider: str, what: str) -> ProviderError:
    """The error for a stream that ended before its provider's end marker."""
    return ProviderError(provider, f"stream ended before {what} (connection cut mid-stream)", kind=ErrorKind.CONNECTION)
