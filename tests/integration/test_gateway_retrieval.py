"""Grounded answers through Envoy, with the real retrieval, embedding and cache services:
citations before the first delta, the context held to max_context_tokens, an unknown
collection refused before anything is spent, and a document update removing the grounded
cache entry."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from tests.integration.test_gateway_budget import ledger
from tests.integration.test_gateway_cache import provider_requests
from tests.support.polling import eventually
from tollway.cache.v1 import cache_pb2_grpc
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.cache_client import CacheClient, CacheRequest, lookup_request
from tollway.gateway.grounding import ground, query_of
from tollway.gateway.retrieval_client import RetrievalClient, assemble_context
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2
from tollway.launcher.stack import Stack
from tollway.mesh import clients
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

pytestmark = pytest.mark.timeout(120)

DOCUMENTS = {
    "refunds": ("Refunds", "Refunds are paid to the original card within 14 days of the returned parcel arriving."),
    "shipping": ("Shipping", "Parcels ship from Rotterdam; delivery in the EU takes two to four working days."),
    "warranty": ("Warranty", "Every kettle carries a two year warranty covering the heating element and the lid."),
}


@pytest.fixture
async def client(stack: Stack, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=stack.edge_url, headers=headers, timeout=60) as c:
        yield c


async def upsert(stack: Stack, collection: str, doc_id: str, title: str, text: str) -> None:
    async with clients.channel(stack.address("retrieval")) as channel:
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        op = (
            await retrieval.UpsertDocument(
                pb.UpsertDocumentRequest(
                    parent=f"collections/{collection}", document_id=doc_id, document=pb.Document(title=title, text=text)
                )
            )
        ).operation

        async def done() -> bool:
            got = (await retrieval.GetOperation(pb.GetOperationRequest(name=op.name))).operation
            return got.done and got.metadata.state == pb.OPERATION_STATE_SUCCEEDED

        await eventually(done, timeout_s=90, what=f"document {doc_id} indexed")


@pytest.fixture
async def collection(stack: Stack) -> AsyncIterator[str]:
    name = f"gw-{uuid.uuid4().hex[:10]}"
    async with clients.channel(stack.address("retrieval")) as channel:
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        await retrieval.CreateCollection(pb.CreateCollectionRequest(collection_id=name))
        for doc_id, (title, text) in DOCUMENTS.items():
            await upsert(stack, name, doc_id, title, text)

        async def searchable() -> bool:
            reply = await retrieval.Search(pb.SearchRequest(collection=f"collections/{name}", query="refund", top_k=3))
            return len({r.document for r in reply.results}) == len(DOCUMENTS)

        await eventually(searchable, timeout_s=60, what="every document searchable")
    yield name


def body(collection: str, question: str, **retrieval: Any) -> dict[str, Any]:
    return {
        "model": "fake-ok",
        "messages": [{"role": "user", "content": question}],
        "retrieval": {"collection": collection, **retrieval},
    }


def events(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: ")]


async def test_citations_arrive_before_the_first_delta(client: httpx.AsyncClient, collection: str) -> None:
    got = events(await client.post("/v1/generate", json=body(collection, f"How long do refunds take? {uuid.uuid4()}")))
    kinds = [next(iter(e)) for e in got]
    assert kinds[0] == "started" and kinds[1] == "citations" and kinds[-1] == "completed"
    assert "delta" in kinds and kinds.index("delta") > 1
    citations = got[1]["citations"]["citations"]
    assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    assert all(c["document"].startswith(f"collections/{collection}/documents/") for c in citations)
    assert any(c["document"].endswith("/refunds") for c in citations)


async def test_the_context_fits_max_context_tokens(client: httpx.AsyncClient, collection: str) -> None:
    question = f"How long do refunds take? {uuid.uuid4()}"
    wide = events(await client.post("/v1/generate", json=body(collection, question, max_context_tokens=2000)))
    narrow = events(
        await client.post("/v1/generate", json=body(collection, question + " (narrow)", max_context_tokens=40))
    )
    assert len(wide[1]["citations"]["citations"]) == len(DOCUMENTS)
    # Each source costs about 30 tokens with its framing: 40 leaves room for one.
    assert len(narrow[1]["citations"]["citations"]) == 1
    used = {e: int(ev[-1]["completed"]["usage"]["input_tokens"]) for e, ev in (("wide", wide), ("narrow", narrow))}
    assert used["narrow"] < used["wide"]


async def test_an_unknown_collection_is_404_before_any_spend(
    client: httpx.AsyncClient, stack: Stack, fake_openai: str
) -> None:
    rid = f"nf-{uuid.uuid4().hex[:12]}"
    before = provider_requests(fake_openai)
    r = await client.post("/v1/generate", json={**body("no-such-collection", "refunds?"), "request_id": rid})
    assert r.status_code == 404, r.text
    assert "no-such-collection" in r.json()["message"]
    assert provider_requests(fake_openai) == before
    # Retrieval runs before the budget in the same task: a refusal can have reserved nothing.
    assert [e for e in ledger(stack.redis_url, "acme") if e.get("rid") == rid] == []


async def test_a_bad_filter_is_400_naming_the_field(client: httpx.AsyncClient, collection: str) -> None:
    r = await client.post("/v1/generate", json=body(collection, "refunds?", filters={"no field!": "x"}))
    assert r.status_code == 400, r.text
    fields = [v["field"] for d in r.json()["details"] for v in d.get("field_violations", ())]
    assert any(f.startswith("filters") for f in fields), r.text


async def test_updating_a_document_removes_the_grounded_cache_entry(
    client: httpx.AsyncClient, stack: Stack, collection: str
) -> None:
    question = f"How long do refunds take? {uuid.uuid4()}"
    request = body(collection, question)
    first = events(await client.post("/v1/generate", json=request))
    assert first[0]["started"]["cache_tier"] == "CACHE_TIER_MISS"

    # The key the gateway stored the answer under, rebuilt with its own code: the same
    # embedding, search and fitting, then the grounded request.
    proto = json_format.ParseDict(request, gateway_pb2.GenerateRequest())
    admitted = request_from_proto(proto, Tenant("acme", ""), 256)
    async with (
        clients.channel(stack.address("cache")) as cch,
        clients.channel(stack.address("embedding")) as ech,
        clients.channel(stack.address("retrieval")) as rch,
    ):
        cache_client = CacheClient(cch, ech)
        query = query_of(admitted.chat)
        vector = await cache_client.embed(query)
        chunks = await RetrievalClient(rch).search(
            collection, query, top_k=8, query_embedding=vector or (), query_embedding_model=cache_client.embedding_model
        )
        chat = ground(admitted.chat, assemble_context(chunks, 2000))
        cache_req = CacheRequest(chat, "default", "acme", "", admitted.cache.mode)
        lookup = lookup_request(cache_req, None, "")
        cache = cache_pb2_grpc.CacheServiceStub(cch)

        async def tier() -> int:
            return (await cache.Lookup(lookup)).tier

        await eventually(lambda: _is(tier, common_pb2.CACHE_TIER_EXACT), what="the grounded answer stored")
        second = events(await client.post("/v1/generate", json=request))
        assert second[0]["started"]["cache_tier"] == "CACHE_TIER_EXACT"
        assert second[1]["citations"] == first[1]["citations"]

        await upsert(stack, collection, "refunds", "Refunds", "Refunds are now paid within 30 days of the return.")
        await eventually(lambda: _is(tier, common_pb2.CACHE_TIER_MISS), what="the grounded entry removed")
    third = events(await client.post("/v1/generate", json=request))
    assert third[0]["started"]["cache_tier"] == "CACHE_TIER_MISS"


async def _is(read: Any, value: int) -> bool:
    return await read() == value

