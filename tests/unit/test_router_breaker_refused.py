"""A refused connection is told apart from other failures all the way to the breaker, and a
half-open probe reports at its first token.

Why: a deployment whose server is down or restarting refuses connections. Probing it sends
nothing, so its breaker may probe again after a short cooldown (the rule itself runs in Redis,
see tests/integration/test_router_breakers.py); and once a probe's first token arrives, the
deployment is known to answer, so the rest of the traffic need not wait for the whole answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, TextDelta
from tollway.common.route import RouteCompleted, RouteStarted
from tollway.mesh import errors
from tollway.mesh.httpclient import HttpClient, HttpConnectError
from tollway.router.breaker import (
    CLOSED,
    HALF_OPEN,
    Breakers,
    BreakerSettings,
    BreakerSnapshot,
    StoreResult,
    Transition,
)
from tollway.router.engine import Router
from tollway.router.providers.wire import post
from tollway.router.types import Completion, ErrorKind, ProviderError, StreamEnd, StreamEvent


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CATALOG = parse_catalog({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}, "models": {"m": {"provider": "p"}}})
DEP = CATALOG.models["m"].deployments[0]
REQUEST = ChatRequest("m", (ChatMessage("user", "hi"),))


# -- the transport says "nothing was sent" -------------------------------------------------


async def test_a_refused_connect_is_an_http_connect_error() -> None:
    client = HttpClient()
    with pytest.raises(HttpConnectError):
        async with client.stream("POST", f"http://127.0.0.1:{_closed_port()}/v1/x", json={}):
            pass


async def test_the_provider_error_of_a_refused_connect_is_marked_refused() -> None:
    client = HttpClient()
    with pytest.raises(ProviderError) as info:
        async with post(client, DEP, f"http://127.0.0.1:{_closed_port()}/v1/chat/completions", {}, {}):
            pass
    assert info.value.kind is ErrorKind.CONNECTION and info.value.refused


# -- the engine passes it on, and a probe reports at its first token ------------------------


class ScriptedStore:
    """A breaker store that answers ``decision`` to every acquire and records every report."""

    def __init__(self, decision: str = "allow", state: str = CLOSED) -> None:
        self.decision, self.state = decision, state
        self.records: list[tuple[bool, bool, str]] = []  # (ok, refused, token)

    async def acquire(self, name: str, token: str, settings: BreakerSettings, replica: str) -> StoreResult:
        return StoreResult(self.decision, self.state, 0, 0, 0)

    async def record(
        self,
        name: str,
        token: str,
        ok: bool,
        detail: str,
        settings: BreakerSettings,
        replica: str,
        count: int = 1,
        refused: bool = False,
    ) -> StoreResult:
        self.records.append((ok, refused, token))
        return StoreResult("ok", CLOSED if ok else self.state, 0, 0, 0)

    async def release(self, name: str, token: str) -> None:
        pass

    async def snapshots(self, names: Sequence[str], settings: BreakerSettings) -> list[BreakerSnapshot]:
        return []

    async def transitions(self, limit: int, before_id: str = "", breaker: str = "") -> list[Transition]:
        return []


class FailingAdapter:
    def __init__(self, error: ProviderError) -> None:
        self.error = error

    async def stream(self, request: ChatRequest, deployment: object) -> AsyncIterator[StreamEvent]:
        raise self.error
        yield  # pragma: no cover  (makes this an async generator)

    async def complete(self, request: ChatRequest, deployment: object) -> Completion:
        raise self.error

    async def aclose(self) -> None:
        pass


class HeldAdapter:
    """Sends one token, then waits for ``finish`` before ending the answer."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()

    async def stream(self, request: ChatRequest, deployment: object) -> AsyncIterator[StreamEvent]:
        yield TextDelta("Hello")
        await self.finish.wait()
        yield StreamEnd("stop", None)

    async def complete(self, request: ChatRequest, deployment: object) -> Completion:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        pass


def _router(store: ScriptedStore, adapter: object) -> Router:
    breakers = Breakers(store, BreakerSettings(local_view_s=0))
    return Router(CATALOG, {"openai_compat": adapter}, breakers=breakers)  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (ProviderError("p", "cannot connect: refused", kind=ErrorKind.CONNECTION, refused=True), True),
        (ProviderError("p", "connection closed mid-body", kind=ErrorKind.CONNECTION), False),
        (ProviderError.from_status("p", 500, "boom"), False),
        (ProviderError("p", "no first token", kind=ErrorKind.TIMEOUT), False),
    ],
)
async def test_the_breaker_hears_whether_a_failure_was_a_refused_connection(
    error: ProviderError, refused: bool
) -> None:
    store = ScriptedStore()
    with pytest.raises(errors.TollwayError):
        [e async for e in _router(store, FailingAdapter(error)).generate(REQUEST)]
    assert store.records and all(not ok and r is refused for ok, r, _ in store.records)


async def test_a_probe_closes_the_breaker_at_its_first_token_not_at_the_end() -> None:
    store = ScriptedStore(decision="probe", state=HALF_OPEN)
    adapter = HeldAdapter()
    stream = _router(store, adapter).generate(REQUEST)
    assert isinstance(await anext(stream), RouteStarted)
    assert isinstance(await anext(stream), TextDelta)
    # The answer is still streaming, and the breaker already heard that the deployment answers.
    assert [(ok, token != "") for ok, _, token in store.records] == [(True, True)]
    adapter.finish.set()
    assert isinstance(await anext(stream), RouteCompleted)
    assert len(store.records) == 1  # the end of the answer is not counted a second time


async def test_a_call_that_is_not_a_probe_reports_at_the_end() -> None:
    store = ScriptedStore()
    adapter = HeldAdapter()
    stream = _router(store, adapter).generate(REQUEST)
    assert isinstance(await anext(stream), RouteStarted)
    assert isinstance(await anext(stream), TextDelta)
    assert store.records == []
    adapter.finish.set()
    assert isinstance(await anext(stream), RouteCompleted)
    assert [ok for ok, _, _ in store.records] == [True]


async def test_a_call_refused_while_a_probe_runs_is_told_to_retry_soon_not_at_the_lease_end() -> None:
    class LeaseHeld(ScriptedStore):
        async def acquire(self, name: str, token: str, settings: BreakerSettings, replica: str) -> StoreResult:
            return StoreResult("reject", HALF_OPEN, 0, retry_at_ms=30_000, now_ms=0)  # the lease ends in 30 s

    permit = await Breakers(LeaseHeld(), BreakerSettings(local_view_s=0)).acquire("d")
    assert not permit.allowed and permit.retry_in_s == 1.0
