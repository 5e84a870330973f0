"""Micro-batching of concurrent calls (no model, no servers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tollway.embedding.batcher import BatcherClosedError, MicroBatcher


class Recorder:
    """A batch function that records every batch and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.started.set()
        self.gate.wait(5)
        self.batches.append(list(items))
        if "boom" in items:
            raise ValueError("boom in batch")
        return [item.upper() for item in items]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def wait_started(recorder: Recorder) -> None:
    for _ in range(500):
        if recorder.started.is_set():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the batch function never started")


async def test_concurrent_calls_share_one_batch_and_get_their_own_results(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(fn, executor, max_wait_s=0.2, on_batch=lambda c, n: seen.append((c, n)))
    results = await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c"]), batcher.submit(["d", "e"]))
    assert results == [["A", "B"], ["C"], ["D", "E"]]
    assert fn.batches == [["a", "b", "c", "d", "e"]]
    assert seen == [(3, 5)]
    await batcher.aclose()


async def test_max_batch_closes_a_batch_early(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, executor, max_batch=3, max_wait_s=0.2)
    results = await asyncio.gather(*(batcher.submit([str(i)]) for i in range(7)))
    assert results == [[str(i)] for i in range(7)]
    assert [len(b) for b in fn.batches] == [3, 3, 1]
    await batcher.aclose()


async def test_a_call_larger_than_max_batch_runs_alone(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, executor, max_batch=2)
    assert await batcher.submit(["a", "b", "c", "d"]) == ["A", "B", "C", "D"]
    await batcher.aclose()


async def test_calls_queued_while_a_batch_runs_form_the_next_batch_without_waiting(
    executor: ThreadPoolExecutor,
) -> None:
    fn = Recorder()
    fn.gate.clear()
    batcher = MicroBatcher(fn, executor, max_wait_s=0.0)
    first = asyncio.ensure_future(batcher.submit(["a"]))
    await wait_started(fn)
    rest = [asyncio.ensure_future(batcher.submit([x])) for x in "bcd"]
    await asyncio.sleep(0.01)
    assert batcher.queued_calls == 3
    fn.gate.set()
    assert await first == ["A"]
    assert [await r for r in rest] == [["B"], ["C"], ["D"]]
    assert fn.batches == [["a"], ["b", "c", "d"]]
    await batcher.aclose()


async def test_an_error_reaches_every_caller_of_the_batch_and_the_next_batch_works(
    executor: ThreadPoolExecutor,
) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, executor, max_wait_s=0.2)
    results = await asyncio.gather(batcher.submit(["ok"]), batcher.submit(["boom"]), return_exceptions=True)
    assert all(isinstance(r, ValueError) and str(r) == "boom in batch" for r in results)
    assert await batcher.submit(["fine"]) == ["FINE"]
    await batcher.aclose()


async def test_a_wrong_number_of_results_is_an_error(executor: ThreadPoolExecutor) -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda items: items[:-1], executor)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await batcher.submit(["a", "b"])
    await batcher.aclose()


async def test_a_caller_cancelled_before_its_batch_runs_is_dropped(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    fn.gate.clear()
    batcher = MicroBatcher(fn, executor)
    first = asyncio.ensure_future(batcher.submit(["a"]))
    await wait_started(fn)
    doomed = asyncio.ensure_future(batcher.submit(["x"]))
    kept = asyncio.ensure_future(batcher.submit(["b"]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    fn.gate.set()
    assert await first == ["A"]
    assert await kept == ["B"]
    assert doomed.cancelled()
    assert fn.batches == [["a"], ["b"]]
    await batcher.aclose()


async def test_a_caller_cancelled_while_its_batch_runs_does_not_break_the_others(
    executor: ThreadPoolExecutor,
) -> None:
    fn = Recorder()
    fn.gate.clear()
    batcher = MicroBatcher(fn, executor, max_wait_s=0.05)
    doomed = asyncio.ensure_future(batcher.submit(["x"]))
    kept = asyncio.ensure_future(batcher.submit(["b"]))
    await wait_started(fn)
    doomed.cancel()
    fn.gate.set()
    assert await kept == ["B"]
    assert fn.batches == [["x", "b"]]
    assert await batcher.submit(["c"]) == ["C"]
    await batcher.aclose()


async def test_disabled_batching_runs_every_call_alone(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, executor, max_wait_s=0.2, enabled=False)
    results = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b", "c"]))
    assert results == [["A"], ["B", "C"]]
    assert sorted(fn.batches) == [["a"], ["b", "c"]]
    await batcher.aclose()


async def test_close_fails_queued_calls_finishes_the_running_one_and_refuses_new_ones(
    executor: ThreadPoolExecutor,
) -> None:
    fn = Recorder()
    fn.gate.clear()
    batcher = MicroBatcher(fn, executor)
    running = asyncio.ensure_future(batcher.submit(["a"]))
    await wait_started(fn)
    queued = asyncio.ensure_future(batcher.submit(["b"]))
    await asyncio.sleep(0.01)
    await batcher.aclose()
    with pytest.raises(BatcherClosedError):
        await queued
    fn.gate.set()
    assert await running == ["A"]
    with pytest.raises(BatcherClosedError):
        await batcher.submit(["c"])
    await batcher.aclose()


async def test_empty_calls_and_bad_settings(executor: ThreadPoolExecutor) -> None:
    batcher = MicroBatcher(Recorder(), executor)
    assert await batcher.submit([]) == []
    await batcher.aclose()
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), executor, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(Recorder(), executor, max_wait_s=-1)


async def test_close_while_a_batch_is_being_gathered_fails_its_calls(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, executor, max_wait_s=5.0)
    gathering = asyncio.ensure_future(batcher.submit(["a"]))
    await asyncio.sleep(0.01)  # the collector holds the call and waits for more
    await batcher.aclose()
    with pytest.raises(BatcherClosedError):
        await asyncio.wait_for(gathering, 1)
    assert fn.batches == []
