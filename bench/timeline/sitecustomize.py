"""Loaded by every Python process of a stack that bench/core_timeline.py starts (this directory is
first on their PYTHONPATH). In the process that serves the OpenAI surface (the co-located core), and
only when ``TOLLWAY_BENCH_TIMELINE`` names a file, it wraps the functions a chat completion passes
through, so each request's timeline can be read: when (µs after its bytes arrived) each stage began
and ended. Every 1,000 requests it appends the medians to that file as one JSON line. Arrivals are
watched from start-up on (uvloop keeps the ``data_received`` a connection began with); the stages are
wrapped once the surface is imported, and requests are timed from then on.

Nothing of this runs outside the bench: the services never import it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_OUT = os.environ.get("TOLLWAY_BENCH_TIMELINE", "")
_EVERY = 1000
# The process is the surface's once these are imported; then the wrappers go in.
_NEEDED = (
    "uvicorn.protocols.http.httptools_impl",
    "tollway.mesh.httpserver",
    "tollway.openai_compat.chat",
    "tollway.gateway.lifecycle",
    "tollway.router.engine",
)
# (module, class or None, function, stage name, kind): kind "coro", "agen" or "sync".
_STAGES = (
    ("tollway.openai_compat.http", None, "json_body", "body", "coro"),
    ("tollway.openai_compat.chat", None, "parse", "parse", "sync"),
    ("tollway.openai_compat.http", None, "complete", "gateway call", "coro"),
    ("tollway.gateway.auth", "KeyRing", "authenticate", "auth", "coro"),
    ("tollway.gateway.lifecycle", "Gateway", "generate", "lifecycle", "agen"),
    ("tollway.gateway.lifecycle", "Gateway", "_guard_input", "input guard", "sync"),
    ("tollway.gateway.guarding", "Guards", "fit", "context fit", "coro"),
    ("tollway.gateway.budgeting", "Budgeting", "admit", "budget reserve", "coro"),
    ("tollway.gateway.budget_client", "BudgetClient", "reserve_counted", "budget call", "coro"),
    ("tollway.budget.budget", "Budget", "reserve", "budget domain", "coro"),
    ("tollway.router.engine", "Router", "generate", "router", "agen"),
    ("tollway.mesh.httpclient", "HttpClient", "request", "provider call", "coro"),
    ("tollway.gateway.lifecycle", "Gateway", "_finish_record", "record", "sync"),
    ("tollway.openai_compat.chat", None, "completion_json", "answer json", "sync"),
)


class _Timeline:
    def __init__(self) -> None:
        self.ready = False  # the stages are wrapped: requests are timed from now on
        self.start: float | None = None
        self.marks: dict[str, float] = {}
        self.timed = 0
        # Only the requests since the last medians: a list that grew all run would be walked by
        # every full garbage collection of the process it measures.
        self.rows: list[dict[str, float]] = []
        self.last_end: float | None = None  # when the previous answer was written

    def mark(self, name: str) -> None:
        if self.start is not None and name not in self.marks:
            self.marks[name] = (time.perf_counter() - self.start) * 1e6

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.marks = {}
        if self.last_end is not None:
            # Negative: how long before this arrival the previous answer left (the client's and
            # the edge's turnaround, and whatever kept this process from reading the request).
            self.marks["previous answer written"] = (self.last_end - self.start) * 1e6

    def end(self) -> None:
        self.mark("answer written")
        self.last_end = time.perf_counter()
        self.rows.append(self.marks)
        self.timed += 1
        self.start = None
        if len(self.rows) == _EVERY:
            rows, self.rows = self.rows, []
            names = {k for r in rows for k in r}
            medians = {k: round(statistics.median(r[k] for r in rows if k in r), 1) for k in names}
            ordered = dict(sorted(medians.items(), key=lambda kv: kv[1]))
            with open(_OUT, "a") as out:
                out.write(json.dumps({"requests": self.timed, "us": ordered}) + "\n")


def _wrap(timeline: _Timeline, fn: Callable[..., Any], name: str, kind: str) -> Callable[..., Any]:
    if kind == "coro":

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            timeline.mark(name + " >")
            try:
                return await fn(*args, **kwargs)
            finally:
                timeline.mark(name + " <")

        return coro
    if kind == "agen":

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            timeline.mark(name + " >")
            try:
                async for item in fn(*args, **kwargs):
                    timeline.mark(f"{name} yields {type(item).__name__}")
                    yield item
            finally:
                timeline.mark(name + " <")

        return agen

    @functools.wraps(fn)
    def sync(*args: Any, **kwargs: Any) -> Any:
        timeline.mark(name + " >")
        try:
            return fn(*args, **kwargs)
        finally:
            timeline.mark(name + " <")

    return sync


_TIMELINE = _Timeline()


def _watch_arrivals() -> None:
    """Marks each request's arrival. Done at start-up, before any connection: uvloop keeps the
    ``data_received`` a connection began with, so a later patch would miss every connection open
    by then (Envoy's keep-alive one)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # a Python without the project's packages: nothing of ours runs there
        return
    received = HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        if _TIMELINE.ready and _TIMELINE.start is None and data.startswith(b"POST "):
            _TIMELINE.begin()
        received(self, data)

    HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]


def _install() -> None:
    for _ in range(3000):  # until the surface is imported (a process that never serves it: never)
        if all(name in sys.modules for name in _NEEDED):
            break
        time.sleep(0.1)
    else:
        return
    time.sleep(1.0)  # start-up done: what is imported stays
    for module_name, cls_name, fn_name, name, kind in _STAGES:
        module = importlib.import_module(module_name)
        owner = getattr(module, cls_name) if cls_name else module
        setattr(owner, fn_name, _wrap(_TIMELINE, getattr(owner, fn_name), name, kind))
    from tollway.mesh.httpserver import HeadWithBodyTransport

    write = HeadWithBodyTransport.write

    def written(self: Any, data: Any) -> None:
        write(self, data)
        if _TIMELINE.start is not None and self._held is None:  # the head left with the body
            _TIMELINE.end()

    HeadWithBodyTransport.write = written  # type: ignore[method-assign]
    _TIMELINE.ready = True


if _OUT:
    _watch_arrivals()
    threading.Thread(target=_install, name="bench-timeline", daemon=True).start()
