"""``python -m tollway.retrieval``: the retrieval service."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from tollway.mesh import redis as mesh_redis
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.retrieval.clients import CacheInvalidator, EmbeddingClient
from tollway.retrieval.config import RetrievalConfig
from tollway.retrieval.index import IndexParams
from tollway.retrieval.ingest import Embedder, IngestSettings, wall_clock_ms
from tollway.retrieval.retrieval import Limits, ModelCatalog, Retrieval
from tollway.retrieval.search import Searcher, Tuning
from tollway.retrieval.service import SERVICE_NAME, RetrievalServicer
from tollway.retrieval.store import RetrievalStore
from tollway.retrieval.sync import IndexSync
from tollway.retrieval.v1 import retrieval_pb2_grpc

log = logging.getLogger("tollway.retrieval")


def build(
    cfg: RetrievalConfig,
    mesh: MeshConfig | None = None,
    *,
    embedder: Embedder | None = None,
    catalog: ModelCatalog | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    consumer_prefix: str | None = None,
) -> tuple[ServiceSpec, Retrieval]:
    """The retrieval service's ServiceSpec and domain object (tests and benches run it in-process).

    Health turns SERVING only after ``on_start``: Redis answered and every index is built.
    ``embedder`` and ``catalog`` replace the embedding service (tests inject failing ones).
    """
    mesh = mesh or load_config(MeshConfig)
    client = mesh_redis.connect(mesh.redis_url)
    store = RetrievalStore(client, prefix=cfg.key_prefix, events_maxlen=cfg.events_maxlen)
    params = IndexParams(
        m=cfg.hnsw_m,
        ef_construction=cfg.hnsw_ef_construction,
        ef_search=cfg.hnsw_ef_search,
        exact_below=cfg.exact_below,
        bm25_k1=cfg.bm25_k1,
        bm25_b=cfg.bm25_b,
        bigrams=cfg.bm25_bigrams,
    )
    sync = IndexSync(store, params, snapshot_dir=cfg.snapshot_dir or None, follow_block_ms=cfg.follow_block_ms)
    embedding_client = EmbeddingClient(cfg.embedding_addr, timeout_s=cfg.embed_timeout_s)
    invalidator = CacheInvalidator(cfg.cache_addr) if cfg.cache_addr else None
    retrieval = Retrieval(
        store,
        sync,
        embedder or embedding_client,
        catalog or embedding_client,
        invalidator=invalidator,
        ingest=IngestSettings(
            embed_batch=cfg.embed_batch,
            claim_idle_ms=cfg.claim_idle_ms,
            max_attempts=cfg.max_attempts,
            backoff_base_ms=cfg.backoff_base_ms,
            backoff_max_ms=cfg.backoff_max_ms,
        ),
        limits=Limits(
            max_document_chars=cfg.max_document_chars,
            default_keyword_weight=cfg.keyword_weight,
            default_ensemble_keyword_weight=cfg.ensemble_keyword_weight,
            default_fusion=cfg.fusion,
            default_feedback_count=cfg.feedback_count,
            default_bigram_weight=cfg.bm25_bigram_weight,
            default_ensemble_weight=cfg.ensemble_weight,
        ),
        searcher=Searcher(Tuning(candidates=cfg.candidates)),
        workers=cfg.workers,
        snapshot_interval_s=cfg.snapshot_interval_s,
        consumer_prefix=consumer_prefix,
        migration_poll_s=cfg.migration_poll_s,
        clock=clock,
    )

    def add(server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(retrieval), server)

    async def start() -> None:
        await mesh_redis.wait_ready(client)
        await retrieval.start()

    async def stop() -> None:
        await retrieval.stop()
        await embedding_client.close()
        if invalidator is not None:
            await invalidator.close()
        await client.aclose()

    spec = ServiceSpec(
        name="retrieval",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, retrieval


def main() -> None:
    spec, _ = build(load_config(RetrievalConfig, "retrieval"))
    run(serve(spec))


if __name__ == "__main__":
    main()
