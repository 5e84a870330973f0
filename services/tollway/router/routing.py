"""Which model starts a request's chain, and why: a named model, or a tier for ``auto``.

For ``auto`` the classifier picks a tier; the tier's model is used if it can serve the
request (the capabilities it needs, a context window the prompt fits in), else the next
tier up (then down). With the cascade on, a request classified above ``small`` first
goes to the small tier's model, and only escalates if that answer fails validation.
"""

from __future__ import annotations

from tollway.common.catalog import TIERS, Catalog, Model
from tollway.common.chat import ChatRequest
from tollway.common.route import RoutingDecision
from tollway.mesh import errors
from tollway.router.classifier import ComplexityClassifier
from tollway.router.tokens import count_prompt_tokens


def required_capabilities(request: ChatRequest) -> set[str]:
    """Capabilities a model needs to serve ``request``."""
    needs = set()
    if request.tools:
        needs.add("tools")
    if request.response_format.wants_json:
        needs.add("json")
    return needs


def unfit_reason(model: Model, request: ChatRequest, prompt_tokens: int) -> str:
    """Why ``model`` cannot serve ``request``, or "" when it can."""
    missing = required_capabilities(request) - model.capabilities
    if missing:
        return f"{model.name} lacks {', '.join(sorted(missing))}"
    if prompt_tokens + (request.max_tokens or 0) > model.context_window:
        return f"{model.name}'s context window ({model.context_window} tokens) is smaller than the prompt"
    return ""


def decide(request: ChatRequest, catalog: Catalog, classifier: ComplexityClassifier) -> RoutingDecision:
    """Picks the first model of the chain.

    Raises:
        errors.NotFound: The named model is not in the catalog.
        errors.InvalidArgument: The named model cannot serve the request (tools, JSON, size),
            or no tier can.
    """
    prompt_tokens = count_prompt_tokens([(m.role, m.content) for m in request.messages])
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
