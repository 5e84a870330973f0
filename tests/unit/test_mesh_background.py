"""The shared background runner: periods, failures that do not kill a loop, and clean stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from tollway.mesh.background import Background


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Polls ``predicate`` until it holds; fails the test after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not true within {timeout_s}s")


async def test_a_job_runs_once_per_period_after_the_first_period() -> None:
    runs: list[float] = []
    bg = Background()
    bg.every(0.02, lambda: runs.append(asyncio.get_running_loop().time()), name="tick")
    started = asyncio.get_running_loop().time()
    bg.start()
    assert bg.running and runs == []  # nothing at start: the first run is one period later
    await wait_until(lambda: len(runs) >= 3)
    await bg.stop()
    assert runs[0] - started >= 0.015
    assert not bg.running


async def test_async_jobs_are_awaited() -> None:
    done: list[int] = []

    async def job() -> None:
        await asyncio.sleep(0)
        done.append(1)

    bg = Background()
    bg.every(0.01, job, name="async")
    bg.start()
    await wait_until(lambda: len(done) >= 2)
    await bg.stop()


async def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def job() -> None:
        calls.append(1)
        raise RuntimeError("redis went away")

    bg = Background(logging.getLogger("tollway.test"))
    bg.every(0.01, job, name="sweep")
    with caplog.at_level(logging.ERROR, logger="tollway.test"):
        bg.start()
        await wait_until(lambda: len(calls) >= 3)
        await bg.stop()
    failures = [r for r in caplog.records if "background job sweep failed" in r.getMessage()]
    assert len(failures) >= 2 and failures[0].exc_info is not None


async def test_stop_is_safe_before_start_and_twice() -> None:
    bg = Background()
    await bg.stop()
    bg.every(0.01, lambda: None, name="x")
    bg.start()
    bg.start()  # already running: no second set of tasks
    await bg.stop()
    await bg.stop()
    assert not bg.running


async def test_a_job_in_progress_finishes_before_stop_returns() -> None:
    finished: list[bool] = []
    entered = asyncio.Event()

    async def slow() -> None:
        entered.set()
        await asyncio.sleep(0.05)
        finished.append(True)

    bg = Background()
    bg.every(0.001, slow, name="slow")
    bg.start()
    await entered.wait()
    await bg.stop(timeout_s=2.0)
    assert finished == [True]


async def test_a_loop_that_ignores_stop_is_cancelled_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bg = Background()
    bg.run(stubborn, name="stubborn")
    bg.start()
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await bg.stop(timeout_s=0.05)
    assert cancelled.is_set()
    assert any("stubborn did not stop" in r.getMessage() for r in caplog.records)


async def test_long_running_loops_get_the_stop_event() -> None:
    seen: list[str] = []

    async def follower(stop: asyncio.Event) -> None:
        seen.append("started")
        await stop.wait()
        seen.append("stopped")

    bg = Background()
    bg.run(follower, name="follower")
    bg.start()
    await wait_until(lambda: seen == ["started"])
    await bg.stop()
    assert seen == ["started", "stopped"]


async def test_a_period_of_zero_disables_the_job_and_late_jobs_start_at_once() -> None:
    runs: list[str] = []
    bg = Background()
    bg.every(0, lambda: runs.append("never"), name="off")
    bg.start()
    bg.every(0.01, lambda: runs.append("late"), name="late")
    await wait_until(lambda: "late" in runs)
    await bg.stop()
    assert "never" not in runs


async def test_restart_after_stop() -> None:
    runs: list[int] = []
    bg = Background()
    bg.every(0.01, lambda: runs.append(1), name="x")
    bg.start()
    await bg.stop()
    count = len(runs)
    bg.start()
    await wait_until(lambda: len(runs) > count)
    await bg.stop()


def test_jitter_spreads_the_period() -> None:
    bg = Background(jitter=0.5)
    delays = {bg._delay(10.0) for _ in range(200)}
    assert all(5.0 <= d <= 15.0 for d in delays) and len(delays) > 100
    assert Background()._delay(10.0) == 10.0
    with pytest.raises(ValueError, match=r"jitter 1\.5"):
        Background(jitter=1.5)


async def test_follow_stream_retries_every_failure_and_returns_when_stopped() -> None:
    import logging

    from tollway.mesh.background import follow_stream

    stop = asyncio.Event()
    calls: list[str] = []
    outcomes = [ConnectionError("redis down"), ValueError("bad event"), None, None]

    async def read_and_apply() -> None:
        outcome = outcomes.pop(0)
        calls.append(type(outcome).__name__)
        if outcome is not None:
            raise outcome
        if not outcomes:
            stop.set()

    await asyncio.wait_for(
        follow_stream(
            read_and_apply,
            stop,
            what="a test stream",
            unreachable=(ConnectionError,),
            logger=logging.getLogger("test"),
            retry_s=0.01,
        ),
        5,
    )
    assert calls == ["ConnectionError", "ValueError", "NoneType", "NoneType"]
