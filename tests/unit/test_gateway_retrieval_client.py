"""The gateway's retrieval client against a real gRPC server on port 0: the query vector is
passed on, and a collection that embeds with another model is searched again without it (and
from then on without), instead of failing the request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tollway.gateway.retrieval_client import RetrievalClient
from tollway.mesh.errors import InvalidArgument, NotFound, rpc_errors
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

COLLECTION_MODEL = {"collections/mini": "mini", "collections/other": "other"}


class Retrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Search only, refusing a query vector from another model as the real service does."""

    def __init__(self) -> None:
        self.requests: list[pb.SearchRequest] = []

    @rpc_errors("retrieval.tollway")
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        self.requests.append(request)
        model = COLLECTION_MODEL.get(request.collection)
        if model is None:
            raise NotFound(f"collection {request.collection} not found")
        if request.query_embedding and request.query_embedding_model != model:
            raise InvalidArgument(
                f"query_embedding must come from the collection's model {model!r}",
                [("query_embedding", "wrong model or dimension")],
            )
        return pb.SearchResponse(
            results=[pb.SearchResult(document=f"{request.collection}/documents/d", chunk_id="c", score=1.0, text="t")]
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[RetrievalClient, Retrieval]]:
    server = grpc.aio.server()
    servicer = Retrieval()
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield RetrievalClient(channel), servicer
    await server.stop(None)


async def test_the_callers_vector_is_used_when_the_models_match(served: tuple[RetrievalClient, Retrieval]) -> None:
    client, servicer = served
    chunks = await client.search("mini", "q", query_embedding=[0.1, 0.2], query_embedding_model="mini")
    assert [c.document for c in chunks] == ["collections/mini/documents/d"]
    assert len(servicer.requests) == 1 and list(servicer.requests[0].query_embedding) == pytest.approx([0.1, 0.2])


async def test_another_model_is_searched_again_without_the_vector_then_never_sent_it(
    served: tuple[RetrievalClient, Retrieval],
) -> None:
    client, servicer = served
    chunks = await client.search("other", "q", query_embedding=[0.1, 0.2], query_embedding_model="mini")
    assert [c.document for c in chunks] == ["collections/other/documents/d"]
    assert [len(r.query_embedding) for r in servicer.requests] == [2, 0]
    await client.search("other", "q", query_embedding=[0.1, 0.2], query_embedding_model="mini")
    assert [len(r.query_embedding) for r in servicer.requests] == [2, 0, 0]


async def test_other_refusals_are_raised_as_they_came(served: tuple[RetrievalClient, Retrieval]) -> None:
    client, servicer = served
    with pytest.raises(NotFound):
        await client.search("missing", "q", query_embedding=[0.1], query_embedding_model="mini")
    assert len(servicer.requests) == 1
