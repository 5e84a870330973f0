"""Grounding a request in retrieved documents: the spec, its checks, and the grounded request.

The lifecycle searches (:class:`~tollway.gateway.retrieval_client.RetrievalClient`), fits the
chunks (:func:`~tollway.gateway.retrieval_client.assemble_context`), then calls :func:`ground`
here *before* the cache: the grounded request, sources included, is what the cache keys and
the budget estimates. Keying the resolved context rather than the spec means a changed corpus
can never serve an answer grounded in older text, even before the document-id invalidation
(which removes such entries) has run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.retrieval_client import Context
from tollway.mesh.frozen import frozen

DEFAULT_TOP_K = 8
MAX_TOP_K = 100
DEFAULT_MAX_CONTEXT_TOKENS = 2000
MAX_CONTEXT_TOKENS = 32_768
# The retrieval service's collection ids (lower-case, digits, '-'), with or without the prefix.
_COLLECTION = re.compile(r"^(collections/)?[a-z][a-z0-9-]{0,62}$")

# Said once, before the sources: models follow an instruction that precedes the material.
INSTRUCTIONS = (
    "Answer using the numbered sources below. Cite the sources you use as [n]. "
    "If the sources do not answer the question, say so."
)


@frozen(slots=True)
class RetrievalSpec:
    """What to retrieve for one request, with the defaults filled in.

    Attributes:
        collection: The collection id or ``collections/{id}``.
        top_k: Chunks to retrieve before fitting.
        filters: Equality filters by metadata field (a list value means one of).
        max_context_tokens: Token budget of the context text.
    """

    collection: str
    top_k: int = DEFAULT_TOP_K
    filters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS


def spec_problems(collection: str, top_k: int, max_context_tokens: int) -> list[tuple[str, str]]:
    """Every problem with the retrieval fields as sent (0 meaning the default), as (field, what to fix)."""
    bad: list[tuple[str, str]] = []
    if not collection:
        bad.append(("retrieval.collection", "required: the collection to ground the answer in"))
    elif not _COLLECTION.match(collection):
        bad.append(
            (
                "retrieval.collection",
                "a collection id (a lower-case letter, then lower-case letters, digits or '-', at most 63 "
                "characters) or collections/{id}",
            )
        )
    if not 0 <= top_k <= MAX_TOP_K:
        bad.append(("retrieval.top_k", f"must be between 1 and {MAX_TOP_K} (0 means {DEFAULT_TOP_K}), got {top_k}"))
    if not 0 <= max_context_tokens <= MAX_CONTEXT_TOKENS:
        bad.append(
            (
                "retrieval.max_context_tokens",
                f"must be between 1 and {MAX_CONTEXT_TOKENS} (0 means {DEFAULT_MAX_CONTEXT_TOKENS}), "
                f"got {max_context_tokens}",
            )
        )
    return bad


def query_of(chat: ChatRequest) -> str:
    """What to search for: the last user turn (the question being asked), else the last turn."""
    for message in reversed(chat.messages):
        if message.role == "user" and message.content:
            return message.content
    return chat.messages[-1].content if chat.messages else ""


def ground(chat: ChatRequest, context: Context) -> ChatRequest:
    """``chat`` with the context as a system turn after its leading system turns.

    The request's own system turns stay first, so a prompt prefix that providers cache
    stays a prefix; the sources follow, then the conversation. Nothing is added when no
    source fitted.
    """
    if not context.text:
        return chat
    lead = 0
    while lead < len(chat.messages) and chat.messages[lead].role == "system":
        lead += 1
    turn = ChatMessage("system", f"{INSTRUCTIONS}\n\n{context.text}")
    return dataclasses.replace(chat, messages=(*chat.messages[:lead], turn, *chat.messages[lead:]))
