"""Waiting for budget leases (tollway.budget.leases) to go back, in tests through real stacks."""

from __future__ import annotations

import redis

from tests.support.polling import eventually


def leases_held(redis_url: str, tenant: str, prefix: str = "tw:budget") -> int:
    """How many leases of ``tenant`` are open (they share the open set with reservations)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for i in client.zrange(f"{prefix}:{{{tenant}}}:open", 0, -1) if i.startswith(b"L"))
    finally:
        client.close()


async def leases_back(redis_url: str, tenant: str, timeout_s: float = 30.0) -> None:
    """Waits until no replica holds a lease of ``tenant``: an idle one goes back within about a
    second, a dead holder's when the sweeper expires it.

    Raises:
        AssertionError: Some are still held after ``timeout_s``.
    """
    await eventually(
        lambda: leases_held(redis_url, tenant) == 0,
        timeout_s=timeout_s,
        interval_s=0.05,
        what=f"{tenant}'s leases back",
    )
