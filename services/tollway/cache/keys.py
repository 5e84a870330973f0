"""Cache keys: what makes two requests "the same request".

Tier 1 hashes a :class:`CacheKeyInput` (namespace, effective scope and the scope ids it
needs, and the whole :class:`Fingerprint`). ``dataclasses.asdict`` feeds every field to
the hash, so a field added to the dataclass is hashed without anyone remembering to.

What reaches the dataclass from the wire is pinned by the INCLUDE / EXCLUDE tables
below, one per request message. Every leaf field of the message, by dotted path, must
be in one of them: ``tests/unit/test_cache_keys.py`` walks each message's
``DESCRIPTOR.fields`` and fails on a field in neither table, then mutates every
INCLUDE path and checks the key changes, and every EXCLUDE path and checks it does
not. A new request parameter therefore cannot silently serve a wrong answer.

Tier 2 compares meaning, so its candidates are restricted to entries with the same
:func:`context_key`: the same request with the last message's text blanked out, plus
the embedding model (vectors of different models are not comparable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from tollway.cache.scope import Scope
from tollway.common.chat import ChatMessage
from tollway.mesh.frozen import frozen

# --- tollway.cache.v1.LookupRequest and StoreRequest -------------------------------

_FINGERPRINT_PATHS = frozenset(
    {
        "fingerprint.model",
        "fingerprint.messages.role",
        "fingerprint.messages.content",
        "fingerprint.messages.name",
        "fingerprint.max_tokens",
        "fingerprint.temperature",
        "fingerprint.top_p",
        "fingerprint.stop",
        "fingerprint.seed",
        "fingerprint.prompt_template",
        "fingerprint.prompt_version",
    }
)

# Hashed into the tier-1 key (tenant_id and user_id only when the scope needs them).
LOOKUP_INCLUDE: frozenset[str] = frozenset({"namespace", "tenant_id", "user_id", "scope"}) | _FINGERPRINT_PATHS

LOOKUP_EXCLUDE: Mapping[str, str] = {
    "embedding": "a function of the last message, which the key already holds",
    "embedding_model": "tier 2 only: part of the semantic context key, not of the exact key",
    "mode": "says how the cache is used, not what the answer is",
    "allow_stale": "says which entries may answer, not what the answer is",
    "semantic_only": "says which tiers are consulted, not what the answer is",
}

STORE_INCLUDE: frozenset[str] = LOOKUP_INCLUDE

STORE_EXCLUDE: Mapping[str, str] = {
    "embedding": LOOKUP_EXCLUDE["embedding"],
    "embedding_model": LOOKUP_EXCLUDE["embedding_model"],
    "mode": LOOKUP_EXCLUDE["mode"],
    "text": "the answer, not the question",
    "usage": "the answer's cost, not the question",
    "model": "the model that answered; the key holds the model that was asked for",
    "provider": "who answered, not the question",
    "finish_reason": "how the answer ended, not the question",
    "document_ids": "grounding recorded for invalidation; the retrieved text is in the messages",
}

# --- tollway.gateway.v1.GenerateRequest and CompleteRequest --------------------------
# The gateway turns these into a LookupRequest with tollway.common.codec.fingerprint_to_proto.

GENERATE_INCLUDE: frozenset[str] = frozenset(
    {
        "model",
        "messages.role",
        "messages.content",
        "messages.name",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",  # becomes LookupRequest.user_id: hashed when the namespace is user-scoped
        "cache_policy.namespace",
    }
)

GENERATE_EXCLUDE: Mapping[str, str] = {
    "cache_policy.mode": "says how the cache is used, not what the answer is",
    "feature": "cost attribution only; the same question from two features has one answer",
    "request_id": "unique per request by design",
    "priority": "decides whether a budget admits the request, not what the answer is",
    "conversation_id": "budget accounting only; the messages carry the conversation itself",
    # Never keyed as sent: a label is a pointer that moves. The gateway resolves prompt_ref
    # first and keys the result instead (CacheRequest.of): the rendered messages and
    # parameters, and fingerprint.prompt_template and prompt_version (the number).
    "prompt_ref": "replaced before the key is made by the resolved template, version number and rendering",
    # The fingerprint has no fields for these and a stored answer holds no tool calls, so the
    # gateway bypasses the cache for any request that sets one (gateway.cache_client.cacheable).
    "tools": "a request with tools bypasses the cache",
    "tool_choice": "only meaningful with tools, which bypass the cache",
    "response_format": "a request asking for a JSON answer bypasses the cache",
    "message_extras": "a request with tool-call turns bypasses the cache",
    # Like prompt_ref: the gateway retrieves first and keys what the spec resolved to, the
    # sources put into the messages as a system turn (gateway.grounding.ground).
    "retrieval": "replaced before the key is made by the retrieved sources, which are part of the messages",
    "tier": "replaced before the key is made by the tier's model, which is `model`",
}

_KEY_VERSION = b"tollway.cache.exact.v1\x00"
_CONTEXT_VERSION = b"tollway.cache.context.v1\x00"


# The message fields a RequestFingerprint carries (tollway.common.v1.Message), hashed by name.
# ChatMessage's other fields (tool calls, tool results, prompt-cache breakpoints) only travel to
# the router; a message carrying one cannot be keyed (see _message_material), and leaving them
# out keeps the keys of entries stored before the shared ChatMessage unchanged.
MESSAGE_KEY_FIELDS = ("role", "content", "name")


@frozen(slots=True)
class Fingerprint:
    """Every part of a request that changes the answer (tollway.cache.v1.RequestFingerprint).

    Field names are the proto's; a unit test keeps the two in step.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prompt_template: str = ""
    prompt_version: str = ""

    @property
    def nondeterministic(self) -> bool:
        """True when sampling makes answers vary (an unset temperature counts as deterministic)."""
        return self.temperature is not None and self.temperature > 0

    @property
    def query(self) -> str:
        """The text tier 2 compares by meaning: the last message's content."""
        return self.messages[-1].content if self.messages else ""


@frozen(slots=True)
class CacheKeyInput:
    """Everything the tier-1 key is made of. Build it with :meth:`build`."""

    namespace: str
    scope: Scope
    tenant_id: str
    user_id: str
    fingerprint: Fingerprint

    @classmethod
    def build(
        cls, *, namespace: str, scope: Scope, tenant_id: str, user_id: str, fingerprint: Fingerprint
    ) -> CacheKeyInput:
        """Keeps only the scope ids the effective scope needs.

        A globally scoped answer is shared by every tenant, so the tenant must not be in its
        key; a tenant-scoped one is shared by the tenant's users, so the user must not be.
        """
        return cls(
            namespace=namespace,
            scope=scope,
            tenant_id=tenant_id if scope >= Scope.TENANT else "",
            user_id=user_id if scope >= Scope.USER else "",
            fingerprint=fingerprint,
        )


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot hash the non-finite number {value!r}")
        return value + 0.0  # -0.0 and 0.0 are the same temperature
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _message_material(message: ChatMessage) -> dict[str, str]:
    if message.has_extras:
        raise ValueError("cannot key a message with tool calls, a tool result or a cache breakpoint")
    return {"role": message.role, "content": message.content, "name": message.name}


def _fingerprint_material(fp: Fingerprint) -> dict[str, Any]:
    # asdict keeps every Fingerprint field (a field added later is hashed without anyone
    # remembering to); only the messages are narrowed to the fields the wire carries.
    material = dataclasses.asdict(dataclasses.replace(fp, messages=()))
    material["messages"] = [_message_material(m) for m in fp.messages]
    return material


def exact_key(key_input: CacheKeyInput) -> str:
    """The tier-1 key: SHA-256 (hex) of the canonical JSON of ``key_input``."""
    material = dataclasses.asdict(dataclasses.replace(key_input, fingerprint=None))  # type: ignore[arg-type]
    material["fingerprint"] = _fingerprint_material(key_input.fingerprint)
    material["scope"] = int(key_input.scope)
    return hashlib.sha256(_KEY_VERSION + canonical_json(material)).hexdigest()


def context_key(key_input: CacheKeyInput, embedding_model: str) -> str:
    """The tier-2 partition: the request without the last message's text, and the embedder.

    Two requests may share a semantic answer only when everything but the wording of the
    query is equal: same namespace, model, parameters, prompt version, earlier turns and
    role of the last turn. Scope ids are left out on purpose; who may see an entry is the
    scope filter's job, so a global entry stays shareable across tenants.
    """
    fp = key_input.fingerprint
    messages = list(fp.messages)
    if messages:
        last = messages[-1]
        messages[-1] = ChatMessage(role=last.role, content="", name=last.name)
    blanked = dataclasses.replace(fp, messages=tuple(messages))
    material = {
        "namespace": key_input.namespace,
        "fingerprint": _fingerprint_material(blanked),
        "embedding_model": embedding_model,
    }
    return hashlib.sha256(_CONTEXT_VERSION + canonical_json(material)).hexdigest()


def context_tag(context: str) -> int:
    """The first 64 bits of a context key as a signed integer, for the index's pre-filter."""
    return int.from_bytes(bytes.fromhex(context[:16]), "big", signed=True)
