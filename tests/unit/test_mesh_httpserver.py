"""The transport that sends a response head with the first piece of its body."""

from __future__ import annotations

import asyncio
from typing import Any

from tollway.mesh.httpserver import DisconnectWatch, HeadWithBodyTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Recording(asyncio.Transport):
    """A transport that keeps what it was asked to do, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_a_head_leaves_with_the_body_in_one_write() -> None:
    raw = Recording()
    t = HeadWithBodyTransport(raw, asyncio.get_running_loop())
    t.write(HEAD)
    assert raw.calls == []
    t.write(b"hello")
    assert raw.calls == [("write", HEAD + b"hello")]
    await asyncio.sleep(0)  # the end-of-turn flush has nothing left to send
    assert raw.calls == [("write", HEAD + b"hello")]


async def test_a_head_alone_leaves_at_the_end_of_the_turn() -> None:
    raw = Recording()
    t = HeadWithBodyTransport(raw, asyncio.get_running_loop())
    t.write(HEAD)  # a stream whose first event is not ready yet
    await asyncio.sleep(0)
    assert raw.calls == [("write", HEAD)]
    t.write(b"data: 1\n\n")
    assert raw.calls == [("write", HEAD), ("write", b"data: 1\n\n")]


async def test_close_and_protocol_switch_send_the_head_first() -> None:
    loop = asyncio.get_running_loop()
    raw = Recording()
    t = HeadWithBodyTransport(raw, loop)
    t.write(HEAD)
    t.close()
    assert raw.calls == [("write", HEAD), ("close", None)]
    await asyncio.sleep(0)
    assert raw.calls == [("write", HEAD), ("close", None)]


async def test_bodies_and_other_bytes_are_never_held() -> None:
    raw = Recording()
    t = HeadWithBodyTransport(raw, asyncio.get_running_loop())
    t.write(b"5\r\nhello\r\n")
    t.write(bytearray(b"HTTP/1.1 200 OK\r\n\r\n"))  # not bytes: written as it is
    assert raw.calls == [("write", b"5\r\nhello\r\n"), ("write", b"HTTP/1.1 200 OK\r\n\r\n")]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert t.get_write_buffer_size() == 0
    t.write(HEAD)
    assert t.get_write_buffer_size() == len(HEAD)  # a held head counts as buffered


def test_a_disconnect_watch_calls_back_once_while_watched() -> None:
    calls: list[str] = []
    watch = DisconnectWatch()
    watch.watch(lambda: calls.append("first"))
    watch.clear()  # that request got its answer
    watch.watch(lambda: calls.append("second"))
    watch.connection_lost()
    watch.connection_lost()
    assert calls == ["second"]
    # Watching a connection already lost calls back at once.
    watch.watch(lambda: calls.append("late"))
    assert calls == ["second", "late"]
