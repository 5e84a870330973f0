"""Micro-batching: concurrent callers share one blocking run of a batch function.

Each caller submits a list of items. A collector task takes the first waiting call, adds whatever other calls
arrive within ``max_wait_s`` of it (or until ``max_batch`` items), runs the batch function once on the worker
executor, and hands every caller its own slice of the results.

Calls keep queueing while a batch runs, so under load batches form by themselves: a call that waited longer
than ``max_wait_s`` for the worker is dispatched with everything queued behind it and no extra wait. That is
why ``max_wait_s=0`` still batches under concurrency, without making a lone call wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatcherClosedError", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """Raised to callers whose call was still waiting when the batcher was closed, and to later callers."""


@dataclass(eq=False)
class _Call(Generic[T, R]):
    items: Sequence[T]
    enqueued_at: float
    future: asyncio.Future[list[R]] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Gathers concurrent calls into batches for a blocking function run off the event loop.

    ``fn`` gets the items of all calls of a batch concatenated, and must return exactly one result per item,
    in order. If it raises, every call of that batch gets the exception. A caller cancelled while waiting
    is dropped from its batch (or its results discarded); the others are unaffected.

    Create and use it from one event loop. The executor is not owned: share one single-thread executor between
    batchers so that runs never overlap (the model already uses every core).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.0,
        enabled: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """Creates a batcher; its collector task starts on the first call.

        Args:
            fn: The blocking batch function.
            executor: Where ``fn`` runs.
            max_batch: Items per batch beyond which no more calls are added; a single call larger than this
                still runs, alone.
            max_wait_s: How long after the first call of a batch arrived to wait for more calls.
            enabled: False runs every call on its own (for comparison in benches).
            on_batch: Called on the event loop after each run with (calls in the batch, items in the batch).

        Raises:
            ValueError: max_batch < 1 or max_wait_s < 0.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._enabled = enabled
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Call[T, R]] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued_calls(self) -> int:
        """Calls waiting for a batch (not counting the one running)."""
        return self._queue.qsize()

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Runs ``fn`` over ``items`` as part of a batch and returns their results, in order.

        Raises:
            BatcherClosedError: The batcher is closed.
            Exception: Whatever ``fn`` raised for the batch this call was in.
        """
        if self._closed:
            raise BatcherClosedError("the batcher is closed")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if not self._enabled:
            results = await loop.run_in_executor(self._executor, self._fn, list(items))
            self._check_count(len(items), results)
            if self._on_batch is not None:
                self._on_batch(1, len(items))
            return list(results)
        if self._collector is None:
            self._collector = loop.create_task(self._collect(), name="micro-batcher")
        call: _Call[T, R] = _Call(items=items, enqueued_at=loop.time(), future=loop.create_future())
        self._queue.put_nowait(call)
        self._arrived.set()
        return await call.future

    async def aclose(self) -> None:
        """Stops the collector and fails the calls still queued with :class:`BatcherClosedError`.

        A batch already running finishes and its callers get their results. Safe to call more than once, and
        before any call was made.
        """
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        while not self._queue.empty():
            call = self._queue.get_nowait()
            if not call.future.done():
                call.future.set_exception(BatcherClosedError("the batcher was closed before this call ran"))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            try:
                await self._gather_more(batch, first.enqueued_at + self._max_wait_s, loop)
            except asyncio.CancelledError:
                # Closed while gathering: these calls left the queue, so aclose() cannot fail them.
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(BatcherClosedError("the batcher was closed before this call ran"))
                raise
            await self._run(batch)

    async def _gather_more(self, batch: list[_Call[T, R]], deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        size = sum(len(call.items) for call in batch)
        while size < self._max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                # Waiting on an event, not on queue.get(): a get() cancelled by the timeout as an item
                # arrives could lose that item.
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    return
                continue
            call = self._queue.get_nowait()
            batch.append(call)
            size += len(call.items)

    async def _run(self, batch: list[_Call[T, R]]) -> None:
        live = [call for call in batch if not call.future.done()]
        if not live:
            return
        items: list[T] = [item for call in live for item in call.items]
        run = asyncio.get_running_loop().run_in_executor(self._executor, self._fn, items)
        try:
            # Shielded so that closing the batcher mid-run still hands this batch's callers their results.
            await asyncio.shield(run)
        except asyncio.CancelledError:
            run.add_done_callback(lambda done: self._deliver(live, len(items), done))
            raise
        except Exception:
            pass  # delivered to the callers below
        self._deliver(live, len(items), run)

    def _deliver(self, live: list[_Call[T, R]], n_items: int, run: asyncio.Future[Sequence[R]]) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(len(live), n_items)
            except Exception:
                log.exception("on_batch callback failed")
        try:
            results = run.result()
            self._check_count(n_items, results)
        except asyncio.CancelledError:
            for call in live:
                call.future.cancel()
            return
        except Exception as exc:
            for call in live:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        start = 0
        for call in live:
            end = start + len(call.items)
            if not call.future.done():
                call.future.set_result(list(results[start:end]))
            start = end

    @staticmethod
    def _check_count(expected: int, results: Sequence[object]) -> None:
        if len(results) != expected:
            raise RuntimeError(f"batch function returned {len(results)} results for {expected} items")
