"""Waiting for something that happens off the response path (a cache store, a call record, a
health flip) by polling it until a deadline, instead of sleeping a guessed time.

    await eventually(lambda: stats().store_count > before, what="the answer was stored")
    eventually_sync(lambda: record("req-1"), timeout_s=5, what="the call record of req-1")

A poll returns as soon as the condition holds, so it is faster than a fixed sleep on a quiet
machine and does not flake on a loaded one. A wait for time itself to pass (a TTL, a breaker's
cooldown) stays a sleep: there is nothing to poll.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
    what: str = "the condition",
) -> T:
    """Calls ``check`` (sync or async) until it returns a truthy value, and returns that value.

    Raises:
        AssertionError: ``timeout_s`` passed; the message names ``what`` and the last value seen.
        Exception: Whatever ``check`` raises (a check that may fail while waiting catches it).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s (last value: {value!r})")
        await asyncio.sleep(interval_s)


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
    what: str = "the condition",
) -> T:
    """The blocking form of `eventually`, for tests that are not coroutines.

    Raises:
        AssertionError: ``timeout_s`` passed; the message names ``what`` and the last value seen.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s (last value: {value!r})")
        time.sleep(interval_s)
