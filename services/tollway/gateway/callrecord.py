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
        key_id: The id of the API key that made the call (never the key).
        pricing_version: The version of the price table ``cost_usd`` was computed with.
        temperature: The sampling temperature sent (None: the model's default).
        max_tokens: The answer limit the provider was asked for.
        tools_called: The tools the model called, in order.
        error_message: What went wrong, in words ("" when nothing did).
        cache_namespace: The cache namespace the request looked up ("" when the cache was not asked).
        guard_decisions: What the guards did, as ``guard:action`` items (filled by the guards).
        retrieval_collection: The collection the answer was grounded in ("" for none).
        cited_documents: The ids of the documents the answer cited.
        raw_stored: Whether the raw prompt and answer were kept apart (the tenant's policy
            allows it); they expire after the gateway's raw retention, the record stays.
        usage_from_provider: Whether the token counts are the provider's own report (else the
            router counted them): what reconciling against a provider's invoice needs.

    The stream form adds two derived values after the fields: ``total_tokens`` (input plus
    output) and ``tokens_per_second`` (output tokens over the time after the first text).
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
    key_id: str = ""
    pricing_version: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    tools_called: tuple[str, ...] = ()
    error_message: str = ""
    cache_namespace: str = ""
    guard_decisions: tuple[str, ...] = ()
    retrieval_collection: str = ""
    cited_documents: tuple[str, ...] = ()
    raw_stored: bool = False
    usage_from_provider: bool = False

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

    def note_request(self, key_id: str, temperature: float | None, max_tokens: int, pricing_version: str) -> None:
        """Records the parameters the request runs with (after defaults and the prompt applied)."""
        self.key_id, self.temperature, self.max_tokens = key_id, temperature, max_tokens
        self.pricing_version = pricing_version

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cached input tokens are part of the input)."""
        return self.input_tokens + self.output_tokens

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per second of generation, after the first text (0 when unknown)."""
        generating_ms = self.latency_ms - self.ttft_ms
        if self.output_tokens <= 0 or generating_ms <= 0:
            return 0.0
        return round(self.output_tokens * 1000 / generating_ms, 1)

    def stream_fields(self) -> dict[str, str]:
        """The record as the Redis stream stores it: every field, in order, as text.

        Lists are joined with ",", an unset temperature is "", a flag is "1" or "0".
        """
        out = {name: _text(getattr(self, name)) for name in _FIELD_NAMES}
        out["total_tokens"] = str(self.total_tokens)
        out["tokens_per_second"] = str(self.tokens_per_second)
        return out


def _text(value: object) -> str:
    # Most fields are text already: asked first, by exact type, as ~38 fields a call pass here.
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if value is None:
        return ""
    if kind is bool:
        return "1" if value else "0"
    if kind is tuple:
        return ",".join(value)  # type: ignore[arg-type]
    return str(value)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(CallRecord))
