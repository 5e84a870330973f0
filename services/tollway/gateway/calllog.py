"""Call records, written to Redis in batches off the response path."""

from __future__ import annotations

import asyncio
import logging

from tollway.gateway.callrecord import CallRecord
from tollway.gateway.store import GatewayStore

log = logging.getLogger("tollway.gateway.calls")


class CallLog:
    """Collects records and writes them in one pipelined round trip per batch.

    A record waits at most ``interval_s`` (or until ``batch_size`` are waiting). One
    write per request would cost a Redis round trip of CPU on every call; a batch costs
    one for many. Records still waiting when the process is killed without a shutdown
    are lost (at most ``interval_s`` worth); :meth:`close` writes them on a clean stop.
    """

    def __init__(self, store: GatewayStore, *, interval_s: float = 0.05, batch_size: int = 256) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._waiting: list[CallRecord] = []
        self._flusher: asyncio.Task[None] | None = None

    def add(self, record: CallRecord) -> None:
        """Queues ``record``; never blocks and never raises."""
        self._waiting.append(record)
        if len(self._waiting) >= self.batch_size:
            self._start(0.0)
        elif self._flusher is None or self._flusher.done():
            self._start(self.interval_s)

    def _start(self, delay_s: float) -> None:
        if self._flusher is not None and not self._flusher.done() and delay_s > 0:
            return
        self._flusher = asyncio.get_running_loop().create_task(self._flush_after(delay_s))

    async def _flush_after(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        await self.flush()

    async def flush(self) -> None:
        """Writes every waiting record now."""
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        try:
            # Serialised here, off the response path, like the write itself.
            await self.store.append_calls([record.stream_fields() for record in batch])
        except Exception:
            log.warning("could not store %d call records", len(batch), exc_info=True)

    async def close(self) -> None:
        """Writes what is waiting. Safe to call more than once."""
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
