"""Call records, written to Redis in batches off the response path, with the usage totals
they add (``tollway.gateway.insights``) and, where the tenant allows, the raw text."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence

from tollway.common.chat import ChatMessage
from tollway.gateway import insights
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.store import GatewayStore
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.gateway.calls")


@frozen
class RawPolicy:
    """Which tenants' raw prompts and answers are kept apart from the records, and how long.

    Attributes:
        tenants: The tenants that allow it; "*" among them allows every tenant. Empty: none.
        retention_s: Seconds the raw text stays readable ("hot"); after that it is gone
            ("expired") and only the record with its hashes remains.
    """

    tenants: frozenset[str] = frozenset()
    retention_s: int = 7 * 86400

    @classmethod
    def parse(cls, tenants: str, retention_s: int) -> RawPolicy:
        """From the config's comma-separated tenant list."""
        return cls(frozenset(t.strip() for t in tenants.split(",") if t.strip()), retention_s)

    def allows(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants


class CallLog:
    """Collects records and writes them in one pipelined round trip per batch.

    A record waits at most ``interval_s`` (or until ``batch_size`` are waiting). One
    write per request would cost a Redis round trip of CPU on every call; a batch costs
    one for many. Records still waiting when the process is killed without a shutdown
    are lost (at most ``interval_s`` worth); :meth:`close` writes them on a clean stop.
    """

    def __init__(
        self,
        store: GatewayStore,
        *,
        interval_s: float = 0.05,
        batch_size: int = 256,
        raw: RawPolicy = RawPolicy(),
        aggregate: bool = True,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.raw = raw
        # Off only to measure what the totals cost (bench/console.py); queries need them.
        self.aggregate = aggregate
        self._waiting: list[CallRecord] = []
        self._raw: dict[str, tuple[str, str]] = {}
        self._agreement: dict[tuple[str, str, str], dict[str, list[int]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def add(self, record: CallRecord, messages: Sequence[ChatMessage] = (), answer: str = "") -> None:
        """Queues ``record``; never blocks and never raises.

        ``messages`` (the prompt as sent) and ``answer`` are kept as raw text only when the
        tenant's policy allows it, and the record then says so (``raw_stored``).
        """
        if (messages or answer) and self.raw.allows(record.tenant):
            record.raw_stored = True
            prompt = json.dumps([{"role": m.role, "content": m.content} for m in messages], ensure_ascii=False)
            self._raw[record.request_id] = (prompt, answer)
        self._waiting.append(record)
        self._schedule()

    def add_agreement(
        self, tenant: str, namespace: str, model: str, prompt_template: str, prompt_version: str, token_f1: float
    ) -> None:
        """Counts a quality sample (a semantic hit answered again fresh, and how far the two
        agreed) under the model, the prompt version and the namespace; written with the next batch."""
        amounts = insights.agreement_amounts(
            tenant, namespace, model, insights.prompt_key(prompt_template, prompt_version), token_f1, time.time()
        )
        insights.merge_amounts(self._agreement, amounts)
        self._schedule()

    def _schedule(self) -> None:
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
        # What arrived while this batch was being written found this task still running and
        # scheduled nothing: it goes in the next batch, not whenever another call comes.
        while self._waiting or self._agreement:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Writes every waiting record now."""
        batch, self._waiting = self._waiting, []
        raw, self._raw = self._raw, {}
        agreement, self._agreement = self._agreement, {}
        if not batch and not agreement:
            return
        try:
            # Serialised and summed here, off the response path, like the write itself.
            fields = [record.stream_fields() for record in batch]
            written_ms = int(time.time() * 1000)
            if not self.aggregate:
                await self.store.append_calls(fields)
                return
            usage = insights.batch_amounts(fields)
            insights.merge_amounts(usage, agreement)
            await self.store.append_calls(
                fields,
                usage=usage,
                # When the batch is written: the records' ids in the tenant stream are close to it.
                index={f["request_id"]: {**insights.attribution(f), "written_ms": str(written_ms)} for f in fields},
                raw={rid: (p, a, self.raw.retention_s) for rid, (p, a) in raw.items()},
            )
        except Exception:
            log.warning("could not store %d call records", len(batch), exc_info=True)

    async def close(self) -> None:
        """Writes what is waiting. Safe to call more than once."""
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
