"""``python -m tollway.embedding``: the embedding service."""

from __future__ import annotations

import grpc

from tollway.embedding.config import EmbeddingConfig
from tollway.embedding.embedder import Embedder
from tollway.embedding.model import ModelRegistry
from tollway.embedding.service import SERVICE_NAME, EmbeddingServicer
from tollway.embedding.store import EmbeddingStore
from tollway.embedding.v1 import embedding_pb2_grpc
from tollway.mesh import redis as mesh_redis
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve


def build(cfg: EmbeddingConfig, mesh: MeshConfig | None = None) -> tuple[ServiceSpec, Embedder]:
    """The embedding service's ServiceSpec (also used by tests to run it in-process).

    Health turns SERVING only after ``on_start`` has loaded every model and Redis answered PING.
    """
    mesh = mesh or load_config(MeshConfig)
    registry = ModelRegistry.from_ids(
        cfg.models,
        cfg.default_model,
        intra_op_threads=cfg.intra_op_threads,
        batch_size=cfg.inference_batch_size,
    )
    client = mesh_redis.connect(mesh.redis_url) if cfg.redis_cache else None
    store = EmbeddingStore(client, ttl_s=cfg.cache_ttl_s, prefix=cfg.redis_key_prefix) if client is not None else None
    embedder = Embedder(
        registry,
        store,
        lru_max_entries=cfg.lru_max_entries,
        max_texts_per_call=cfg.max_texts_per_call,
        max_text_chars=cfg.max_text_chars,
        batching=cfg.batching,
        batch_max_texts=cfg.batch_max_texts,
        batch_max_wait_s=cfg.batch_max_wait_ms / 1000,
    )

    def add(server: grpc.aio.Server) -> None:
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(embedder), server)

    async def start() -> None:
        if client is not None:
            await mesh_redis.wait_ready(client)
        await embedder.start()

    async def stop() -> None:
        await embedder.aclose()
        if client is not None:
            await client.aclose()

    spec = ServiceSpec(
        name="embedding",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, embedder


def main() -> None:
    spec, _ = build(load_config(EmbeddingConfig, "embedding"))
    run(serve(spec))


if __name__ == "__main__":
    main()
