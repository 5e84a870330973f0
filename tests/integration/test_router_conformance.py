"""One conformance suite every provider adapter passes, against its wire-exact fake.

Each case runs for OpenAI-compatible, Anthropic and Gemini: the same neutral request,
the same expected events, errors classified the same way with the provider's message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import tollway
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import gemini as fake_gemini
from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import free_port
from tests.fakes.scenarios import TOOL_CALLS
from tollway.common.catalog import Deployment
from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, TextDelta, Tool, ToolCall, Usage
from tollway.router.providers.anthropic import AnthropicAdapter
from tollway.router.providers.base import ProviderAdapter
from tollway.router.providers.gemini import GeminiAdapter
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.tools import ToolCallAssembler
from tollway.router.types import ErrorKind, ProviderError, StreamEnd, StreamEvent, ToolCallDelta, UsageUpdate


@dataclasses.dataclass
class Wire:
    name: str
    make_server: Callable[[], FakeHTTPServer]
    make_adapter: Callable[[], ProviderAdapter]
    path: str  # appended to the fake's root for the deployment's base_url


WIRES = [
    Wire("openai_compat", fake_openai.make_server, OpenAICompatAdapter, "/v1"),
    Wire("anthropic", fake_anthropic.make_server, AnthropicAdapter, ""),
    Wire("gemini", fake_gemini.make_server, GeminiAdapter, "/v1beta"),
]


@dataclasses.dataclass
class Harness:
    wire: Wire
    server: FakeHTTPServer
    adapter: ProviderAdapter

    def deployment(self, model: str, **kw: Any) -> Deployment:
        base = f"http://127.0.0.1:{self.server.port}{self.wire.path}"
        return Deployment(
            provider=f"fake-{self.wire.name}",
            base_url=base,
            upstream_model=model,
            model=model,
            wire=self.wire.name,
            timeout_s=kw.pop("timeout_s", 5.0),
            **kw,
        )


@pytest.fixture(params=WIRES, ids=lambda w: w.name)
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    wire: Wire = request.param
    server = wire.make_server()
    await server.start()
    adapter = wire.make_adapter()
    yield Harness(wire, server, adapter)
    await adapter.aclose()
    await server.kill()


def chat(model: str = "fake-ok", **kw: Any) -> ChatRequest:
    messages = kw.pop("messages", (ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello please")))
    return ChatRequest(model=model, messages=messages, request_id=kw.pop("request_id", "req-1"), **kw)


async def collect(h: Harness, model: str, **kw: Any) -> list[StreamEvent]:
    dep_kw = kw.pop("dep", {})
    return [e async for e in h.adapter.stream(chat(model, **kw), h.deployment(model, **dep_kw))]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def fails(h: Harness, model: str, **kw: Any) -> tuple[ProviderError, list[StreamEvent]]:
    seen: list[StreamEvent] = []
    with pytest.raises(ProviderError) as info:
        dep_kw = kw.pop("dep", {})
        async for event in h.adapter.stream(chat(model, **kw), h.deployment(model, **dep_kw)):
            seen.append(event)
    return info.value, seen


WEATHER = Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = Tool("get_time", "Time in a zone", {"type": "object", "properties": {"tz": {"type": "string"}}})


# -- answers -------------------------------------------------------------------------


async def test_streams_text_then_one_end_with_usage(h: Harness) -> None:
    events = await collect(h, "fake-words-6")
    assert text_of(events) == "".join(f"w{i} " for i in range(6))
    ends = [e for e in events if isinstance(e, StreamEnd)]
    assert len(ends) == 1 and events[-1] is ends[0]
    assert ends[0].finish_reason == "stop"
    assert ends[0].usage is not None and ends[0].usage.output_tokens >= 6 and ends[0].usage.input_tokens > 0


async def test_deltas_arrive_one_by_one(h: Harness) -> None:
    stream = h.adapter.stream(chat("fake-gap-50", max_tokens=3), h.deployment("fake-gap-50"))
    first = None
    async for event in stream:
        if isinstance(event, TextDelta):
            first = event.text
            break
    await stream.aclose()
    assert first == "tick0 "


async def test_complete_returns_the_whole_answer(h: Harness) -> None:
    done = await h.adapter.complete(chat("fake-ok"), h.deployment("fake-ok"))
    assert done.text == "Hello from fake-ok."
    assert done.finish_reason == "stop" and done.usage is not None and done.usage.output_tokens > 0


async def test_max_tokens_reached_is_length(h: Harness) -> None:
    events = await collect(h, "fake-words-50", max_tokens=5)
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "length"
    assert text_of(events) == "w0 w1 w2 w3 w4 "


async def test_no_usage_ends_without_usage(h: Harness) -> None:
    events = await collect(h, "fake-no-usage")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    if h.wire.name == "anthropic":
        # message_start always carries input usage; only the output count is missing.
        assert end.usage is not None and end.usage.input_tokens > 0
    else:
        assert end.usage is None


async def test_cached_prompt_tokens_are_reported(h: Harness) -> None:
    events = await collect(h, "fake-cached")
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None
    assert 0 < end.usage.cached_input_tokens <= end.usage.input_tokens


async def test_tool_call_fragments_reassemble_into_valid_json(h: Harness) -> None:
    events = await collect(h, "fake-tools", tools=(WEATHER, TIME))
    assembler = ToolCallAssembler()
    for e in events:
        if isinstance(e, ToolCallDelta):
            assembler.add(e)
    calls = assembler.calls()
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [(n, a) for _, n, a in TOOL_CALLS]
    assert all(c.id for c in calls)
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "tool_calls"
    if h.wire.name != "gemini":  # Gemini sends each call whole; the others split the JSON
        assert sum(isinstance(e, ToolCallDelta) for e in events) > 2 * len(TOOL_CALLS)


async def test_complete_returns_tool_calls_with_valid_json(h: Harness) -> None:
    done = await h.adapter.complete(chat("fake-tools", tools=(WEATHER, TIME)), h.deployment("fake-tools"))
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [(n, a) for _, n, a in TOOL_CALLS]
    assert done.finish_reason == "tool_calls"


async def test_json_schema_answer_is_json_matching_it(h: Harness) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
        "additionalProperties": False,
    }
    fmt = ResponseFormat("json_schema", "weather", schema)
    events = await collect(h, "fake-ok", response_format=fmt)
    assert set(json.loads(text_of(events))) == {"city", "temp_c"}
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "stop"
    done = await h.adapter.complete(chat("fake-ok", response_format=fmt), h.deployment("fake-ok"))
    assert set(json.loads(done.text)) == {"city", "temp_c"}


async def test_multi_turn_with_tool_results_is_accepted(h: Harness) -> None:
    call = ToolCall("call_w1", "get_weather", '{"city": "Paris"}')
    messages = (
        ChatMessage("system", "Use tools."),
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temp_c": 21}', tool_call_id="call_w1"),
        ChatMessage("tool", "sunny", tool_call_id="call_w1"),
        ChatMessage("user", "Thanks, and summarise.", cache_breakpoint=True),
    )
    events = await collect(h, "fake-ok", messages=messages, tools=(WEATHER,))
    assert text_of(events) == "Hello from fake-ok."


# -- failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST),
        (401, ErrorKind.AUTH),
        (403, ErrorKind.AUTH),
        (404, ErrorKind.NOT_FOUND),
        (408, ErrorKind.TIMEOUT),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVER_ERROR),
        (503, ErrorKind.OVERLOADED),
    ],
)
async def test_http_errors_are_classified_with_the_providers_message(h: Harness, status: int, kind: ErrorKind) -> None:
    err, seen = await fails(h, f"fake-{status}")
    assert not seen
    assert err.kind is kind and err.status == status
    assert err.retryable == (status in (408, 429, 500, 503))
    assert f"scenario fake-{status}" in err.message  # the provider's own words
    if status == 429:
        assert err.retry_after_s == 1.0


async def test_overloaded_529_is_retryable(h: Harness) -> None:
    if h.wire.name != "anthropic":
        pytest.skip("529 is Anthropic's")
    err, _ = await fails(h, "fake-529")
    assert err.kind is ErrorKind.OVERLOADED and err.retryable and err.retry_after_s == 1.0


async def test_complete_classifies_errors_too(h: Harness) -> None:
    with pytest.raises(ProviderError) as info:
        await h.adapter.complete(chat("fake-429"), h.deployment("fake-429"))
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after_s == 1.0


@pytest.mark.parametrize("model", ["fake-cut-mid-stream", "fake-reset-mid-stream"])
async def test_connection_lost_mid_stream_fails_after_the_deltas(h: Harness, model: str) -> None:
    err, seen = await fails(h, model)
    assert text_of(seen) == "Hello from " + model
    assert err.kind is ErrorKind.CONNECTION and err.retryable


async def test_malformed_sse_is_malformed(h: Harness) -> None:
    err, seen = await fails(h, "fake-malformed-sse")
    assert text_of(seen) == "Hello from"
    assert err.kind is ErrorKind.MALFORMED and "not json" in err.message


async def test_error_event_mid_stream_is_retryable(h: Harness) -> None:
    err, seen = await fails(h, "fake-stream-error")
    assert text_of(seen).startswith("Hello")
    assert err.retryable and ("stream error" in err.message or "HTTP 500" in err.message)


async def whole_fails(h: Harness, model: str, **dep: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await h.adapter.complete(chat(model), h.deployment(model, **dep))
    return info.value


# A whole answer (what the router asks for when its caller wants one, `Complete`) fails the way the
# same stream does, only before anything leaves: every failure is one the router can still retry.


@pytest.mark.parametrize("model", ["fake-cut-mid-stream", "fake-reset-mid-stream"])
async def test_a_whole_answer_cut_mid_body_is_a_connection_failure(h: Harness, model: str) -> None:
    err = await whole_fails(h, model)
    assert err.kind is ErrorKind.CONNECTION and err.retryable, err


async def test_a_whole_answer_that_is_not_json_is_malformed(h: Harness) -> None:
    err = await whole_fails(h, "fake-malformed-sse")
    assert err.kind is ErrorKind.MALFORMED, err


async def test_a_whole_answer_failing_while_generated_is_a_retryable_server_error(h: Harness) -> None:
    err = await whole_fails(h, "fake-stream-error")
    assert err.kind is ErrorKind.SERVER_ERROR and err.retryable and err.status == 500, err


@pytest.mark.parametrize("model", ["fake-stall-before-first", "fake-stall-mid-stream"])
async def test_a_stopped_provider_times_out_a_whole_answer_after_timeout_s(h: Harness, model: str) -> None:
    err = await whole_fails(h, model, timeout_s=0.2)
    assert err.kind is ErrorKind.TIMEOUT and err.retryable and "0.2" in err.message, err


@pytest.mark.parametrize("model", ["fake-ok", "fake-words-7", "fake-long", "fake-cached"])
async def test_a_whole_answer_says_what_the_same_stream_says(h: Harness, model: str) -> None:
    events = await collect(h, model, max_tokens=5 if model == "fake-long" else 0)
    whole = await h.adapter.complete(chat(model, max_tokens=5 if model == "fake-long" else 0), h.deployment(model))
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert whole.text == text_of(events)
    assert whole.finish_reason == end.finish_reason
    if end.usage is not None:
        assert whole.usage is not None
        assert whole.usage.input_tokens == end.usage.input_tokens
        assert whole.usage.output_tokens == end.usage.output_tokens
        assert whole.usage.cached_input_tokens == end.usage.cached_input_tokens


async def test_slow_first_byte_times_out(h: Harness) -> None:
    err, seen = await fails(h, "fake-slow-2000", dep={"timeout_s": 0.2})
    assert not seen and err.kind is ErrorKind.TIMEOUT and err.retryable


async def test_refused_connection_is_retryable(h: Harness) -> None:
    port = free_port()
    dep = dataclasses.replace(h.deployment("fake-ok"), base_url=f"http://127.0.0.1:{port}{h.wire.path}")
    with pytest.raises(ProviderError) as info:
        async for _ in h.adapter.stream(chat(), dep):
            pass
    assert info.value.kind is ErrorKind.CONNECTION and str(port) in info.value.message


async def test_closing_the_stream_closes_the_provider_connection(h: Harness) -> None:
    stream = h.adapter.stream(chat("fake-gap-20"), h.deployment("fake-gap-20"))
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    for _ in range(100):
        if h.server.stats.streams_aborted_by_client:
            break
        await asyncio.sleep(0.02)
    assert h.server.stats.streams_aborted_by_client == 1


TOLLWAY_SOURCES = str(Path(tollway.__file__).parent)


async def test_no_generator_is_left_for_the_event_loop_to_close(h: Harness) -> None:
    # A generator dropped unfinished is closed by the loop's finalizer hook: a thread-safe
    # wakeup and a task per generator, on every request. Every layer must close its own.
    gc.collect()  # what earlier tests left is finalized before the count starts
    first, finalizer = sys.get_asyncgen_hooks()
    # Only Tollway's generators this test started count. By id: a generator's weak references are gone by the
    # time its finalizer runs, and no object started here can share an address with an older one alive.
    mine: set[int] = set()
    dropped: list[str] = []

    def started(agen: Any) -> None:
        if agen.ag_code.co_filename.startswith(TOLLWAY_SOURCES):  # not the fake provider's, on this loop too
            mine.add(id(agen))
        if first is not None:
            first(agen)

    def hook(agen: Any) -> None:
        if id(agen) in mine:
            dropped.append(agen.__qualname__)
        if finalizer is not None:
            finalizer(agen)

    sys.set_asyncgen_hooks(started, hook)
    try:
        for _ in range(3):
            assert isinstance((await collect(h, "fake-words-3"))[-1], StreamEnd)
        stream = h.adapter.stream(chat("fake-gap-20"), h.deployment("fake-gap-20"))
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()
        await fails(h, "fake-cut-mid-stream")
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(first, finalizer)
    assert dropped == []


async def test_usage_updates_are_cumulative_snapshots(h: Harness) -> None:
    events = await collect(h, "fake-words-3")
    updates = [e.usage for e in events if isinstance(e, UsageUpdate)]
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None
    for u in updates:
        assert isinstance(u, Usage) and u.input_tokens == end.usage.input_tokens


async def test_request_id_and_key_reach_the_provider(h: Harness) -> None:
    await collect(h, "fake-ok", dep={"api_key": "sk-test-123"})
    sent = h.server.log[-1]
    assert sent.headers["x-request-id"] == "req-1"
    assert "sk-test-123" in " ".join(sent.headers.values())


async def test_connections_are_reused_across_calls(h: Harness) -> None:
    for _ in range(5):
        events = await collect(h, "fake-words-3")
        assert isinstance(events[-1], StreamEnd)
    await h.adapter.complete(chat("fake-ok"), h.deployment("fake-ok"))
    assert h.server.stats.connections_accepted == 1
