"""The call record: what one request did, for the ``tollway:calls`` stream and the metrics.

A :class:`CallRecord` is filled in as the request runs (the lifecycle reads some fields
back, such as the finish reason that decides whether an answer is stored) and written once
when it ends. :meth:`CallRecord.stream_fields` is its only serialisation: the field names,
their order and the text of each value are what ``tollway calls`` and the tests read.
"""

from __future__ import annotations

import dataclasses
import time

from tollway.common.caching import CacheTier
from tollway.common.chat import FinishReason


@dataclasses.dataclass(slots=True)
class CallRecord:
    """One request's record; the fields in stream order.

    Attributes:
        request_id: The request's id (the client's, or one the gateway made).
        timestamp: When the request arrived (Unix seconds, to the millisecond).
        tenant: The tenant the key belongs to.
        feature: The client's cost-attribution label.
        user: The client's end-user id.
        model: The model asked for, then the model that answered.
        provider: The provider that answered ("" when none did).
        prompt_template: The prompt template the messages were rendered from ("" for none).
        prompt_version: The exact version of it used, a number as text (never a label).
        cache_tier: Which cache tier answered (NOT_CONSULTED when the cache was not asked).
        cache_entry: The cache entry served, on a hit.
        attempts: Provider calls the router made.
        deployment: The deployment that answered.
        fallback_path: Models left before the one that answered, joined with " > ".
        route_method: How the router chose the model ("named", "auto", "cascade").
        route_reason: Why, in words.
        finish_reason: Why the answer ended ("" when it did not).
        prompt_hash: A digest of the roles and contents of the messages; with a prompt
            template, the version's content hash (the same for every call of the version).
        input_tokens: Prompt tokens billed.
        output_tokens: Answer tokens billed.
        cached_tokens: Prompt tokens read from the provider's prompt cache.
        cost_usd: The cost in US dollars.
        latency_ms: Time from the request to the end of the answer.
        ttft_ms: Time to the first text (0 when none came).
        status: "OK", "DEGRADED", "CANCELLED" or the failure's ErrorInfo reason.
        response_hash: A digest of the answer text ("" when there was none).
    """

    request_id: str
    timestamp: float
    tenant: str
    feature: str
    user: str
    model: str
    provider: str = ""
    prompt_template: str = ""
    prompt_version: str = ""
    cache_tier: CacheTier = CacheTier.NOT_CONSULTED
    cache_entry: str = ""
    attempts: int = 0
    deployment: str = ""
    fallback_path: str = ""
    route_method: str = ""
    route_reason: str = ""
    finish_reason: FinishReason = ""
    prompt_hash: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    ttft_ms: int = 0
    status: str = "OK"
    response_hash: str = ""

    @classmethod
    def begin(
        cls,
        request_id: str,
        tenant: str,
        feature: str,
        user: str,
        model: str,
        prompt_hash: str,
        *,
        prompt_template: str = "",
        prompt_version: str = "",
    ) -> CallRecord:
        """The record of a request arriving now."""
        return cls(
            request_id,
            round(time.time(), 3),
            tenant,
            feature,
            user,
            model,
            prompt_template=prompt_template,
            prompt_version=prompt_version,
            prompt_hash=prompt_hash,
        )

    def stream_fields(self) -> dict[str, str]:
        """The record as the Redis stream stores it: every field, in order, as text."""
        return {name: str(getattr(self, name)) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(CallRecord))
