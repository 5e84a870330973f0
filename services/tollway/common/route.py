"""How the router answers a request, as the router streams it and the gateway reads it.

A route is RouteStarted, then TextDelta*, then RouteCompleted or StreamFailed; errors before
RouteStarted are statuses, not events. :mod:`tollway.common.codec` carries these over
``tollway.router.v1``.
"""

from __future__ import annotations

import dataclasses

from tollway.common.chat import FinishReason, TextDelta, ToolCall, Usage
from tollway.mesh.frozen import frozen


@frozen
class RoutingDecision:
    """The routing decision for one request.

    Attributes:
        requested: The model name the request gave ("auto", an alias, or a model).
        model: The model the chain starts with (after a cascade, the one escalated to).
        tier: That model's tier ("small", "medium", "large"; "" when unknown).
        how: "named" (the request named it), "auto" (the classifier picked the tier) or
            "cascade" (the small tier was tried first; see ``cascade_from``).
        reason: Why, for a person reading the call record.
        score: The classifier's complexity score (0 when named).
        classifier: The classifier's name ("" when named).
        cascade_from: The small model to try before ``model``, "" for no cascade.
    """

    requested: str
    model: str
    tier: str
    how: str
    reason: str
    score: float = 0.0
    classifier: str = ""
    cascade_from: str = ""


@frozen
class RouteStarted:
    """An attempt produced its first output; everything after belongs to it.

    Attributes:
        attempt_count: Provider calls made for this request so far, this one included.
        fallback_path: Models left before this one, each as "model (WHY)".
        decision: How the first model of the chain was chosen.
        deployment: The deployment answering, as ``provider/model/name``.
    """

    model: str
    provider: str
    attempt_count: int
    fallback_path: tuple[str, ...] = ()
    decision: RoutingDecision | None = None
    deployment: str = ""


@frozen
class RouteCompleted:
    """The answer is complete.

    Attributes:
        usage_reported: Whether the provider reported the usage (else it was counted here).
        tool_calls: The tool calls the model asked for, with valid JSON arguments.
        cost_usd_micros: The answer's cost at the catalog's prices.
        discarded_usage: Tokens spent on answers thrown away (a cascade's rejected small answer).
    """

    finish_reason: FinishReason
    usage: Usage
    usage_reported: bool
    provider_ttft_ms: int
    tool_calls: tuple[ToolCall, ...] = ()
    cost_usd_micros: int = 0
    discarded_usage: Usage = dataclasses.field(default_factory=Usage)


@frozen
class StreamFailed:
    """The provider failed after text was streamed.

    Attributes:
        code: The gRPC status code number the failure would have had as a status.
        reason: The ErrorInfo reason (UPPER_SNAKE).
        partial_usage: What the failed attempt consumed.
    """

    code: int
    message: str
    reason: str
    partial_usage: Usage


RouteEvent = RouteStarted | TextDelta | RouteCompleted | StreamFailed
