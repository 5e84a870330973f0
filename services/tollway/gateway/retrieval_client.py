"""Retrieval for grounded answers: search a collection, fit the best chunks into the prompt.

Two parts, usable separately:

* :class:`RetrievalClient` calls RetrievalService.Search (generated stubs only) and returns
  :class:`RetrievedChunk` values, best first.
* :func:`assemble_context` picks the best chunks that fit ``max_context_tokens`` and orders
  them against "lost in the middle" (models use the start and the end of a long context
  best): the best chunk first, the second best last, the third second, and so on, so the
  weakest sit in the middle. It returns the context text, one :class:`Citation` per chunk
  used (numbered as in the text) and the document names to record on the cache entry, so
  that updating or deleting any of them invalidates the grounded answer.

Wiring into ``Generate`` (gateway/lifecycle.py, owned elsewhere) is described in
docs/benchmarks.md's retrieval section and the retrieval service's README line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from tollway.common.tokens import count_tokens
from tollway.mesh import propagation, tracing
from tollway.mesh.errors import InvalidArgument, Unavailable, from_rpc_error
from tollway.mesh.frozen import frozen
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

# Tokens a chunk's header line ("[n] title (document)") and separators cost, on top of its text.
_FRAMING_TOKENS = 12


@frozen(slots=True)
class RetrievedChunk:
    """One search result as the gateway uses it.

    Attributes:
        document: ``collections/{c}/documents/{d}``; also the id recorded on cache entries.
        chunk_id: The chunk's id (stable while the document is unchanged).
        score: The ranking score (higher is better).
        snippet: Up to 320 characters around the query's words, for citations.
        text: The chunk's text.
        parent_text: The parent section (hierarchical collections), else "".
        title: The document's title.
        metadata: The document's metadata.
    """

    document: str
    chunk_id: str
    score: float
    snippet: str
    text: str
    parent_text: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def context_text(self) -> str:
        """What goes into the prompt: the parent section when there is one."""
        return self.parent_text or self.text


@frozen(slots=True)
class Citation:
    """A source the answer was grounded in, sent to the client before the answer.

    Attributes:
        index: Its number in the context (``[index]``), from 1.
        document: The document's resource name.
        chunk_id: The chunk's id.
        score: Its ranking score.
        snippet: A short excerpt for display.
        title: The document's title.
    """

    index: int
    document: str
    chunk_id: str
    score: float
    snippet: str
    title: str = ""


@frozen
class Context:
    """Retrieved context ready for the prompt.

    Attributes:
        text: The numbered sources, in lost-in-the-middle order ("" when nothing fit).
        citations: One per source in ``text``, by number.
        document_ids: The distinct documents used, best first (record them on the cache entry).
        token_count: Tokens of ``text`` (framing included).
        dropped_count: Results left out because they did not fit or repeated a parent section.
    """

    text: str
    citations: list[Citation]
    document_ids: list[str]
    token_count: int
    dropped_count: int


def lost_in_the_middle_order(items: Sequence[Any]) -> list[Any]:
    """Reorders best-first ``items`` so the best are at both ends: 1, 3, 5, …, 6, 4, 2."""
    front = list(items[0::2])
    back = list(items[1::2])
    return front + back[::-1]


def assemble_context(chunks: Sequence[RetrievedChunk], max_context_tokens: int) -> Context:
    """Fits the best chunks into ``max_context_tokens`` and orders them against lost-in-the-middle.

    Chunks are taken best first; one that does not fit is skipped (a smaller one after it may
    still fit); a chunk whose parent section is already in is skipped. Citations are numbered
    in the order the sources appear in the text.

    Args:
        chunks: Search results, best first.
        max_context_tokens: Token budget of the whole context text (o200k_base tokens).
    """
    chosen: list[tuple[RetrievedChunk, int]] = []
    seen_text: set[str] = set()
    used = 0
    dropped = 0
    for c in chunks:
        body = c.context_text
        if body in seen_text:
            dropped += 1
            continue
        cost = count_tokens(body) + count_tokens(c.title) + _FRAMING_TOKENS
        if used + cost > max_context_tokens:
            dropped += 1
            continue
        chosen.append((c, cost))
        seen_text.add(body)
        used += cost
    ordered = lost_in_the_middle_order([c for c, _ in chosen])
    parts = []
    citations = []
    for i, c in enumerate(ordered, 1):
        header = f"[{i}] {c.title}".rstrip()
        parts.append(f"{header}\n{c.context_text}")
        citations.append(Citation(i, c.document, c.chunk_id, c.score, c.snippet, c.title))
    documents = list(dict.fromkeys(c.document for c, _ in chosen))
    return Context("\n\n".join(parts), citations, documents, used, dropped)


def _filters(filters: Mapping[str, Any]) -> list[pb.MetadataFilter]:
    """Equality filters from a mapping; a list value means "one of" (IN)."""
    out = []
    for field, value in filters.items():
        f = pb.MetadataFilter(field=field)
        if isinstance(value, list | tuple):
            f.operator = pb.FILTER_OPERATOR_IN
            for v in value:
                json_format.ParseDict(v, f.values.add())
        else:
            f.operator = pb.FILTER_OPERATOR_EQUAL
            json_format.ParseDict(value, f.value)
        out.append(f)
    return out


def _names_query_embedding(error: InvalidArgument) -> bool:
    return any(field == "query_embedding" for field, _ in error.violations)


class RetrievalClient:
    """RetrievalService.Search for the gateway."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 2.0) -> None:
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        self.timeout_s = timeout_s
        # Collections whose embedding model is not the caller's (learned from a refusal).
        self._foreign_model: set[str] = set()

    async def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 10,
        filters: Mapping[str, Any] | Sequence[pb.MetadataFilter] = (),
        query_embedding: Sequence[float] = (),
        query_embedding_model: str = "",
    ) -> list[RetrievedChunk]:
        """The best chunks of ``collection`` for ``query``, best first (hybrid search).

        Args:
            collection: A collection id or ``collections/{id}``.
            query: The user's question.
            top_k: Results wanted, 1 to 100.
            filters: Equality filters by field (a list value means IN), or MetadataFilter messages.
            query_embedding: The query's vector when the gateway already has it (the semantic
                cache's), so the query is embedded once. When the collection uses another model,
                the search is made again without it (the service embeds), once per collection.
            query_embedding_model: The model of ``query_embedding``.

        Raises:
            NotFound: Unknown collection.
            InvalidArgument: A bad filter (a field violation naming it), top_k out of range.
            Unavailable: The retrieval service (or, without an embedding, the embedding service).
        """
        name = collection if collection.startswith("collections/") else f"collections/{collection}"
        if name in self._foreign_model:
            query_embedding, query_embedding_model = (), ""
        flt = _filters(filters) if isinstance(filters, Mapping) else list(filters)
        request = pb.SearchRequest(
            collection=name,
            query=query,
            top_k=top_k,
            filters=flt,
            mode=pb.SEARCH_MODE_HYBRID,
            query_embedding=list(query_embedding),
            query_embedding_model=query_embedding_model,
        )
        try:
            with tracing.stage("gateway", "retrieve"):
                reply = await self.stub.Search(request, timeout=self.timeout_s, metadata=propagation.outgoing())
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"retrieval did not answer ({err.code().name}: {err.details()}); retry shortly",
                    retry_after_s=1.0,
                    reason="RETRIEVAL_UNAVAILABLE",
                    metadata={"dependency": "retrieval"},
                ) from None
            error = from_rpc_error(err)
            if query_embedding and isinstance(error, InvalidArgument) and _names_query_embedding(error):
                # The collection embeds with another model than the cache (or has just migrated):
                # from now on the service embeds this collection's queries itself.
                self._foreign_model.add(name)
                return await self.search(collection, query, top_k=top_k, filters=filters)
            raise error from None
        return [
            RetrievedChunk(
                document=r.document,
                chunk_id=r.chunk_id,
                score=r.score,
                snippet=r.snippet,
                text=r.text,
                parent_text=r.parent_text,
                title=r.title,
                metadata=json_format.MessageToDict(r.metadata),
            )
            for r in reply.results
        ]
