"""One runner for a service's background loops: periodic chores and long-running followers.

Typical use, in a service's start and stop hooks::

    background = Background(log)
    background.every(30.0, catalog.reload_if_changed, name="catalog reload")
    background.run(sync.follow, name="event stream")   # gets the stop event
    background.start()
    ...
    await background.stop()

A periodic job runs one period after :meth:`Background.start`, then once per period. A job
that raises is logged and runs again next period: a chore that died would leave, say, the
cache unswept for good. Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Background"]

_log = logging.getLogger("tollway.mesh.background")

Job = Callable[[], Any]
"""A periodic job: a function, or a coroutine function, taking no arguments."""

Loop = Callable[[asyncio.Event], Awaitable[None]]
"""A long-running loop: it returns soon after the event it is given is set."""


class Background:
    """A group of background loops that start and stop together.

    Args:
        logger: Where failures are logged (the service's own logger).
        jitter: Each wait is the period times a random factor in ``[1 - jitter, 1 + jitter]``,
            so that replicas started together do not hit Redis in step. 0 keeps it exact.
    """

    def __init__(self, logger: logging.Logger | None = None, *, jitter: float = 0.0) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter {jitter!r} is not in [0, 1)")
        self._log = logger or _log
        self._jitter = jitter
        self._loops: list[tuple[str, Loop]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not since."""
        return self._started

    def every(self, period_s: float, job: Job, *, name: str) -> None:
        """Adds ``job``, run once every ``period_s`` seconds; a period of 0 or less disables it.

        Jobs added after :meth:`start` start at once.
        """
        if period_s > 0:
            self.run(lambda stop: self._periodic(stop, period_s, job, name), name=name)

    def run(self, loop: Loop, *, name: str) -> None:
        """Adds a long-running ``loop(stop_event)``; it must return soon after the event is set."""
        self._loops.append((name, loop))
        if self._started:
            self._spawn(name, loop)

    def start(self) -> None:
        """Starts every loop added so far. Does nothing if they are already running.

        Must be called from the event loop.
        """
        if self._started:
            return
        self._started = True
        self._stop = asyncio.Event()
        for name, loop in self._loops:
            self._spawn(name, loop)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Asks every loop to stop and waits up to ``timeout_s`` for them; cancels the rest.

        A job in progress is allowed to finish (within the timeout) rather than cancelled
        midway. This can be called before :meth:`start` and is safe for repeated invocations.
        """
        tasks, self._tasks = self._tasks, []
        self._started = False
        self._stop.set()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            self._log.warning("background loop %s did not stop in %.1fs; cancelling", task.get_name(), timeout_s)
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, name: str, loop: Loop) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._guard(name, loop), name=name))

    async def _guard(self, name: str, loop: Loop) -> None:
        try:
            await loop(self._stop)
        except Exception:
            self._log.exception("background loop %s ended with an error", name)

    def _delay(self, period_s: float) -> float:
        if not self._jitter:
            return period_s
        return period_s * (1.0 + self._jitter * (2.0 * random.random() - 1.0))

    async def _periodic(self, stop: asyncio.Event, period_s: float, job: Job, name: str) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay(period_s)):
                    await stop.wait()
                return
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._log.exception("background job %s failed; it runs again in %.3gs", name, period_s)


async def follow_stream(
    read_and_apply: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    what: str,
    unreachable: tuple[type[BaseException], ...],
    logger: logging.Logger,
    retry_s: float = 1.0,
) -> None:
    """Runs ``read_and_apply`` (one blocking read of a stream and its application) until ``stop``.

    A follower that died would leave its in-memory view drifting away from Redis for good, so
    every failure is logged and retried after ``retry_s``: an ``unreachable`` error (Redis down)
    as a warning, anything else with its traceback. Returns once ``stop`` is set, within one
    read's block time; it is stopped this way rather than cancelled, so that no blocked read is
    ever cancelled midway.
    """
    while not stop.is_set():
        try:
            await read_and_apply()
        except unreachable as exc:
            logger.warning(f"{what} unreachable; retrying", extra={"error": str(exc)})
        except Exception:
            logger.exception(f"applying {what} failed; retrying")
        else:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), retry_s)
