"""The retrieval service's calls to other services, through their generated stubs only:
EmbeddingService (chunks and queries) and CacheService (invalidation of grounded answers).

Each client opens its channel on first use: a grpc.aio channel belongs to the event loop it
was made on, and the service is built before ``serve()`` starts its loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from tollway.mesh import clients, propagation, telemetry
from tollway.mesh.errors import Unavailable, from_rpc_error
from tollway.retrieval.ingest import DOCUMENT, InputType

# EmbeddingService accepts at most this many texts per call (its default limit).
_MAX_TEXTS = 256
_INPUT_TYPES = {"query": embedding_pb2.INPUT_TYPE_QUERY, "document": embedding_pb2.INPUT_TYPE_DOCUMENT}


class EmbeddingClient:
    """Embeds texts through EmbeddingService; implements ``ingest.Embedder`` and ``ModelCatalog``."""

    def __init__(self, target: str, *, timeout_s: float = 60.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: embedding_pb2_grpc.EmbeddingServiceStub | None = None

    @property
    def stub(self) -> embedding_pb2_grpc.EmbeddingServiceStub:
        if self._stub is None:
            self._channel = clients.channel(
                self.target,
                idempotent_services=["tollway.embedding.v1.EmbeddingService"],
                tracer_provider=telemetry.current_provider(),
            )
            self._stub = embedding_pb2_grpc.EmbeddingServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Closes the channel; safe before first use and more than once."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def embed(self, texts: Sequence[str], model: str, input_type: InputType = DOCUMENT) -> np.ndarray:
        """Unit vectors of ``texts`` (float32, one row each), embedded as queries or documents.

        Raises:
            TollwayError: The embedding service's error, rebuilt (UNAVAILABLE when unreachable).
        """
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), _MAX_TEXTS):
            try:
                reply = await self.stub.Embed(
                    embedding_pb2.EmbedRequest(
                        texts=list(texts[start : start + _MAX_TEXTS]), model=model, input_type=_INPUT_TYPES[input_type]
                    ),
                    timeout=self.timeout_s,
                    metadata=propagation.outgoing(),
                )
            except grpc.aio.AioRpcError as err:
                raise _embedding_error(err) from None
            rows += [np.asarray(e.values, np.float32) for e in reply.embeddings]
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    async def models(self) -> tuple[Mapping[str, int], str]:
        """(dimension by served model id, the default model id)."""
        try:
            reply = await self.stub.ListModels(embedding_pb2.ListModelsRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as err:
            raise _embedding_error(err) from None
        return {m.id: m.dimension for m in reply.models}, reply.default_model


def _embedding_error(err: grpc.aio.AioRpcError) -> Exception:
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Unavailable(
            f"the embedding service did not answer ({err.code().name}: {err.details()}); retry shortly",
            retry_after_s=1.0,
            reason="EMBEDDING_UNAVAILABLE",
            metadata={"dependency": "embedding"},
        )
    return from_rpc_error(err)


class CacheInvalidator:
    """Tells CacheService to drop entries grounded in documents; implements ``ingest.Invalidator``."""

    def __init__(self, target: str, *, timeout_s: float = 5.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: cache_pb2_grpc.CacheServiceStub | None = None

    @property
    def stub(self) -> cache_pb2_grpc.CacheServiceStub:
        if self._stub is None:
            self._channel = clients.channel(self.target, tracer_provider=telemetry.current_provider())
            self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Closes the channel; safe before first use and more than once."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def invalidate(self, document_names: Sequence[str]) -> None:
        """Removes every cache entry grounded in any of ``document_names`` (idempotent)."""
        try:
            await self.stub.Invalidate(
                cache_pb2.InvalidateRequest(document_ids=list(document_names)),
                timeout=self.timeout_s,
                metadata=propagation.outgoing(),
            )
        except grpc.aio.AioRpcError as err:
            raise Unavailable(
                f"the cache service could not invalidate {len(document_names)} document(s) "
                f"({err.code().name}: {err.details()})",
                retry_after_s=1.0,
                reason="CACHE_UNAVAILABLE",
                metadata={"dependency": "cache"},
            ) from None
