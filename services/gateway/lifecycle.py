"""The life of one request: authenticate, check, route, stream, record.

Pure orchestration over domain values; gRPC stays in service.py and router_client.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from tollway.gateway import metrics
from tollway.gateway.auth import KeyRing, Tenant
from tollway.gateway.pricing import cost_usd_micros
from tollway.gateway.router_client import RouterClient
from tollway.gateway.store import GatewayStore
from tollway.gateway.validation import ChatRequestLike, Limits, check
from tollway.mesh.errors import TollwayError
from tollway.mesh.streams import coalesce
from tollway.router.catalog import Catalog
from tollway.router.engine import RouteCompleted, RouteStarted, StreamFailed
from tollway.router.service import merge_deltas
from tollway.router.types import ChatMessage, ChatRequest, FinishReason, TextDelta, Usage

log = logging.getLogger("tollway.gateway")


@dataclasses.dataclass(frozen=True)
class Started:
    request_id: str
    model: str
    provider: str
    attempt_count: int
    cache_tier: str  # "miss", "exact", "semantic", "stale"
    degraded: bool = False


@dataclasses.dataclass(frozen=True)
class Completed:
    finish_reason: FinishReason
    usage: Usage
    cost_usd_micros: int
    latency_ms: int
    ttft_ms: int
    fallback_path: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Failed:
    code: int
    message: str
    reason: str
    partial_usage: Usage


GatewayEvent = Started | TextDelta | Completed | Failed


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Gateway:
    """Runs requests end to end; one instance per gateway process."""

    def __init__(
        self,
        keys: KeyRing,
        router: RouterClient | None,
        store: GatewayStore,
        limits: Limits,
        request_timeout_s: float,
        catalog: Catalog,
    ) -> None:
        self.catalog = catalog
        self.keys = keys
        self.router = router
        self.store = store
        self.limits = limits
        self.request_timeout_s = request_timeout_s
        self._background: set[asyncio.Task[None]] = set()

    async def admit(self, req: ChatRequestLike, metadata: Sequence[tuple[str, str | bytes]]) -> Tenant:
        """Authenticates, then validates; raises before anything is spent."""
        tenant = await self.keys.authenticate(metadata)
        check(req, self.limits)
        return tenant

    def chat_request(self, req: ChatRequestLike, tenant: Tenant) -> ChatRequest:
        return ChatRequest(
            model=req.model,
            messages=tuple(ChatMessage(m.role, m.content, m.name) for m in req.messages),
            max_tokens=req.max_tokens or self.limits.default_max_tokens,
            temperature=req.temperature if req.HasField("temperature") else None,
            top_p=req.top_p if req.HasField("top_p") else None,
            stop=tuple(req.stop),
            seed=req.seed if req.HasField("seed") else None,
            request_id=req.request_id or uuid.uuid4().hex,
            tenant=tenant.name,
        )

    async def generate(
        self, req: ChatRequestLike, tenant: Tenant, deadline_s: float | None = None
    ) -> AsyncIterator[GatewayEvent]:
        """Streams Started, TextDelta..., then Completed or Failed.

        Errors before Started are raised as TollwayError (the caller turns them into a
        status); after Started they arrive as Failed.
        """
        start = time.perf_counter()
        chat = self.chat_request(req, tenant)
        record: dict[str, str | int | float] = {
            "request_id": chat.request_id,
            "timestamp": round(time.time(), 3),
            "tenant": tenant.name,
            "feature": req.feature,
            "user": req.user,
            "model": chat.model,
            "provider": "",
            "prompt_template": "",
            "prompt_version": "",
            "cache_tier": "miss",
            "attempts": 0,
            "prompt_hash": _digest(repr([(m.role, m.content) for m in chat.messages])),
        }
        parts: list[str] = []
        ttft_ms = 0
        status = "OK"
        usage = Usage()
        cost = 0
        fallback: tuple[str, ...] = ()
        try:
            timeout = min(deadline_s, self.request_timeout_s) if deadline_s else self.request_timeout_s
            assert self.router is not None, "Gateway.router is set when the service starts"
            async for event in coalesce(self.router.generate(chat, timeout), merge_deltas):
                if isinstance(event, TextDelta):
                    if not parts:
                        ttft_ms = int((time.perf_counter() - start) * 1000)
                        metrics.TTFT_SECONDS.observe(ttft_ms / 1000)
                    parts.append(event.text)
                    yield event
                elif isinstance(event, RouteStarted):
                    record.update(model=event.model, provider=event.provider, attempts=event.attempt_count)
                    fallback = event.fallback_path
                    yield Started(chat.request_id, event.model, event.provider, event.attempt_count, "miss")
                elif isinstance(event, RouteCompleted):
                    usage = event.usage
                    cost = cost_usd_micros(self.catalog, str(record["model"]), usage)
                    latency_ms = int((time.perf_counter() - start) * 1000)
                    yield Completed(event.finish_reason, usage, cost, latency_ms, ttft_ms or latency_ms, fallback)
                elif isinstance(event, StreamFailed):
                    status, usage = event.reason, event.partial_usage
                    cost = cost_usd_micros(self.catalog, str(record["model"]), usage)
                    yield Failed(event.code, event.message, event.reason, usage)
        except TollwayError as exc:
            status = exc.reason
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        finally:
            latency_ms = int((time.perf_counter() - start) * 1000)
            record.update(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_input_tokens,
                cost_usd=cost / 1e6,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                status=status,
                response_hash=_digest("".join(parts)) if parts else "",
            )
            metrics.observe_request(record)
            self._emit(record)

    def _emit(self, record: dict[str, str | int | float]) -> None:
        # Off the response path: the client has its answer before the record is written.
        task = asyncio.get_running_loop().create_task(self._write(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, record: dict[str, str | int | float]) -> None:
        try:
            await self.store.append_call(record)
        except Exception:
            log.warning("could not store the call record", extra={"request_id": record["request_id"]}, exc_info=True)

    async def drain(self) -> None:
        """Waits for call records still being written (used at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
