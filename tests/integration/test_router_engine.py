"""The routing engine against the wire-exact fakes: fallback order, retries, retry-after,
deadlines, mid-stream failures, tool calls, the cascade and deployment balancing.

Breakers are off here (test_router_breakers.py covers them with a real Redis); each
test builds its own catalog, so the fakes' scenarios come from the upstream model names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import anthropic as fake_anthropic
from tests.fakes import gemini as fake_gemini
from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import free_port
from tests.fakes.scenarios import TOOL_CALLS
from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, TextDelta, Tool
from tollway.common.route import RouteCompleted, RouteEvent, RouteStarted, StreamFailed
from tollway.common.tokens import count_request_tokens
from tollway.mesh import errors
from tollway.router.engine import Router
from tollway.router.policy import BACKGROUND, INTERACTIVE
from tollway.router.providers.anthropic import AnthropicAdapter
from tollway.router.providers.gemini import GeminiAdapter
from tollway.router.providers.openai_compat import OpenAICompatAdapter


@dataclasses.dataclass
class Fakes:
    openai: FakeHTTPServer
    anthropic: FakeHTTPServer
    gemini: FakeHTTPServer
    local: FakeHTTPServer

    def providers(self) -> dict[str, Any]:
        return {
            "oa": {"wire": "openai_compat", "base_url": f"http://127.0.0.1:{self.openai.port}/v1", "timeout_s": 5},
            "an": {"wire": "anthropic", "base_url": f"http://127.0.0.1:{self.anthropic.port}", "timeout_s": 5},
            "gg": {"wire": "gemini", "base_url": f"http://127.0.0.1:{self.gemini.port}/v1beta", "timeout_s": 5},
            "local": {"wire": "openai_compat", "base_url": f"http://127.0.0.1:{self.local.port}/v1", "timeout_s": 5},
            "dead": {"wire": "openai_compat", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 5},
        }


_ROUTERS: list[Router] = []


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    servers = [
        fake_openai.make_server(),
        fake_anthropic.make_server(),
        fake_gemini.make_server(),
        fake_openai.make_server(),
    ]
    for s in servers:
        await s.start()
    yield Fakes(*servers)
    while _ROUTERS:
        for adapter in _ROUTERS.pop().adapters.values():
            await adapter.aclose()
    for s in servers:
        await s.kill()


def keep(router: Router) -> Router:
    _ROUTERS.append(router)
    return router


class Sleeps:
    """Records every wait the router asks for, and really waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds)


def make_router(fakes: Fakes, models: dict[str, Any], *, sleep: Sleeps | None = None, **routing: Any) -> Router:
    # These tests exercise whole chains, so other models may answer unless a test says not
    # (the default policy is tested in test_router_stalls.py and tests/unit).
    routing = {"model_fallback": True, **routing}
    catalog = parse_catalog({"providers": fakes.providers(), "models": models, "routing": routing}, env={})
    return keep(
        Router(
            catalog,
            {"openai_compat": OpenAICompatAdapter(), "anthropic": AnthropicAdapter(), "gemini": GeminiAdapter()},
            # Retry-after longer than 0.5 s falls through at once, to keep the tests quick.
            policies={
                "interactive": dataclasses.replace(INTERACTIVE, max_wait_s=0.5),
                "background": dataclasses.replace(BACKGROUND, base_backoff_s=0.05),
            },
            rng=random.Random(7),
            sleep=sleep or Sleeps(),
        )
    )


def chat(model: str, **kw: Any) -> ChatRequest:
    return ChatRequest(
        model,
        (ChatMessage("user", kw.pop("text", "Say hello")),),
        request_id=kw.pop("request_id", f"r-{time.monotonic_ns()}"),
        **kw,
    )


async def run(router: Router, request: ChatRequest, deadline_s: float | None = None) -> list[RouteEvent]:
    deadline = time.monotonic() + deadline_s if deadline_s else None
    return [e async for e in router.generate(request, deadline)]


def started(events: list[RouteEvent]) -> RouteStarted:
    assert isinstance(events[0], RouteStarted)
    return events[0]


def text(events: list[RouteEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def upstream(server: FakeHTTPServer, model: str) -> int:
    """Requests the fake got for an upstream model (in the body, or in Gemini's path)."""
    return sum(1 for r in server.log if f"/models/{model}:" in r.path or (r.body and r.json().get("model") == model))


async def test_fallback_order_primary_smaller_other_provider_self_hosted(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "primary": {"provider": "oa", "upstream_model": "fake-502", "fallbacks": ["smaller", "other", "gem"]},
            "smaller": {"provider": "oa", "upstream_model": "fake-500"},
            "other": {"provider": "an", "upstream_model": "fake-529"},
            "gem": {"provider": "gg", "upstream_model": "fake-503"},
            "selfhosted": {"provider": "local", "upstream_model": "fake-ok"},
        },
        last_resort="selfhosted",
    )
    events = await run(router, chat("primary"))
    s = started(events)
    assert (s.model, s.provider) == ("selfhosted", "local")
    assert s.fallback_path == (
        "primary (SERVER_ERROR)",
        "smaller (SERVER_ERROR)",
        "other (OVERLOADED)",
        "gem (OVERLOADED)",
    )
    # Interactive: one retry per model, except where retry-after (1 s) is longer than allowed.
    assert s.attempt_count == 2 + 2 + 1 + 2 + 1
    assert text(events) == "Hello from fake-ok."
    assert isinstance(events[-1], RouteCompleted)
    # The providers saw the calls in chain order.
    calls = sorted(
        [(r.received_at, "primary" if b'"fake-502"' in r.body else "smaller") for r in fakes.openai.log]
        + [(r.received_at, "other") for r in fakes.anthropic.log]
        + [(r.received_at, "gem") for r in fakes.gemini.log]
        + [(r.received_at, "selfhosted") for r in fakes.local.log]
    )
    order = [name for _, name in calls]
    assert order == ["primary", "primary", "smaller", "smaller", "other", "gem", "gem", "selfhosted"]


async def test_no_retry_and_no_fallback_on_400(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "bad": {"provider": "oa", "upstream_model": "fake-400", "fallbacks": ["fb"]},
            "fb": {"provider": "an", "upstream_model": "fake-ok"},
        },
    )
    with pytest.raises(errors.InvalidArgument) as info:
        await run(router, chat("bad", request_id="r400"))
    assert info.value.reason == "PROVIDER_REJECTED_REQUEST"
    assert "scenario fake-400" in info.value.message  # the provider's own message
    assert upstream(fakes.openai, "fake-400") == 1
    assert len(fakes.anthropic.log) == 0


async def test_no_retry_on_401_falls_through_to_another_provider(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "keyless": {"provider": "oa", "upstream_model": "fake-401", "fallbacks": ["fb"]},
            "fb": {"provider": "an", "upstream_model": "fake-ok"},
        },
    )
    events = await run(router, chat("keyless"))
    s = started(events)
    assert s.model == "fb" and s.fallback_path == ("keyless (AUTH)",) and s.attempt_count == 2
    assert upstream(fakes.openai, "fake-401") == 1


async def test_401_everywhere_is_failed_precondition_with_the_providers_message(fakes: Fakes) -> None:
    router = make_router(fakes, {"keyless": {"provider": "oa", "upstream_model": "fake-401"}})
    with pytest.raises(errors.FailedPrecondition) as info:
        await run(router, chat("keyless"))
    assert info.value.reason == "PROVIDER_AUTH_FAILED" and "scenario fake-401" in info.value.message
    assert upstream(fakes.openai, "fake-401") == 1


async def test_background_honours_retry_after_then_succeeds_on_the_same_model(fakes: Fakes) -> None:
    sleeps = Sleeps()
    router = make_router(
        fakes,
        {
            "limited": {"provider": "an", "upstream_model": "fake-429-then-ok", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
        sleep=sleeps,
    )
    events = await run(router, chat("limited", policy="background", request_id="bg-1"))
    s = started(events)
    assert s.model == "limited" and s.attempt_count == 2 and s.fallback_path == ()
    assert sleeps.waits and sleeps.waits[0] >= 1.0  # the fake's retry-after
    first, second = fakes.anthropic.log[0].received_at, fakes.anthropic.log[1].received_at
    assert second - first >= 1.0
    assert len(fakes.local.log) == 0


async def test_background_gives_up_after_three_attempts_with_growing_jittered_waits(fakes: Fakes) -> None:
    sleeps = Sleeps()
    router = make_router(
        fakes,
        {
            "flaky": {"provider": "gg", "upstream_model": "fake-500", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
        sleep=sleeps,
    )
    events = await run(router, chat("flaky", policy="background"))
    assert started(events).model == "fb" and started(events).attempt_count == 4
    assert upstream(fakes.gemini, "fake-500") == 3
    assert len(sleeps.waits) == 2 and 0 <= sleeps.waits[0] <= 0.05 and 0 <= sleeps.waits[1] <= 0.1


async def test_gemini_retry_info_is_honoured_as_retry_after(fakes: Fakes) -> None:
    sleeps = Sleeps()
    router = make_router(fakes, {"g": {"provider": "gg", "upstream_model": "fake-429-then-ok"}}, sleep=sleeps)
    events = await run(router, chat("g", policy="background", request_id="bg-gemini"))
    assert started(events).attempt_count == 2 and sleeps.waits[0] >= 1.0


async def test_interactive_falls_through_instead_of_waiting_a_long_retry_after(fakes: Fakes) -> None:
    sleeps = Sleeps()
    router = make_router(
        fakes,
        {
            "limited": {"provider": "oa", "upstream_model": "fake-429", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
        sleep=sleeps,
    )
    events = await run(router, chat("limited"))
    assert started(events).fallback_path == ("limited (RATE_LIMITED)",)
    assert upstream(fakes.openai, "fake-429") == 1 and sleeps.waits == []


async def test_all_rate_limited_is_resource_exhausted_with_retry_after(fakes: Fakes) -> None:
    router = make_router(fakes, {"limited": {"provider": "oa", "upstream_model": "fake-429"}})
    with pytest.raises(errors.ResourceExhausted) as info:
        await run(router, chat("limited"))
    assert info.value.retry_after_s == 1.0 and info.value.reason == "PROVIDER_RATE_LIMITED"


async def test_a_slow_first_byte_past_the_deadline_falls_through_in_time(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "slow": {"provider": "oa", "upstream_model": "fake-slow-5000", "fallbacks": ["fb"]},
            "fb": {"provider": "an", "upstream_model": "fake-ok"},
        },
    )
    events = await run(router, chat("slow"), deadline_s=3.0)
    s = started(events)
    # Interactive: the first model only gets part of the time left, so the fallback gets the rest.
    assert s.model == "fb" and s.fallback_path == ("slow (TIMEOUT)",)
    assert isinstance(events[-1], RouteCompleted)


async def test_first_token_timeout_from_the_catalog_applies(fakes: Fakes) -> None:
    providers = fakes.providers()
    providers["oa"]["first_token_timeout_s"] = 0.3
    catalog = parse_catalog(
        {
            "providers": providers,
            "models": {
                "slow": {"provider": "oa", "upstream_model": "fake-slow-3000", "fallbacks": ["fb"]},
                "fb": {"provider": "local", "upstream_model": "fake-ok"},
            },
            "routing": {"model_fallback": True},
        },
        env={},
    )
    router = keep(Router(catalog, {"openai_compat": OpenAICompatAdapter()}, sleep=Sleeps()))
    events = await run(router, chat("slow"))
    assert started(events).fallback_path == ("slow (TIMEOUT)",)


async def test_nothing_answers_before_the_deadline_is_deadline_exceeded(fakes: Fakes) -> None:
    router = make_router(fakes, {"slow": {"provider": "oa", "upstream_model": "fake-slow-5000"}})
    with pytest.raises(errors.DeadlineExceeded):
        await run(router, chat("slow"), deadline_s=0.6)


def cut_then_fallback(fakes: Fakes, provider: str) -> Router:
    """Model "cut" (on ``provider``) cuts its answer after three words; its fallback "fb" answers."""
    return make_router(
        fakes,
        {
            "cut": {"provider": provider, "upstream_model": "fake-cut-mid-stream", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
    )


@pytest.mark.parametrize("provider", ["oa", "an", "gg"])
async def test_a_cut_after_tokens_ends_with_an_error_and_partial_usage_not_a_fallback(
    fakes: Fakes, provider: str
) -> None:
    router = cut_then_fallback(fakes, provider)
    events = await run(router, chat("cut"))
    assert started(events).model == "cut"
    assert text(events) == "Hello from fake-cut-mid-stream"
    failed = events[-1]
    assert isinstance(failed, StreamFailed)
    assert failed.code == 14 and failed.reason == "PROVIDER_STREAM_CUT" and "incomplete" in failed.message
    assert failed.partial_usage.output_tokens > 0 and failed.partial_usage.input_tokens > 0
    assert not any(isinstance(e, RouteCompleted) for e in events)
    assert len(fakes.local.log) == 0  # never spliced with another model's answer


async def test_usage_the_provider_did_not_report_takes_the_prompt_as_counted_once(fakes: Fakes) -> None:
    # The OpenAI fake's cut stream reports no usage: the input is the run's count of the prompt,
    # the caller's when it sent one (the gateway does), else the router's own.
    router = cut_then_fallback(fakes, "oa")
    request = chat("cut", text="one two three four five six")
    failed = (await run(router, request))[-1]
    assert isinstance(failed, StreamFailed) and failed.partial_usage.input_tokens == count_request_tokens(request)
    told = [e async for e in router.generate(chat("cut"), prompt_tokens=123)][-1]
    assert isinstance(told, StreamFailed) and told.partial_usage.input_tokens == 123


async def test_partial_usage_keeps_the_providers_input_count(fakes: Fakes) -> None:
    router = make_router(fakes, {"cut": {"provider": "an", "upstream_model": "fake-reset-mid-stream"}})
    events = await run(router, chat("cut", text="one two three four five six"))
    failed = events[-1]
    assert isinstance(failed, StreamFailed)
    # The fake counts words + 7; message_start reported it before the reset.
    assert failed.partial_usage.input_tokens == 6 + 7


async def test_malformed_stream_before_text_falls_through_transparently(fakes: Fakes) -> None:
    fakes.openai.override = _malformed_at_once
    router = make_router(
        fakes,
        {
            "broken": {"provider": "oa", "upstream_model": "fake-ok", "fallbacks": ["fb"]},
            "fb": {"provider": "an", "upstream_model": "fake-ok"},
        },
    )
    events = await run(router, chat("broken"))
    s = started(events)
    assert s.model == "fb" and s.fallback_path == ("broken (MALFORMED)",)
    assert text(events) == "Hello from fake-ok."


async def _malformed_at_once(request: Any) -> Any:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: {this is not json\n\n"

    return fake_openai.Response(headers={"content-type": "text/event-stream"}, stream=body())


@pytest.mark.parametrize("provider", ["oa", "an", "gg"])
async def test_tool_call_deltas_end_as_valid_json_in_completed(fakes: Fakes, provider: str) -> None:
    router = make_router(
        fakes,
        {
            "tooled": {"provider": provider, "upstream_model": "fake-tools", "capabilities": ["tools"]},
        },
    )
    tools = (Tool("get_weather", "w"), Tool("get_time", "t"))
    events = await run(router, chat("tooled", tools=tools))
    done = events[-1]
    assert isinstance(done, RouteCompleted) and done.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [(n, a) for _, n, a in TOOL_CALLS]


async def test_a_second_deployment_takes_the_retry_at_once(fakes: Fakes) -> None:
    providers = fakes.providers()
    catalog = parse_catalog(
        {
            "providers": providers,
            "models": {
                "m": {
                    "provider": "oa",
                    "upstream_model": "fake-ok",
                    "deployments": [
                        {"name": "dead", "provider": "dead", "weight": 1000},
                        {"name": "live", "weight": 1},
                    ],
                },
            },
        },
        env={},
    )
    sleeps = Sleeps()
    router = keep(Router(catalog, {"openai_compat": OpenAICompatAdapter()}, sleep=sleeps, rng=random.Random(1)))
    before = router.balancer.shares(catalog.models["m"].deployments)["dead/m/dead"]
    events = await run(router, chat("m"))
    s = started(events)
    assert s.deployment == "oa/m/live" and s.attempt_count == 2 and s.fallback_path == ()
    assert sleeps.waits == []
    # The balancer learnt: the dead one's share dropped.
    assert router.balancer.shares(catalog.models["m"].deployments)["dead/m/dead"] < before


async def test_a_deployment_without_its_key_is_skipped_without_a_call(fakes: Fakes) -> None:
    providers = fakes.providers()
    providers["oa"]["api_key_env"] = "FAKE_OA_KEY_NOT_SET"
    catalog = parse_catalog(
        {
            "providers": providers,
            "models": {
                "hosted": {"provider": "oa", "upstream_model": "fake-ok", "fallbacks": ["fb"]},
                "fb": {"provider": "local", "upstream_model": "fake-ok"},
            },
            "routing": {"model_fallback": True},
        },
        env={},
    )
    router = keep(Router(catalog, {"openai_compat": OpenAICompatAdapter()}))
    events = await run(router, chat("hosted"))
    assert started(events).fallback_path == ("hosted (NO_API_KEY)",) and started(events).attempt_count == 1
    assert len(fakes.openai.log) == 0


async def test_auto_returns_the_decision_and_reason(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "s": {"provider": "local", "upstream_model": "fake-ok", "tier": "small"},
            "l": {"provider": "an", "upstream_model": "fake-ok", "tier": "large"},
        },
        tiers={"small": "s", "large": "l"},
    )
    small = started(await run(router, chat("auto", text="hi")))
    assert small.model == "s" and small.decision is not None and small.decision.how == "auto"
    assert small.decision.tier == "small" and small.decision.classifier == "heuristic"
    big = started(
        await run(router, chat("auto", text="Explain why and compare, step by step:\n1. a\n2. b\n```py\nx=1\n```"))
    )
    assert big.model == "l" and big.decision is not None and "code" in big.decision.reason


async def test_cascade_keeps_a_good_small_answer(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "s": {"provider": "local", "upstream_model": "fake-ok", "tier": "small"},
            "l": {"provider": "an", "upstream_model": "fake-ok", "tier": "large"},
        },
        tiers={"small": "s", "large": "l"},
        cascade=True,
    )
    events = await run(router, chat("auto", text="Explain why, compare, step by step:\n1. a\n2. b\n```py\nx=1\n```"))
    s = started(events)
    assert s.model == "s" and s.decision is not None and s.decision.how == "cascade"
    assert "small answer accepted" in s.decision.reason
    assert text(events) == "Hello from fake-ok." and len(fakes.anthropic.log) == 0


async def test_cascade_escalates_when_the_small_answer_fails_validation(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "s": {"provider": "local", "upstream_model": "fake-bad-json", "tier": "small", "capabilities": ["json"]},
            "l": {"provider": "an", "upstream_model": "fake-ok", "tier": "large", "capabilities": ["json"]},
        },
        tiers={"small": "s", "large": "l"},
    )
    fmt = ResponseFormat(
        "json_schema", "a", {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    )
    prompt = "Explain why, compare, step by step:\n1. a\n2. b\n```py\nx=1\n```"
    events = await run(router, chat("auto", text=prompt, response_format=fmt, cascade=True))
    s = started(events)
    assert s.model == "l" and s.attempt_count == 2
    assert s.fallback_path[0].startswith("s (CASCADE_REJECTED: answer is not valid JSON")
    assert json.loads(text(events)) == {"answer": "fake"}
    done = events[-1]
    assert isinstance(done, RouteCompleted) and done.discarded_usage.input_tokens > 0


async def test_closing_the_stream_cancels_the_provider_call(fakes: Fakes) -> None:
    router = make_router(fakes, {"g": {"provider": "an", "upstream_model": "fake-gap-20"}})
    stream = router.generate(chat("g"))
    deltas = 0
    async for event in stream:
        deltas += isinstance(event, TextDelta)
        if deltas == 2:
            break
    await stream.aclose()
    for _ in range(100):
        if fakes.anthropic.stats.streams_aborted_by_client:
            break
        await asyncio.sleep(0.02)
    assert fakes.anthropic.stats.streams_aborted_by_client == 1


async def test_cost_uses_the_catalog_prices_with_cache_reads(fakes: Fakes) -> None:
    router = make_router(
        fakes,
        {
            "c": {
                "provider": "oa",
                "upstream_model": "fake-cached",
                "price_per_1m_tokens": {"input": 2, "output": 10, "cached_input": 1},
            }
        },
    )
    done = (await run(router, chat("c", text="a b c d e f g h i")))[-1]
    assert isinstance(done, RouteCompleted) and done.usage.cached_input_tokens > 0
    u = done.usage
    expected = (u.input_tokens - u.cached_input_tokens) * 2 + u.cached_input_tokens * 1 + u.output_tokens * 10
    assert done.cost_usd_micros == expected


# -- whole answers (Complete) -----------------------------------------------------------


async def run_whole(router: Router, request: ChatRequest) -> list[RouteEvent]:
    return [e async for e in router.generate(request, whole=True)]


def asked_to_stream(server: FakeHTTPServer) -> list[bool]:
    """Whether each request the fake got asked for a stream (Gemini says so in its path)."""
    return [bool(r.json().get("stream")) or ":streamGenerateContent" in r.path for r in server.log if r.body]


@pytest.mark.parametrize("provider", ["oa", "an", "gg"])
async def test_a_whole_answer_is_asked_for_whole_and_says_what_the_stream_says(fakes: Fakes, provider: str) -> None:
    router = make_router(fakes, {"m": {"provider": provider, "upstream_model": "fake-words-7"}})
    server = {"oa": fakes.openai, "an": fakes.anthropic, "gg": fakes.gemini}[provider]
    whole = await run_whole(router, chat("m"))
    streamed = await run(router, chat("m"))
    assert asked_to_stream(server) == [False, True]
    assert started(whole).model == "m" and started(whole).deployment == started(streamed).deployment
    assert text(whole) == text(streamed) and text(whole).split() == [f"w{i}" for i in range(7)]
    done, done_streamed = whole[-1], streamed[-1]
    assert isinstance(done, RouteCompleted) and isinstance(done_streamed, RouteCompleted)
    assert done.usage == done_streamed.usage and done.usage_reported
    assert done.finish_reason == done_streamed.finish_reason and done.cost_usd_micros == done_streamed.cost_usd_micros


@pytest.mark.parametrize("provider", ["oa", "an", "gg"])
async def test_a_whole_answer_cut_mid_body_falls_through_instead_of_failing_mid_answer(
    fakes: Fakes, provider: str
) -> None:
    # Streamed, the same cut is a failure after text (nothing may be spliced); whole, nothing left
    # yet, so the next model answers.
    router = cut_then_fallback(fakes, provider)
    events = await run_whole(router, chat("cut"))
    assert started(events).model == "fb"
    assert "cut (CONNECTION)" in started(events).fallback_path
    assert text(events) == "Hello from fake-ok."
    assert isinstance(events[-1], RouteCompleted)
    assert not any(isinstance(e, StreamFailed) for e in events)


def router_with(fakes: Fakes, models: dict[str, Any], **oa: Any) -> Router:
    """A router whose "oa" provider has ``oa``'s settings."""
    providers = fakes.providers()
    providers["oa"] |= oa
    catalog = parse_catalog({"providers": providers, "models": models, "routing": {"model_fallback": True}}, env={})
    return keep(Router(catalog, {"openai_compat": OpenAICompatAdapter()}, sleep=Sleeps()))


async def test_a_provider_may_ask_for_whole_answers_to_be_streamed(fakes: Fakes) -> None:
    # Streamed, a stall is caught at the first token (first_token_timeout_s) instead of timeout_s.
    router = router_with(
        fakes,
        {
            "stall": {"provider": "oa", "upstream_model": "fake-stall-before-first", "fallbacks": ["m"]},
            "m": {"provider": "oa", "upstream_model": "fake-words-3"},
        },
        stream_whole_answers=True,
        first_token_timeout_s=0.3,
    )
    events = await run_whole(router, chat("stall"))
    assert started(events).fallback_path == ("stall (TIMEOUT)",)
    assert text(events).split() == ["w0", "w1", "w2"] and isinstance(events[-1], RouteCompleted)
    assert asked_to_stream(fakes.openai) == [True, True]


async def test_a_stalled_whole_answer_falls_through_after_the_deployments_timeout(fakes: Fakes) -> None:
    router = router_with(
        fakes,
        {
            "stall": {"provider": "oa", "upstream_model": "fake-stall-before-first", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
        timeout_s=0.3,
    )
    events = await run_whole(router, chat("stall"))
    assert started(events).model == "fb" and isinstance(events[-1], RouteCompleted)
    assert started(events).fallback_path == ("stall (TIMEOUT)",)


async def test_leaving_a_whole_answer_cancels_the_provider_call_and_blames_nobody(fakes: Fakes) -> None:
    router = make_router(fakes, {"g": {"provider": "oa", "upstream_model": "fake-gap-20"}})
    task = asyncio.create_task(run_whole(router, chat("g")))
    for _ in range(100):
        if fakes.openai.stats.requests:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The deployment is not blamed (no failure recorded): it is free and answers the next call.
    health = router.balancer.health(router.catalog.models["g"].deployments[0])
    assert health.in_flight == 0 and health.failures == 0 and health.failure_ewma == 0


async def test_a_whole_answer_may_take_the_rest_of_the_deadline_not_only_its_share(fakes: Fakes) -> None:
    # An interactive request's first model gets half the time to its first token, to leave time
    # for the chain; a whole answer has no first token before it is whole, so it is not cut there.
    router = make_router(
        fakes,
        {
            "long": {"provider": "oa", "upstream_model": "fake-slow-800", "fallbacks": ["fb"]},
            "fb": {"provider": "local", "upstream_model": "fake-ok"},
        },
    )
    deadline = time.monotonic() + 1.4
    events = [e async for e in router.generate(chat("long"), deadline, whole=True)]
    assert started(events).model == "long" and started(events).fallback_path == ()
    assert isinstance(events[-1], RouteCompleted) and len(fakes.local.log) == 0
