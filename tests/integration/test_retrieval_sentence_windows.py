"""Sentence-window collections through the retrieval service: a real gRPC server, a real
redis-server and the real embedding service (MiniLM)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from tests.integration.test_retrieval_service import create, details, finished, upsert
from tests.support.polling import eventually
from tests.support.redis_server import LocalRedis, local_redis
from tollway.embedding.__main__ import build as build_embedding
from tollway.embedding.config import EmbeddingConfig
from tollway.mesh.clients import channel
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server
from tollway.retrieval.__main__ import build
from tollway.retrieval.config import RetrievalConfig
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

MODEL = "minilm-l6-v2-int8"
SENTENCES = pb.ChunkingConfig(
    strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, max_tokens=64, parent_max_tokens=512, sentence_window=2
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with local_redis() as server:
        yield server


@pytest.fixture(scope="module")
async def stub(redis_server: LocalRedis) -> AsyncIterator[retrieval_pb2_grpc.RetrievalServiceStub]:
    mesh = MeshConfig(redis_url=redis_server.url)
    espec, _ = build_embedding(EmbeddingConfig(port=0, redis_key_prefix="tw:sw-emb", models=(MODEL,)), mesh)
    eserver, eport, _ = await create_server(espec, "127.0.0.1:0")
    cfg = RetrievalConfig(port=0, embedding_addr=f"127.0.0.1:{eport}", cache_addr="", key_prefix="tw:sw",
                          follow_block_ms=200)  # fmt: skip
    spec, _ = build(cfg, mesh)
    server, port, _ = await create_server(spec, "127.0.0.1:0")
    async with channel(f"127.0.0.1:{port}") as ch:
        yield retrieval_pb2_grpc.RetrievalServiceStub(ch)
    await server.stop(0)
    await spec.on_stop()
    await eserver.stop(0)
    await espec.on_stop()


async def test_a_bad_sentence_window_is_refused_and_creates_nothing(stub: Any) -> None:
    for chunking, want in (
        (pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, sentence_window=5), "must be 0 to 4"),
        (pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, sentence_window=-1), "must be 0 to 4"),
        (pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_FIXED, sentence_window=2), "unless the strategy is"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(stub, "bad-window", chunking=chunking)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        field, description = details(caught.value)[1][0]
        assert field == "collection.chunking.sentence_window" and want in description
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCollection(pb.GetCollectionRequest(name="collections/bad-window"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_windows_are_searched_and_their_section_is_the_context(stub: Any) -> None:
    col = await create(stub, "guides", chunking=SENTENCES)
    assert col.chunking.sentence_window == 2 and col.chunking.strategy == pb.CHUNKING_STRATEGY_HIERARCHICAL
    kettle = (
        "# Setup\nPlug the kettle in. Fill it with water up to the line. Press the switch once.\n\n"
        "# Cleaning\nDescale the kettle monthly with vinegar. Rinse it twice before using it again."
    )
    await finished(stub, await upsert(stub, "guides", "kettle", kettle, "Kettle"))
    await finished(stub, await upsert(stub, "guides", "bikes", "Oil the bicycle chain monthly. Check the tyres.",
                                      "Bicycle"))  # fmt: skip
    got = (await stub.GetCollection(pb.GetCollectionRequest(name="collections/guides"))).collection
    # Kettle: sections of 3 and 2 sentences -> 5 + 3 windows; bicycle: 2 sentences -> 3 windows.
    assert got.chunk_count == 11

    async def results() -> list[pb.SearchResult] | None:
        reply = await stub.Search(
            pb.SearchRequest(
                collection="collections/guides",
                query="how do I descale with vinegar",
                top_k=5,
                mode=pb.SEARCH_MODE_HYBRID,
            )
        )
        return list(reply.results) or None

    found = await eventually(results, what="the guides are searchable")
    best = found[0]
    assert best.document == "collections/guides/documents/kettle"
    assert "Descale" in best.text and best.text in best.parent_text
    assert best.parent_text.startswith("# Cleaning") and "Plug" not in best.parent_text
    # Every window of one section carries that section's keyword score.
    same_section = [r for r in found if r.parent_text == best.parent_text]
    assert len(same_section) > 1 and len({round(r.keyword_score, 6) for r in same_section}) == 1
    assert best.keyword_score > 0
