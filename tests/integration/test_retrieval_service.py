"""The retrieval service over real gRPC (two replicas on port 0), a real redis-server, the real
embedding service (the MiniLM model) and the real cache service.

The crash test runs a third replica as its own process and kills it with SIGKILL while it
waits for an embedding, then checks that another replica finishes the event from the
consumer group's pending list and that nothing was indexed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.polling import eventually
from tests.support.redis_server import LocalRedis, local_redis
from tollway.cache.__main__ import build as build_cache
from tollway.cache.config import CacheConfig
from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.cli import main as cli_main
from tollway.common.v1 import common_pb2
from tollway.embedding.__main__ import build as build_embedding
from tollway.embedding.config import EmbeddingConfig
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.launcher.processes import free_port
from tollway.mesh.clients import channel
from tollway.mesh.config import MeshConfig
from tollway.mesh.errors import Unavailable
from tollway.mesh.server import create_server
from tollway.retrieval.__main__ import build
from tollway.retrieval.clients import EmbeddingClient
from tollway.retrieval.config import RetrievalConfig
from tollway.retrieval.ingest import DOCUMENT, InputType
from tollway.retrieval.retrieval import Retrieval
from tollway.retrieval.store import GROUP
from tollway.retrieval.types import Chunking, OpState
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "tw:rt-test"
MODEL = "minilm-l6-v2-int8"
MODEL_128 = "minilm-l6-v2-int8-128"
DOCS = {
    "cats": ("Cats", "Cats are small furry animals. They purr when they are content and sleep most of the day."),
    "stocks": ("Markets", "The stock market fell sharply on Monday after the central bank raised interest rates."),
    "python": ("Python", "Python is a programming language with dynamic typing and a large standard library."),
}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with local_redis() as server:
        yield server


@pytest.fixture(scope="module")
def sync_redis(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


async def _serve(spec: Any) -> tuple[Any, int]:
    server, port, _ = await create_server(spec, "127.0.0.1:0")
    return server, port


@pytest.fixture(scope="module")
async def embedding_port(redis_server: LocalRedis) -> AsyncIterator[int]:
    # Both models the service can load: the migration test moves a collection from one to the other.
    cfg = EmbeddingConfig(port=0, redis_key_prefix="tw:rt-emb", models=(MODEL, MODEL_128))
    spec, _ = build_embedding(cfg, MeshConfig(redis_url=redis_server.url))
    server, port = await _serve(spec)
    yield port
    await server.stop(0)
    await spec.on_stop()


@pytest.fixture(scope="module")
async def cache_port(redis_server: LocalRedis) -> AsyncIterator[int]:
    spec, _ = build_cache(CacheConfig(port=0, key_prefix="tw:rt-cache"), MeshConfig(redis_url=redis_server.url))
    server, port = await _serve(spec)
    yield port
    await server.stop(0)
    await spec.on_stop()


def _config(embedding_port: int, cache_port: int, **overrides: Any) -> RetrievalConfig:
    values: dict[str, Any] = {
        "port": 0,
        "embedding_addr": f"127.0.0.1:{embedding_port}",
        "cache_addr": f"127.0.0.1:{cache_port}",
        "key_prefix": PREFIX,
        "max_document_chars": 5000,
        "claim_idle_ms": 400,
        "backoff_base_ms": 20,
        "max_attempts": 3,
        "follow_block_ms": 200,
    }
    values.update(overrides)
    return RetrievalConfig(**values)


@pytest.fixture(scope="module")
async def replicas(
    redis_server: LocalRedis, embedding_port: int, cache_port: int
) -> AsyncIterator[list[tuple[retrieval_pb2_grpc.RetrievalServiceStub, Retrieval, int]]]:
    out, servers, channels = [], [], []
    for _ in range(2):
        spec, retrieval = build(_config(embedding_port, cache_port), MeshConfig(redis_url=redis_server.url))
        server, port = await _serve(spec)
        servers.append((server, spec))
        ch = channel(f"127.0.0.1:{port}")
        channels.append(ch)
        out.append((retrieval_pb2_grpc.RetrievalServiceStub(ch), retrieval, port))
    yield out
    for ch in channels:
        await ch.close()
    for server, spec in servers:
        await server.stop(0)
        await spec.on_stop()


@pytest.fixture
def a(replicas: list[Any]) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return replicas[0][0]


@pytest.fixture
def b(replicas: list[Any]) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return replicas[1][0]


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations = [(v.field, v.description) for v in br.field_violations]
    return info, violations


async def create(stub: Any, cid: str, **collection: Any) -> pb.Collection:
    reply = await stub.CreateCollection(
        pb.CreateCollectionRequest(collection_id=cid, collection=pb.Collection(**collection))
    )
    return reply.collection


async def upsert(stub: Any, cid: str, did: str, text: str, title: str = "", **metadata: Any) -> pb.Operation:
    doc = pb.Document(text=text, title=title)
    doc.metadata.update(metadata)
    reply = await stub.UpsertDocument(
        pb.UpsertDocumentRequest(parent=f"collections/{cid}", document_id=did, document=doc)
    )
    return reply.operation


async def finished(stub: Any, op: pb.Operation, timeout_s: float = 60.0) -> pb.Operation:
    async def done() -> pb.Operation | None:
        got = (await stub.GetOperation(pb.GetOperationRequest(name=op.name))).operation
        return got if got.done else None

    return await eventually(done, timeout_s=timeout_s, interval_s=0.05, what=f"{op.name} finished")


async def search(stub: Any, cid: str, query: str, **kw: Any) -> list[str]:
    reply = await stub.Search(pb.SearchRequest(collection=f"collections/{cid}", query=query, **kw))
    return [r.document.rsplit("/", 1)[1] for r in reply.results]


async def test_ingest_search_on_either_replica_and_idempotent_upserts(a: Any, b: Any) -> None:
    await create(a, "animals")
    ops = [await upsert(a, "animals", did, text, title) for did, (title, text) in DOCS.items()]
    for op in ops:
        done = await finished(a, op)
        assert done.metadata.state == pb.OPERATION_STATE_SUCCEEDED
        assert done.response.state == pb.DOCUMENT_STATE_INDEXED and done.response.chunk_count == 1
    for stub in (a, b):  # b never saw the upserts: it follows the index event stream
        await eventually(lambda stub=stub: search(stub, "animals", "kitten purring"), what="b has the chunks")
        assert (await search(stub, "animals", "a pet that purrs", mode=pb.SEARCH_MODE_VECTOR))[0] == "cats"
        assert (await search(stub, "animals", "stock market", mode=pb.SEARCH_MODE_KEYWORD)) == ["stocks"]
        assert (await search(stub, "animals", "which language has dynamic typing?"))[0] == "python"
    again = await upsert(b, "animals", "cats", DOCS["cats"][1], DOCS["cats"][0])
    assert again.done and again.metadata.unchanged and again.response.state == pb.DOCUMENT_STATE_INDEXED
    col = (await a.GetCollection(pb.GetCollectionRequest(name="collections/animals"))).collection
    assert (col.document_count, col.chunk_count, col.embedding_model, col.dimension) == (3, 3, MODEL, 384)
    first = await a.ListDocuments(pb.ListDocumentsRequest(parent="collections/animals", page_size=2))
    second = await a.ListDocuments(
        pb.ListDocumentsRequest(parent="collections/animals", page_size=2, page_token=first.next_page_token)
    )
    assert [d.name.rsplit("/", 1)[1] for d in [*first.documents, *second.documents]] == ["cats", "python", "stocks"]
    assert second.next_page_token == "" and first.documents[0].text == ""


async def test_update_and_delete_reindex_and_invalidate_grounded_cache_entries(a: Any, b: Any, cache_port: int) -> None:
    await create(a, "handbook")
    await finished(a, await upsert(a, "handbook", "leave", "Employees get 20 days of paid leave a year."))
    name = "collections/handbook/documents/leave"
    async with channel(f"127.0.0.1:{cache_port}") as ch:
        cache = cache_pb2_grpc.CacheServiceStub(ch)
        fingerprint = cache_pb2.RequestFingerprint(
            model="m", messages=[common_pb2.Message(role="user", content="How many leave days?")]
        )
        stored = await cache.Store(
            cache_pb2.StoreRequest(tenant_id="t", fingerprint=fingerprint, text="20 days.", document_ids=[name])
        )
        assert stored.stored

        async def cached() -> bool:
            reply = await cache.Lookup(cache_pb2.LookupRequest(tenant_id="t", fingerprint=fingerprint))
            return reply.tier == common_pb2.CACHE_TIER_EXACT

        assert await cached()
        op = await finished(b, await upsert(b, "handbook", "leave", "Employees get 25 days of annual holiday."))
        assert op.metadata.state == pb.OPERATION_STATE_SUCCEEDED
        assert not await cached()  # the grounded answer is gone with the old content
    for stub in (a, b):

        async def only_new(stub: Any = stub) -> bool:
            reply = await stub.Search(pb.SearchRequest(collection="collections/handbook", query="holiday days"))
            return len(reply.results) == 1 and "25 days" in reply.results[0].text

        await eventually(only_new, what="the old chunk left and the new one arrived")
    removed = await a.DeleteDocument(pb.DeleteDocumentRequest(name=name))
    assert removed.removed_chunk_count == 1
    for stub in (a, b):
        await eventually(lambda stub=stub: _empty(stub, "handbook"), what="the deleted document left every replica")
    col = (await b.GetCollection(pb.GetCollectionRequest(name="collections/handbook"))).collection
    assert (col.document_count, col.chunk_count) == (0, 0)


async def _empty(stub: Any, cid: str) -> bool:
    return not await search(stub, cid, "leave days holiday")


async def _code(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value


async def test_bad_input_is_refused_and_changes_nothing(a: Any) -> None:
    await create(a, "strict", filterable_fields=[pb.FieldSchema(name="lang", type=pb.FIELD_TYPE_STRING)])
    await finished(a, await upsert(a, "strict", "one", "Some text about gardens.", lang="en"))
    before = (await a.GetCollection(pb.GetCollectionRequest(name="collections/strict"))).collection

    for call in (
        a.Search(pb.SearchRequest(collection="collections/nope", query="x")),
        a.UpsertDocument(
            pb.UpsertDocumentRequest(parent="collections/nope", document_id="d", document=pb.Document(text="x"))
        ),
        a.GetCollection(pb.GetCollectionRequest(name="collections/nope")),
        a.ListDocuments(pb.ListDocumentsRequest(parent="collections/nope")),
        a.GetDocument(pb.GetDocumentRequest(name="collections/strict/documents/nope")),
    ):
        err = await _code(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    err = await _code(upsert(a, "strict", "empty", "   "))
    info, violations = details(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "EMPTY_DOCUMENT" and info.metadata["limit_chars"] == "5000"
    assert violations[0][0] == "document.text"

    err = await _code(upsert(a, "strict", "big", "word " * 1001))
    info, violations = details(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "DOCUMENT_TOO_LARGE"
    assert "5000" in err.details() and info.metadata["limit_chars"] == "5000"

    err = await _code(upsert(a, "strict", "typed", "Text.", lang=3))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[1][0][0] == "document.metadata.lang"

    flt = pb.MetadataFilter(field="colour", operator=pb.FILTER_OPERATOR_EQUAL)
    flt.value.string_value = "red"
    err = await _code(a.Search(pb.SearchRequest(collection="collections/strict", query="gardens", filters=[flt])))
    info, violations = details(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations[0][0] == "filters[0].field" and "lang" in violations[0][1]

    err = await _code(a.Search(pb.SearchRequest(collection="collections/strict", query="x", top_k=101)))
    assert details(err)[1][0][0] == "top_k"

    err = await _code(
        a.Search(pb.SearchRequest(collection="collections/strict", query="gardens", keyword_bigram_weight=1.5))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)[1][0] == ("keyword_bigram_weight", "must be 0 to 1")

    after = (await a.GetCollection(pb.GetCollectionRequest(name="collections/strict"))).collection
    assert (after.document_count, after.chunk_count) == (before.document_count, before.chunk_count) == (1, 1)


async def test_filters_and_hierarchical_parents(a: Any) -> None:
    await create(
        a,
        "manuals",
        chunking=pb.ChunkingConfig(strategy=pb.CHUNKING_STRATEGY_HIERARCHICAL, max_tokens=24, parent_max_tokens=120),
        filterable_fields=[
            pb.FieldSchema(name="product", type=pb.FIELD_TYPE_STRING),
            pb.FieldSchema(name="year", type=pb.FIELD_TYPE_NUMBER),
        ],
    )
    text = (
        "# Setup\nPlug the kettle in. Fill it with water up to the line. Press the switch once.\n\n"
        "# Cleaning\nDescale the kettle monthly with vinegar. Rinse it twice before using it again."
    )
    await finished(a, await upsert(a, "manuals", "kettle", text, "Kettle", product="kettle", year=2021))
    await finished(a, await upsert(a, "manuals", "toaster", "Clean the toaster crumb tray monthly.", product="toaster",
                                   year=2019))  # fmt: skip
    flt = pb.MetadataFilter(field="year", operator=pb.FILTER_OPERATOR_GREATER_THAN_OR_EQUAL)
    flt.value.number_value = 2020

    async def results() -> Sequence[pb.SearchResult]:
        reply = await a.Search(
            pb.SearchRequest(collection="collections/manuals", query="how to clean it monthly", filters=[flt])
        )
        return reply.results

    found = await eventually(results, what="the manuals are searchable")
    assert {r.document for r in found} == {"collections/manuals/documents/kettle"}
    best = found[0]
    assert "Descale" in best.text and best.parent_text.startswith("# Cleaning") and best.text in best.parent_text
    assert best.metadata["product"] == "kettle" and best.title == "Kettle"


class FlakyEmbedder:
    """The real embedding service, failing the first ``failures`` calls (or all of them)."""

    def __init__(self, real: EmbeddingClient, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.calls = 0

    async def embed(self, texts: Sequence[str], model: str, input_type: InputType = DOCUMENT) -> np.ndarray:
        self.calls += 1
        if self.failures < 0 or self.calls <= self.failures:
            raise Unavailable("embedding service down (test)", reason="EMBEDDING_UNAVAILABLE")
        return await self.real.embed(texts, model, input_type)

    async def models(self) -> tuple[dict[str, int], str]:
        return {MODEL: 384}, MODEL


async def test_failed_tries_are_retried_with_backoff_then_dead_lettered(
    redis_server: LocalRedis, embedding_port: int, sync_redis: redis.Redis
) -> None:
    real = EmbeddingClient(f"127.0.0.1:{embedding_port}")
    try:
        for failures, prefix in ((1, "tw:rt-flaky"), (-1, "tw:rt-broken")):
            embedder = FlakyEmbedder(real, failures)
            spec, _ = build(
                _config(embedding_port, 0, key_prefix=prefix, cache_addr=""),
                MeshConfig(redis_url=redis_server.url),
                embedder=embedder,
                catalog=embedder,
            )
            server, port = await _serve(spec)
            try:
                async with channel(f"127.0.0.1:{port}") as rch:
                    stub = retrieval_pb2_grpc.RetrievalServiceStub(rch)
                    await create(stub, "c")
                    op = await finished(stub, await upsert(stub, "c", "d", "Some text to index."))
                    doc = (await stub.GetDocument(pb.GetDocumentRequest(name="collections/c/documents/d"))).document
                    if failures == 1:
                        assert op.metadata.state == pb.OPERATION_STATE_SUCCEEDED and op.metadata.attempt_count == 2
                        assert doc.state == pb.DOCUMENT_STATE_INDEXED
                        assert sync_redis.xlen(f"{prefix}:dead") == 0
                    else:
                        assert op.metadata.state == pb.OPERATION_STATE_FAILED and op.metadata.attempt_count == 3
                        assert op.error.reason == "EMBEDDING_UNAVAILABLE"
                        assert doc.state == pb.DOCUMENT_STATE_FAILED and embedder.calls == 3
                        dead = sync_redis.xrange(f"{prefix}:dead")
                        assert len(dead) == 1 and dead[0][1][b"d"] == b"d" and dead[0][1][b"try"] == b"3"
                    assert sync_redis.xpending(f"{prefix}:ingest", GROUP)["pending"] == 0
            finally:
                await server.stop(0)
                await spec.on_stop()
    finally:
        await real.close()


class BlockingEmbedding(embedding_pb2_grpc.EmbeddingServiceServicer):
    """An embedding service that never answers Embed: the worker calling it waits forever."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def Embed(self, request: Any, context: Any) -> Any:
        self.called.set()
        await asyncio.sleep(3600)

    async def ListModels(self, request: Any, context: Any) -> Any:
        return embedding_pb2.ListModelsResponse(
            models=[embedding_pb2.Model(id=MODEL, dimension=384, max_tokens=256)], default_model=MODEL
        )


async def test_a_worker_killed_mid_batch_loses_no_event_and_indexes_nothing_twice(
    redis_server: LocalRedis, embedding_port: int, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    prefix = "tw:rt-kill"
    blocking = BlockingEmbedding()
    fake = grpc.aio.server()
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(blocking, fake)
    fake_port = fake.add_insecure_port("127.0.0.1:0")
    await fake.start()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")},
        "TOLLWAY_REDIS_URL": redis_server.url,
        "TOLLWAY_LOG_LEVEL": "WARNING",
        "TOLLWAY_RETRIEVAL_PORT": str(port),
        "TOLLWAY_RETRIEVAL_KEY_PREFIX": prefix,
        "TOLLWAY_RETRIEVAL_EMBEDDING_ADDR": f"127.0.0.1:{fake_port}",
        "TOLLWAY_RETRIEVAL_WORKERS": "1",
    }
    log = (tmp_path / "victim.log").open("wb")
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollway.retrieval", env=env, cwd=ROOT, stderr=log, stdout=log
    )
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
            await channel_ready(ch)
            await create(stub, "c")
            op = await upsert(stub, "c", "d", "A document whose worker dies while embedding it. " * 20)
            await asyncio.wait_for(blocking.called.wait(), 30)
            victim.send_signal(signal.SIGKILL)
            await asyncio.wait_for(victim.wait(), 10)
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        await fake.stop(0)
    pending = sync_redis.xpending(f"{prefix}:ingest", GROUP)
    assert pending["pending"] == 1  # the event is not lost: it waits in the pending list

    spec, _ = build(
        _config(embedding_port, 0, key_prefix=prefix, cache_addr=""), MeshConfig(redis_url=redis_server.url)
    )
    server, rport = await _serve(spec)
    try:
        async with channel(f"127.0.0.1:{rport}") as ch:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
            done = await finished(stub, op)
            assert done.metadata.state == pb.OPERATION_STATE_SUCCEEDED
            chunks = done.response.chunk_count
            assert chunks >= 1
            col = (await stub.GetCollection(pb.GetCollectionRequest(name="collections/c"))).collection
            assert col.chunk_count == chunks
            events = [f for _, f in sync_redis.xrange(f"{prefix}:events") if f[b"d"] == b"d"]
            assert len(events) == 1  # committed once
            assert len(set(sync_redis.scan_iter(f"{prefix}:u:*:k:*"))) == chunks
            assert sync_redis.xpending(f"{prefix}:ingest", GROUP)["pending"] == 0
    finally:
        await server.stop(0)
        await spec.on_stop()


async def channel_ready(ch: grpc.aio.Channel) -> None:
    await asyncio.wait_for(ch.channel_ready(), 30)


async def test_redelivery_after_a_commit_that_was_not_acknowledged_is_a_no_op(
    redis_server: LocalRedis, embedding_port: int, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "tw:rt-twice"
    # Not started: no worker of its own competes for the event; this test plays the workers.
    spec, retrieval = build(_config(embedding_port, 0, key_prefix=prefix, cache_addr=""),
                            MeshConfig(redis_url=redis_server.url))  # fmt: skip
    store = retrieval.store
    try:
        await store.ensure_group()
        await retrieval.create_collection("twice", embedding_model="", chunking=Chunking(), fields={})
        op = await retrieval.upsert("collections/twice", "d", text="Text committed, its event never acknowledged.")
        events = await store.read_new("victim", 10, 100)
        assert len(events) == 1

        async def lost_ack(event: Any) -> None:
            raise ConnectionError("the worker died before acknowledging")

        monkeypatch.setattr(store, "ack", lost_ack)
        with pytest.raises(ConnectionError):
            await retrieval.ingestor.handle(events[0])
        monkeypatch.undo()
        assert sync_redis.xpending(f"{prefix}:ingest", GROUP)["pending"] == 1
        await asyncio.sleep(0.5)  # past the idle time: the event counts as abandoned
        reclaimed = await store.reclaim("rescuer", 400, 10)
        assert [(e.stream_id, n) for e, n in reclaimed] == [(events[0].stream_id, 2)]
        assert await retrieval.ingestor.handle(reclaimed[0][0], deliveries=2) == "unchanged"
        done = await retrieval.get_operation(op.name)
        assert done.state is OpState.SUCCEEDED and done.chunk_count == 1
        assert len(sync_redis.xrange(f"{prefix}:events")) == 1  # committed once
        assert sync_redis.xpending(f"{prefix}:ingest", GROUP)["pending"] == 0
    finally:
        await spec.on_stop()


async def test_a_restarted_replica_loads_its_snapshot(
    replicas: list[Any], redis_server: LocalRedis, embedding_port: int, tmp_path: Path
) -> None:
    stub, retrieval, _ = replicas[0]
    await create(stub, "snap")
    await finished(stub, await upsert(stub, "snap", "d", "Snapshots keep the index across restarts."))
    await eventually(lambda: retrieval.sync.get("snap", retrieval.sync.entries["snap"].uid)
                     if "snap" in retrieval.sync.entries else None, what="indexed locally")  # fmt: skip
    retrieval.sync.snapshot_dir = tmp_path
    try:
        await retrieval.sync.snapshot()
    finally:
        retrieval.sync.snapshot_dir = None
    cfg = _config(embedding_port, 0, cache_addr="", snapshot_dir=str(tmp_path))
    spec, fresh = build(cfg, MeshConfig(redis_url=redis_server.url))
    await fresh.sync.start()
    assert fresh.sync.report is not None and fresh.sync.report.source == "snapshot"
    assert sorted(fresh.sync.entries) == sorted(retrieval.sync.entries)
    for cid, entry in retrieval.sync.entries.items():
        assert sorted(fresh.sync.entries[cid].index.row_of) == sorted(entry.index.row_of)
    await spec.on_stop()


async def test_tollway_ingest_reports_and_skips_malformed_files(replicas: list[Any], tmp_path: Path) -> None:
    stub, _, port = replicas[0]
    root = tmp_path / "kb"
    (root / "guides").mkdir(parents=True)
    (root / "guides" / "setup.md").write_text("# Setup\n\nInstall the widget with the blue cable.\n")
    (root / "faq.html").write_text(
        "<html><head><title>FAQ</title><script>var x = 1;</script></head><body><h1>Questions</h1>"
        "<p>The widget runs on solar power.</p><pre>widget --start</pre></body></html>"
    )
    (root / "notes.txt").write_text("Plain notes about widget maintenance.")
    (root / "broken.txt").write_bytes(b"caf\xe9 latin-1, not UTF-8")
    (root / "empty.md").write_text("   \n")
    (root / "ignored.pdf").write_bytes(b"%PDF")
    out = tmp_path / "out.txt"

    def run() -> int:
        with out.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            return cli_main(["ingest", str(root), "--collection", "kb", "--target", f"127.0.0.1:{port}"])

    assert await asyncio.to_thread(run) == 1  # some files failed
    text = out.read_text()
    assert "ingested 3 of 5 files into collections/kb (3 indexed, 0 unchanged)" in text
    assert "skipped broken.txt: not UTF-8" in text and "skipped empty.md: no text" in text
    docs = (await stub.ListDocuments(pb.ListDocumentsRequest(parent="collections/kb"))).documents
    assert sorted(d.name.rsplit("/", 1)[1] for d in docs) == ["faq.html", "guides:setup.md", "notes.txt"]
    faq = (await stub.GetDocument(pb.GetDocumentRequest(name="collections/kb/documents/faq.html"))).document
    assert faq.title == "FAQ" and "# Questions" in faq.text and "```\nwidget --start\n```" in faq.text
    assert "var x" not in faq.text and faq.metadata["format"] == "html"
    assert (await search(stub, "kb", "what powers the widget"))[0] == "faq.html"
    assert await asyncio.to_thread(run) == 1
    assert "(0 indexed, 3 unchanged)" in out.read_text()


async def test_embedding_model_migration_backfills_then_switches_atomically(
    replicas: list[Any], embedding_port: int, sync_redis: redis.Redis
) -> None:
    a, b = replicas[0][0], replicas[1][0]
    await create(a, "migrating", chunking=pb.ChunkingConfig(max_tokens=400))
    # Long texts (> 128 tokens): the two models give different vectors for them.
    long_text = {
        f"d{i}": " ".join(f"Sentence {j} about topic {i}: tides, winds and the moon pull the sea." for j in range(14))
        for i in range(3)
    }
    for did, text in long_text.items():
        await finished(a, await upsert(a, "migrating", did, text))
    col = (await a.GetCollection(pb.GetCollectionRequest(name="collections/migrating"))).collection
    assert col.embedding_model == MODEL and not col.HasField("migration")

    err = await _code(a.MigrateCollection(pb.MigrateCollectionRequest(name="collections/migrating",
                                                                       embedding_model=MODEL)))  # fmt: skip
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await _code(a.MigrateCollection(pb.MigrateCollectionRequest(name="collections/migrating",
                                                                       embedding_model="nope")))  # fmt: skip
    assert err.code() == grpc.StatusCode.NOT_FOUND

    started = await a.MigrateCollection(
        pb.MigrateCollectionRequest(name="collections/migrating", embedding_model=MODEL_128)
    )
    assert started.collection.migration.target_model == MODEL_128
    assert started.collection.migration.chunk_count == col.chunk_count
    # A document upserted during the migration gets vectors of both models.
    await finished(b, await upsert(b, "migrating", "late", "A late document about the tides and the moon."))

    async def switched() -> pb.Collection | None:
        c = (await b.GetCollection(pb.GetCollectionRequest(name="collections/migrating"))).collection
        return c if c.embedding_model == MODEL_128 and not c.HasField("migration") else None

    done = await eventually(switched, timeout_s=60, what="the back-fill and the switch")
    assert done.chunk_count == col.chunk_count + 1
    uid = sync_redis.hget(f"{PREFIX}:c:migrating", "uid").decode()
    keys = list(sync_redis.scan_iter(f"{PREFIX}:u:{uid}:k:*"))
    assert len(keys) == done.chunk_count
    assert all(sync_redis.hexists(k, f"v:{MODEL_128}") for k in keys)

    async def old_vectors_dropped() -> bool:
        return all(not sync_redis.hexists(k, f"v:{MODEL}") for k in keys)

    await eventually(old_vectors_dropped, what="the old model's vectors deleted")
    async with channel(f"127.0.0.1:{embedding_port}") as ch:
        emb = embedding_pb2_grpc.EmbeddingServiceStub(ch)
        want = await emb.Embed(embedding_pb2.EmbedRequest(texts=[long_text["d1"]], model=MODEL_128))
        vector = np.asarray(want.embeddings[0].values, np.float32)
    for _, retrieval, _ in replicas:

        async def rebuilt(retrieval: Retrieval = retrieval) -> bool:
            entry = retrieval.sync.entries.get("migrating")
            return entry is not None and entry.collection.embedding_model == MODEL_128

        await eventually(rebuilt, what="every replica swapped in the new index")
        entry = retrieval.sync.entries["migrating"]
        row = next(r for cid, r in entry.index.row_of.items() if cid.startswith("d1:"))
        assert float(entry.index.vectors[row] @ vector) > 0.999  # the new model's vector
    reply = await a.Search(
        pb.SearchRequest(collection="collections/migrating", query="topic 2 tides", mode=pb.SEARCH_MODE_VECTOR)
    )
    assert reply.embedding_model == MODEL_128 and len(reply.results) == 4
