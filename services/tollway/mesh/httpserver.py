"""How the HTTP surfaces are served: uvicorn's httptools protocol, sending a response's head and
the first piece of its body in one write.

uvicorn writes the head of a response when the app starts it and the body when the app sends
it: two ``send`` calls, so two segments, and two wakeups of the reader on the other side (Envoy)
for every whole answer. On a small VM, waking another process is most of what a send costs, so
the head is held until the body's first bytes (or the end of the event loop's turn, for a
stream whose first event comes later) and leaves with them.

It also tells a handler that its client left without a task to wait for it: the request's
scope holds a :class:`DisconnectWatch` (under :data:`DISCONNECT_WATCH`) whose callback runs when
the connection is lost.

Use it with ``uvicorn.Config(..., http=HeadWithBodyProtocol)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["DISCONNECT_WATCH", "DisconnectWatch", "HeadWithBodyProtocol", "HeadWithBodyTransport"]

# The scope key of a request's DisconnectWatch (absent under another server).
DISCONNECT_WATCH = "tollway.disconnect_watch"

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeadWithBodyTransport:
    """Wraps a transport: a response head written alone waits for what is written next.

    Only ever delays a write, never reorders one: whatever happens to the transport next (a
    write, a close, a protocol switch) sends the held head first, and so does the end of the
    loop's turn.
    """

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._transport.write(held + bytes(data))
            return
        if isinstance(data, bytes) and data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = data
            self._flush_handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Sends a held head now."""
        self._flush_handle = None
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # Everything else (get_extra_info, pause_reading, is_closing, abort, ...) as it is.
        return getattr(self._transport, name)


class DisconnectWatch:
    """Runs one callback when the client's connection is lost: what a handler waiting on
    something else (a whole answer) needs, where a task reading ``http.disconnect`` would cost a
    task, its first step and its cancellation on every request.

    One per connection; an HTTP/1.1 connection serves one request at a time, so one callback.
    """

    __slots__ = ("_callback", "lost")

    def __init__(self) -> None:
        self._callback: Callable[[], object] | None = None
        self.lost = False

    def watch(self, callback: Callable[[], object]) -> None:
        """Calls ``callback`` when the connection is lost (at once if it is already), until :meth:`clear`."""
        if self.lost:
            callback()
            return
        self._callback = callback

    def clear(self) -> None:
        self._callback = None

    def connection_lost(self) -> None:
        self.lost = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class HeadWithBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`HeadWithBodyTransport`, with a
    :class:`DisconnectWatch` in each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._watch = DisconnectWatch()
        super().connection_made(HeadWithBodyTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        self.scope[DISCONNECT_WATCH] = self._watch  # type: ignore[literal-required]
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._watch.connection_lost()
