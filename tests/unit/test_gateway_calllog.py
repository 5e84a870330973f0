"""The call log's batching: nothing waits for a later call to be written."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.polling import eventually
from tollway.gateway.calllog import CallLog
from tollway.gateway.callrecord import CallRecord


class SlowStore:
    """Holds each write until released, as a loaded Redis would."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.release = asyncio.Event()

    async def append_calls(self, records: list[dict[str, str]], **totals: Any) -> None:
        await self.release.wait()
        self.written += [r["request_id"] for r in records]


async def test_a_record_added_while_a_batch_is_written_goes_in_the_next_batch() -> None:
    store = SlowStore()
    log = CallLog(store, interval_s=0.01)  # type: ignore[arg-type]
    log.add(CallRecord.begin("first", "acme", "", "", "m", "h"))
    await asyncio.sleep(0.05)  # the first batch is being written (held by the store)
    log.add(CallRecord.begin("second", "acme", "", "", "m", "h"))
    store.release.set()
    await eventually(lambda: store.written == ["first", "second"], what="both records written, no third call needed")


async def test_quality_samples_alone_are_written_too() -> None:
    store = SlowStore()
    store.release.set()
    seen: list[dict[str, Any]] = []

    async def append_calls(records: list[dict[str, str]], **totals: Any) -> None:
        seen.append(totals)

    store.append_calls = append_calls  # type: ignore[method-assign]
    log = CallLog(store, interval_s=0.01)  # type: ignore[arg-type]
    log.add_agreement("acme", "default", "m", "", "", 0.7)
    await eventually(lambda: bool(seen), what="the sample written without a call record")
    assert any(tenant == "acme" and dim == "model" for tenant, _, dim in seen[0]["usage"])
