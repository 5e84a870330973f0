"""EmbeddingService on a real grpc.aio server (port 0) with a real Redis and the real model."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.conftest import TEST_RUN_DIR
from tests.fakes.procs import free_port
from tollway.embedding.__main__ import build
from tollway.embedding.cache import CachedEmbedding, text_digest
from tollway.embedding.config import EmbeddingConfig
from tollway.embedding.embedder import Embedder
from tollway.embedding.model import DEFAULT_MODEL_ID, EmbeddingModel, ModelRegistry, load_model
from tollway.embedding.service import SERVICE_NAME
from tollway.embedding.store import EmbeddingStore
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.mesh import redis as mesh_redis
from tollway.mesh.clients import channel
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PREFIX = "test:embedding"
LONG_TEXT = " ".join(f"token{i} with filler words" for i in range(200))


@contextlib.contextmanager
def running_redis(port: int) -> Iterator[str]:
    """A private redis-server on a loopback port, in a temp dir, without persistence; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="embedding-redis-", dir=TEST_RUN_DIR or None) as tmp:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen([REDIS_SERVER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # scripts/test.sh kills every PID listed in a `pids` file under its run dir, should pytest die first.
        (Path(tmp) / "pids").write_text(f"{proc.pid}\n")
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis(free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
async def server_port(redis_url: str) -> AsyncIterator[int]:
    cfg = EmbeddingConfig(port=0, max_texts_per_call=16, redis_key_prefix=PREFIX)
    spec, _ = build(cfg, MeshConfig(redis_url=redis_url))
    server, port, _ = await create_server(spec, "127.0.0.1:0")
    yield port
    await server.stop(0)
    assert spec.on_stop is not None
    await spec.on_stop()


@pytest.fixture(scope="module")
async def grpc_channel(server_port: int) -> AsyncIterator[grpc.aio.Channel]:
    ch = channel(f"127.0.0.1:{server_port}")
    yield ch
    await ch.close()


@pytest.fixture(scope="module")
def local_model() -> EmbeddingModel:
    """The same model in-process, to check what the service answers."""
    return load_model()


@pytest.fixture
def stub(grpc_channel: grpc.aio.Channel) -> embedding_pb2_grpc.EmbeddingServiceStub:
    return embedding_pb2_grpc.EmbeddingServiceStub(grpc_channel)


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return info, violations


async def test_health_is_serving_once_started(grpc_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_embed_returns_unit_vectors_with_truncation_flags(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, local_model: EmbeddingModel
) -> None:
    reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=["How do I reset my password?", LONG_TEXT]), timeout=10)
    assert reply.model == DEFAULT_MODEL_ID
    assert reply.dimension == 384
    assert [len(e.values) for e in reply.embeddings] == [384, 384]
    assert [e.truncated for e in reply.embeddings] == [False, True]
    vectors = np.array([e.values for e in reply.embeddings], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    expected = local_model.embed(["How do I reset my password?", LONG_TEXT]).vectors
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


async def test_vectors_are_cached_in_redis_with_a_ttl(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, redis_client: redis.Redis
) -> None:
    text = "a sentence that goes into the shared cache"
    first = await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=10)
    assert first.cache_hit_count == 0
    key = f"{PREFIX}:{DEFAULT_MODEL_ID}:{text_digest(text).hex()}"
    raw = redis_client.get(key)
    assert raw is not None and len(raw) == 384 * 4 + 1
    np.testing.assert_array_equal(np.frombuffer(raw[:-1], dtype="<f4"), np.array(first.embeddings[0].values))
    assert 0 < redis_client.ttl(key) <= EmbeddingConfig.cache_ttl_s
    again = await stub.Embed(embedding_pb2.EmbedRequest(texts=[text, "something new"], model=DEFAULT_MODEL_ID))
    assert again.cache_hit_count == 1
    assert list(again.embeddings[0].values) == list(first.embeddings[0].values)


async def test_entries_written_by_another_replica_are_served_from_redis(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, redis_url: str
) -> None:
    # A vector no model would produce proves that the answer came from Redis.
    text = "written by a peer replica"
    marker = np.zeros(384, dtype=np.float32)
    marker[7] = 1.0
    client = mesh_redis.connect(redis_url)
    try:
        store = EmbeddingStore(client, ttl_s=60, prefix=PREFIX)
        await store.put_many(DEFAULT_MODEL_ID, [(text_digest(text), CachedEmbedding(marker, truncated=True))])
    finally:
        await client.aclose()
    reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=10)
    assert reply.cache_hit_count == 1
    assert reply.embeddings[0].truncated
    np.testing.assert_array_equal(np.array(reply.embeddings[0].values, dtype=np.float32), marker)


async def test_concurrent_calls_are_all_answered_correctly(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, local_model: EmbeddingModel
) -> None:
    texts = [f"concurrent caller {i} asks about refunds" for i in range(24)]
    replies = await asyncio.gather(*(stub.Embed(embedding_pb2.EmbedRequest(texts=[t]), timeout=20) for t in texts))
    expected = local_model.embed(texts).vectors
    got = np.array([r.embeddings[0].values for r in replies], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)


async def test_a_cancelled_call_does_not_disturb_the_others(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    # 16 texts of 256 tokens keep the model busy for a while: long enough to cancel mid-flight.
    slow = stub.Embed(embedding_pb2.EmbedRequest(texts=[f"{i} {LONG_TEXT}" for i in range(16)]), timeout=60)
    others = [stub.Embed(embedding_pb2.EmbedRequest(texts=[f"bystander {i}"]), timeout=60) for i in range(4)]
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    replies = await asyncio.gather(*others)
    assert all(len(r.embeddings[0].values) == 384 for r in replies)
    after = await stub.Embed(embedding_pb2.EmbedRequest(texts=["after the cancellation"]), timeout=10)
    assert after.dimension == 384


@pytest.mark.parametrize(
    ("texts", "reason", "field"),
    [([], "EMPTY_INPUT", "texts"), (["ok", ""], "EMPTY_TEXT", "texts[1]"), (["x"] * 17, "TOO_MANY_TEXTS", "texts")],
)
async def test_bad_input_is_invalid_argument_with_a_field_violation(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, texts: list[str], reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Embed(embedding_pb2.EmbedRequest(texts=texts), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details(err.value)
    assert info.reason == reason
    assert info.domain == "embedding.tollway"
    assert violations[0][0] == field
    if reason == "TOO_MANY_TEXTS":
        assert "16" in err.value.details()
        assert info.metadata["limit"] == "16"


async def test_unknown_model_is_not_found_and_lists_the_known_ones(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Embed(embedding_pb2.EmbedRequest(texts=["hi"], model="text-embedding-3-small"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "text-embedding-3-small" in err.value.details()
    assert DEFAULT_MODEL_ID in err.value.details()
    info, _ = details(err.value)
    assert info.reason == "UNKNOWN_MODEL"
    assert info.metadata["known_models"] == DEFAULT_MODEL_ID


async def test_list_models(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    reply = await stub.ListModels(embedding_pb2.ListModelsRequest(), timeout=10)
    assert reply.default_model == DEFAULT_MODEL_ID
    assert [(m.id, m.dimension, m.max_tokens) for m in reply.models] == [(DEFAULT_MODEL_ID, 384, 256)]
    assert reply.models[0].description


async def test_a_redis_outage_skips_the_cache_but_still_embeds(local_model: EmbeddingModel) -> None:
    # A port nothing listens on: every cache read and write fails fast.
    client = mesh_redis.connect(f"redis://127.0.0.1:{free_port()}/0")
    registry = ModelRegistry([local_model.spec])
    embedder = Embedder(registry, EmbeddingStore(client, ttl_s=60), lru_max_entries=0)
    try:
        await embedder.start()
        out = await embedder.embed(["still answered without Redis"])
        assert out.vectors.shape == (1, 384)
        assert out.cache_hit_count == 0
    finally:
        await embedder.aclose()
        await client.aclose()


async def test_health_turns_serving_only_once_redis_answers() -> None:
    redis_port, grpc_port = free_port(), free_port()
    spec, _ = build(EmbeddingConfig(port=0), MeshConfig(redis_url=f"redis://127.0.0.1:{redis_port}/0"))
    # create_server binds, then waits in on_start for Redis (nothing listens on redis_port yet).
    starting = asyncio.ensure_future(create_server(spec, f"127.0.0.1:{grpc_port}"))
    ch = channel(f"127.0.0.1:{grpc_port}")
    try:
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        for _ in range(100):
            try:
                reply = await health.Check(request, timeout=1)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the health service never answered while the service was starting")
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not starting.done()
        with running_redis(redis_port):
            server, _, _ = await asyncio.wait_for(starting, 30)
            try:
                reply = await health.Check(request, timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            finally:
                await server.stop(0)
                assert spec.on_stop is not None
                await spec.on_stop()
    finally:
        await ch.close()
        if not starting.done():
            starting.cancel()
