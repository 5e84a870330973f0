"""Which model starts a request's chain, and why: a named model, or a tier for ``auto``.

For ``auto`` the classifier picks a tier; the tier's model is used if it can serve the
request (the capabilities it needs, a context window the prompt fits in), else the next
tier up (then down). With the cascade on, a request classified above ``small`` first
goes to the small tier's model, and only escalates if that answer fails validation.

A named model that cannot do what the request needs is refused (CAPABILITY_UNSUPPORTED,
naming the capability and the model), never answered without it.
"""

from __future__ import annotations

from tollway.common.catalog import TIERS, Catalog, Model
from tollway.common.chat import ChatRequest
from tollway.common.route import RoutingDecision
from tollway.common.tokens import count_request_tokens
from tollway.mesh import errors
from tollway.router.classifier import ComplexityClassifier

# The request header that sets ChatRequest.allow_model_fallback for gateway callers.
ALLOW_FALLBACK_HEADER = "x-tollway-allow-fallback"
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def required_capabilities(request: ChatRequest) -> frozenset[str]:
    """Capabilities a deployment needs to serve ``request`` (names from the catalog's list)."""
    needs = set()
    if request.tools:
        needs.add("tools")
    if request.response_format.wants_json:
        needs.add("json")
    return frozenset(needs)


def missing_capabilities(model: Model, request: ChatRequest) -> list[str]:
    """What ``request`` needs that no deployment of ``model`` can do, sorted; empty when it fits."""
    return sorted(required_capabilities(request) - model.capabilities)


def parse_allow_fallback(value: str | None) -> bool | None:
    """The ``x-tollway-allow-fallback`` header as a policy; None when absent.

    Raises:
        errors.InvalidArgument: The value is not true/false (1/0, yes/no), naming the header.
    """
    if value is None:
        return None
    word = value.strip().lower()
    if word not in _BOOLEAN_WORDS:
        raise errors.InvalidArgument(
            f"{ALLOW_FALLBACK_HEADER} is {value[:40]!r}; use true or false",
            [(ALLOW_FALLBACK_HEADER, "true or false")],
            reason="INVALID_HEADER",
            metadata={"header": ALLOW_FALLBACK_HEADER},
        )
    return _BOOLEAN_WORDS[word]


def unfit_reason(model: Model, request: ChatRequest, prompt_tokens: int) -> str:
    """Why ``model`` cannot serve ``request``, or "" when it can."""
    missing = missing_capabilities(model, request)
    if missing:
        return f"{model.name} lacks {', '.join(missing)}"
    if prompt_tokens + (request.max_tokens or 0) > model.context_window:
        return f"{model.name}'s context window ({model.context_window} tokens) is smaller than the prompt"
    return ""


def decide(
    request: ChatRequest, catalog: Catalog, classifier: ComplexityClassifier, prompt_tokens: int | None = None
) -> RoutingDecision:
    """Picks the first model of the chain.

    Args:
        prompt_tokens: The prompt's tokens (:func:`tollway.common.tokens.count_request_tokens`),
            when the caller has them; None counts them.

    Raises:
        errors.NotFound: The named model is not in the catalog.
        errors.InvalidArgument: The named model cannot serve the request (tools, JSON, size),
            or no tier can.
    """
    if prompt_tokens is None:
        prompt_tokens = count_request_tokens(request)
    if request.model == "auto" and catalog.routing.tiers:
        return _decide_auto(request, catalog, classifier, prompt_tokens)
    model = catalog.resolve(request.model)
    if model is None:
        known = sorted({*catalog.names(), *(["auto"] if catalog.routing.tiers else [])})
        raise errors.NotFound(
            f"model {request.model!r} is not in the catalog; known models: {', '.join(known)}",
            reason="MODEL_NOT_FOUND",
            metadata={"model": request.model},
        )
    missing = missing_capabilities(model, request)
    if missing:
        field = {"tools": "tools", "json": "response_format"}
        raise errors.InvalidArgument(
            f"model {model.name} does not support {' or '.join(missing)} (capability {', '.join(missing)} is "
            f"not in its catalog entry); the request was not sent. Pick a model that supports it, or 'auto'",
            [(field[c], f"model {model.name} does not support {c}") for c in missing],
            reason="CAPABILITY_UNSUPPORTED",
            metadata={"model": model.name, "capability": ",".join(missing)},
        )
    why_not = unfit_reason(model, request, prompt_tokens)
    if why_not:
        raise errors.InvalidArgument(
            f"model {model.name} cannot serve this request: {why_not}; pick another model or 'auto'",
            [("model", why_not)],
            reason="MODEL_CANNOT_SERVE_REQUEST",
            metadata={"model": model.name},
        )
    via = f" (alias of {model.name})" if model.name != request.model else ""
    return RoutingDecision(request.model, model.name, model.tier, "named", f"requested by name{via}")


def _decide_auto(
    request: ChatRequest, catalog: Catalog, classifier: ComplexityClassifier, prompt_tokens: int
) -> RoutingDecision:
    verdict = classifier.classify(request)
    start = TIERS.index(verdict.tier) if verdict.tier in TIERS else 0
    order = [*TIERS[start:], *reversed(TIERS[:start])]
    notes: list[str] = []
    chosen: Model | None = None
    for tier in order:
        name = catalog.routing.tiers.get(tier)
        if not name:
            continue
        candidate = catalog.models[name]
        why_not = unfit_reason(candidate, request, prompt_tokens)
        if why_not:
            notes.append(f"skipped {tier}: {why_not}")
            continue
        chosen = candidate
        break
    if chosen is None:
        raise errors.InvalidArgument(
            "no tier's model can serve this request: " + "; ".join(notes),
            [("model", "no tier fits")],
            reason="NO_MODEL_CAN_SERVE_REQUEST",
        )
    reason = verdict.reason + ("" if chosen.tier == verdict.tier else f"; {'; '.join(notes)}; using {chosen.tier}")
    cascade = catalog.routing.cascade if request.cascade is None else request.cascade
    small_name = catalog.routing.tiers.get("small", "")
    if cascade and small_name and chosen.name != small_name and chosen.tier != "small":
        small = catalog.models[small_name]
        if not unfit_reason(small, request, prompt_tokens):
            return RoutingDecision(
                request.model,
                chosen.name,
                chosen.tier,
                "cascade",
                f"{reason}; cascade: trying {small.name} first",
                verdict.score,
                classifier.name,
                small.name,
            )
    return RoutingDecision(request.model, chosen.name, chosen.tier, "auto", reason, verdict.score, classifier.name)
