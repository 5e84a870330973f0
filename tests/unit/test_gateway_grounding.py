"""Retrieval grounding on the gateway's request path: the spec's checks, where the sources go
in the conversation, and the lifecycle's order (search before the cache, the budget and the
router; citations before the first delta; document ids on the stored answer; a refusal spends
nothing). The retrieval, cache, budget and router are fakes with the clients' interfaces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from tollway.common.caching import CacheMode, CachePolicy
from tollway.common.catalog import Catalog
from tollway.common.chat import ChatMessage, ChatRequest, TextDelta, Usage
from tollway.common.route import RouteCompleted, RouteStarted
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.budgeting import Admission
from tollway.gateway.cache_client import CacheRequest, Lookup
from tollway.gateway.grounding import INSTRUCTIONS, RetrievalSpec, ground, query_of, spec_problems
from tollway.gateway.lifecycle import Cited, Gateway, Started
from tollway.gateway.request import GatewayRequest
from tollway.gateway.retrieval_client import RetrievedChunk, assemble_context
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2
from tollway.gateway.validation import Limits, check
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

CHUNKS = [
    RetrievedChunk(f"collections/kb/documents/d{i}", f"c{i}", 1.0 - i / 10, f"snippet {i}", f"text {i}", title=f"T{i}")
    for i in range(3)
]


# --- the spec and where the sources go ------------------------------------------------------


def test_retrieval_reaches_the_domain_with_its_defaults() -> None:
    proto = gateway_pb2.GenerateRequest(
        model="m",
        messages=[common_pb2.Message(role="user", content="hi")],
        retrieval=gateway_pb2.Retrieval(collection="kb"),
    )
    proto.retrieval.filters.update({"lang": "en", "tier": ["a", "b"]})
    spec = request_from_proto(proto, Tenant("acme", "k"), 256).retrieval
    assert spec == RetrievalSpec("kb", 8, {"lang": "en", "tier": ["a", "b"]}, 2000)
    bare = gateway_pb2.GenerateRequest(model="m", messages=[common_pb2.Message(role="user", content="hi")])
    assert request_from_proto(bare, Tenant("acme", "k"), 256).retrieval is None


@pytest.mark.parametrize(
    ("collection", "top_k", "max_context_tokens", "field"),
    [
        ("", 0, 0, "retrieval.collection"),
        ("Bad Name", 0, 0, "retrieval.collection"),
        ("collections/kb/documents/x", 0, 0, "retrieval.collection"),
        ("kb", 101, 0, "retrieval.top_k"),
        ("kb", -1, 0, "retrieval.top_k"),
        ("kb", 0, 40_000, "retrieval.max_context_tokens"),
    ],
)
def test_bad_retrieval_fields_are_named(collection: str, top_k: int, max_context_tokens: int, field: str) -> None:
    assert [f for f, _ in spec_problems(collection, top_k, max_context_tokens)] == [field]
    proto = gateway_pb2.GenerateRequest(
        model="m",
        messages=[common_pb2.Message(role="user", content="hi")],
        retrieval=gateway_pb2.Retrieval(collection=collection, top_k=top_k, max_context_tokens=max_context_tokens),
    )
    with pytest.raises(InvalidArgument) as info:
        check(proto, Limits())
    assert field in [f for f, _ in info.value.violations]


def test_good_specs_pass() -> None:
    assert spec_problems("kb", 0, 0) == []
    assert spec_problems("collections/kb-2", 100, 32_768) == []


def test_the_sources_go_after_the_system_turns_and_before_the_conversation() -> None:
    chat = ChatRequest(
        "m",
        (
            ChatMessage("system", "be brief"),
            ChatMessage("user", "q1"),
            ChatMessage("assistant", "a1"),
            ChatMessage("user", "q2"),
        ),
    )
    context = assemble_context(CHUNKS, 1000)
    grounded = ground(chat, context)
    roles = [m.role for m in grounded.messages]
    assert roles == ["system", "system", "user", "assistant", "user"]
    assert grounded.messages[0].content == "be brief"
    assert grounded.messages[1].content.startswith(INSTRUCTIONS)
    assert context.text in grounded.messages[1].content
    assert query_of(chat) == "q2"


def test_nothing_is_added_when_no_source_fits() -> None:
    chat = ChatRequest("m", (ChatMessage("user", "q"),))
    assert ground(chat, assemble_context(CHUNKS, 1)) == chat


# --- the lifecycle ----------------------------------------------------------------------------


class FakeRetrieval:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.searches: list[dict[str, Any]] = []

    async def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int,
        filters: Mapping[str, Any],
        query_embedding: Sequence[float],
        query_embedding_model: str,
    ) -> list[RetrievedChunk]:
        self.searches.append(
            {
                "collection": collection,
                "query": query,
                "top_k": top_k,
                "vector": list(query_embedding),
                "model": query_embedding_model,
            }
        )
        if self.error is not None:
            raise self.error
        return CHUNKS


class FakeCache:
    embedding_model = "mini"

    def __init__(self) -> None:
        self.lookups: list[tuple[CacheRequest, list[float] | None]] = []
        self.stored: list[tuple[CacheRequest, Sequence[str]]] = []

    async def embed(self, text: str) -> list[float]:
        return [0.5, 0.5]

    async def lookup(self, req: CacheRequest, vector: list[float] | None = None) -> Lookup:
        self.lookups.append((req, vector))
        return Lookup(vector=vector)

    async def store(
        self,
        req: CacheRequest,
        vector: Any,
        text: str,
        usage: Usage,
        model: str,
        provider: str,
        finish_reason: str,
        document_ids: Sequence[str] = (),
    ) -> None:
        self.stored.append((req, document_ids))


class FakeBudget:
    def __init__(self) -> None:
        self.admitted: list[GatewayRequest] = []
        self.settled = 0

    async def admit(self, request: GatewayRequest, *, counted: int | None = None) -> Admission:
        self.admitted.append(request)
        return Admission(request, None, 10, request.chat.max_tokens)

    async def settle(self, *args: Any, **kw: Any) -> None:
        self.settled += 1


class FakeRouter:
    def __init__(self) -> None:
        self.asked: list[ChatRequest] = []

    async def generate(self, chat: ChatRequest, timeout_s: float, *, prompt_tokens: int = 0) -> AsyncIterator[Any]:
        self.asked.append(chat)
        yield RouteStarted("fake-ok", "fakeai", 1)
        yield TextDelta("Refunds take 14 days [1].")
        yield RouteCompleted("stop", Usage(12, 3), True, 5)


class FakeStore:
    def __init__(self) -> None:
        self.records: list[dict[str, str]] = []

    async def append_calls(self, records: list[dict[str, str]], **totals: Any) -> None:
        self.records.extend(records)


def make(retrieval: FakeRetrieval | None) -> tuple[Gateway, FakeCache, FakeBudget, FakeRouter]:
    cache, budget, router = FakeCache(), FakeBudget(), FakeRouter()
    gw = Gateway(
        keys=None,  # type: ignore[arg-type]
        router=router,  # type: ignore[arg-type]
        store=FakeStore(),  # type: ignore[arg-type]
        limits=Limits(),
        request_timeout_s=5,
        catalog=Catalog({}),
        cache=cache,  # type: ignore[arg-type]
        budget=budget,  # type: ignore[arg-type]
        retrieval=retrieval,  # type: ignore[arg-type]
    )
    return gw, cache, budget, router


def grounded_request(content: str = "How fast are refunds?") -> GatewayRequest:
    chat = ChatRequest("fake-ok", (ChatMessage("user", content),), max_tokens=50, tenant="acme", request_id="r1")
    return GatewayRequest(
        chat, "u1", "f", CachePolicy("default", CacheMode.NORMAL), retrieval=RetrievalSpec("kb", top_k=5)
    )


async def test_citations_come_after_started_and_before_the_first_delta() -> None:
    gw, _cache, _budget, _router = make(FakeRetrieval())
    events = [e async for e in gw.generate(grounded_request())]
    await gw.drain()
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["Started", "Cited", "TextDelta"]
    cited = events[1]
    assert isinstance(cited, Cited) and {c.document for c in cited.citations} == {c.document for c in CHUNKS}


async def test_the_query_is_embedded_once_and_the_grounded_request_is_what_everyone_sees() -> None:
    retrieval = FakeRetrieval()
    gw, cache, budget, router = make(retrieval)
    [e async for e in gw.generate(grounded_request())]
    await gw.drain()
    search = retrieval.searches[0]
    assert search["vector"] == [0.5, 0.5] and search["model"] == "mini" and search["top_k"] == 5
    ((looked, vector),) = cache.lookups
    assert vector == [0.5, 0.5]  # the same vector serves the semantic tier
    asked = router.asked[0]
    assert looked.chat.messages == asked.messages == budget.admitted[0].chat.messages
    assert asked.messages[0].role == "system" and "text 0" in asked.messages[0].content
    stored, documents = cache.stored[0]
    assert stored.chat.messages == asked.messages
    assert set(documents) == {c.document for c in CHUNKS}


@pytest.mark.parametrize(
    "error",
    [
        NotFound("collection collections/kb not found"),
        InvalidArgument("filters[0].field: unknown field", [("filters[0].field", "unknown")]),
    ],
)
async def test_a_retrieval_refusal_spends_nothing(error: Exception) -> None:
    gw, cache, budget, router = make(FakeRetrieval(error))
    with pytest.raises(type(error)):
        [e async for e in gw.generate(grounded_request())]
    await gw.drain()
    assert cache.lookups == [] and budget.admitted == [] and router.asked == [] and cache.stored == []


async def test_a_gateway_without_retrieval_refuses_grounded_requests() -> None:
    gw, _cache, budget, router = make(None)
    with pytest.raises(FailedPrecondition) as info:
        [e async for e in gw.generate(grounded_request())]
    assert info.value.reason == "RETRIEVAL_NOT_CONFIGURED"
    assert budget.admitted == [] and router.asked == []


async def test_an_ungrounded_request_never_searches() -> None:
    retrieval = FakeRetrieval()
    gw, _cache, _budget, _router = make(retrieval)
    chat = ChatRequest("fake-ok", (ChatMessage("user", "hi"),), max_tokens=50, tenant="acme", request_id="r2")
    events = [e async for e in gw.generate(GatewayRequest(chat, "u", "f", CachePolicy("default", CacheMode.NORMAL)))]
    await gw.drain()
    assert retrieval.searches == [] and not any(isinstance(e, Cited) for e in events)
    assert isinstance(events[0], Started)
