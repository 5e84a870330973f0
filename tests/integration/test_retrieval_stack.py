"""The retrieval service as `tollway up` starts it (its own process, addresses from mesh.yaml's
`calls`): a grounded document reaches search, and a cache entry grounded in it is removed
when it changes, through the stack's own cache service."""

from __future__ import annotations

from tests.support.polling import eventually
from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.common.v1 import common_pb2
from tollway.launcher.stack import Stack
from tollway.mesh import clients
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc


async def test_ingest_search_and_invalidation_in_the_stack(stack: Stack) -> None:
    async with clients.channel(stack.address("retrieval")) as rch, clients.channel(stack.address("cache")) as cch:
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(rch)
        cache = cache_pb2_grpc.CacheServiceStub(cch)
        await retrieval.CreateCollection(pb.CreateCollectionRequest(collection_id="stack-kb"))
        upsert = pb.UpsertDocumentRequest(
            parent="collections/stack-kb",
            document_id="refunds",
            document=pb.Document(title="Refunds", text="Refunds are paid within 14 days of the return."),
        )
        op = (await retrieval.UpsertDocument(upsert)).operation

        async def done(name: str = op.name) -> bool:
            got = (await retrieval.GetOperation(pb.GetOperationRequest(name=name))).operation
            return got.done and got.metadata.state == pb.OPERATION_STATE_SUCCEEDED

        await eventually(done, timeout_s=60, what="the document indexed")

        async def found() -> list[pb.SearchResult]:
            reply = await retrieval.Search(pb.SearchRequest(collection="collections/stack-kb", query="refund days"))
            return list(reply.results)

        results = await eventually(found, what="the chunk searchable")
        name = results[0].document
        assert name == "collections/stack-kb/documents/refunds"
        fingerprint = cache_pb2.RequestFingerprint(
            model="fake-ok", messages=[common_pb2.Message(role="user", content="How fast are refunds?")]
        )
        stored = await cache.Store(
            cache_pb2.StoreRequest(tenant_id="acme", fingerprint=fingerprint, text="14 days.", document_ids=[name])
        )
        assert stored.stored
        upsert.document.text = "Refunds are paid within 30 days of the return."
        op = (await retrieval.UpsertDocument(upsert)).operation
        await eventually(lambda: done(op.name), timeout_s=60, what="the new content indexed")

        async def invalidated() -> bool:
            reply = await cache.Lookup(cache_pb2.LookupRequest(tenant_id="acme", fingerprint=fingerprint))
            return reply.tier == common_pb2.CACHE_TIER_MISS

        await eventually(invalidated, what="the grounded cache entry removed")
