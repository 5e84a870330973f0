"""Context-window fitting: what is kept, what is summarised, what is refused, and its invariants."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.common.chat import ChatMessage, ChatRequest, Tool, ToolCall
from tollway.common.tokens import count_fixed_tokens, count_request_tokens
from tollway.gateway.guard.context import SUMMARY_HEADER, MemorySummaryCache, fit_context
from tollway.mesh.errors import InvalidArgument, Unavailable

SYSTEM = ChatMessage("system", "You are a helpful assistant for the billing team.")


def turn(i: int, words: int = 40) -> ChatMessage:
    role = "user" if i % 2 == 0 else "assistant"
    return ChatMessage(role, f"turn {i}: " + " ".join(f"word{i}x{j}" for j in range(words)))


def conversation(n: int, words: int = 40) -> ChatRequest:
    return ChatRequest("m", (SYSTEM, *(turn(i, words) for i in range(n))), max_tokens=100)


class Summariser:
    def __init__(self, text: str = "They discussed invoices.") -> None:
        self.text = text
        self.calls: list[tuple[ChatMessage, ...]] = []

    async def __call__(self, messages: tuple[ChatMessage, ...], max_tokens: int) -> str:
        self.calls.append(messages)
        return self.text


async def test_a_request_that_fits_is_unchanged_and_counted() -> None:
    request = conversation(4)
    fit = await fit_context(request, 4096)
    assert fit.request is request
    assert fit.report.input_tokens_before == fit.report.input_tokens_after == count_request_tokens(request)
    assert not fit.report.trimmed and fit.report.record_text() == ""


async def test_older_turns_are_summarised_keeping_prefix_and_last_turns() -> None:
    request = conversation(30)
    summariser = Summariser()
    fit = await fit_context(request, 1500, summariser=summariser)
    out = fit.request.messages
    assert out[0] == SYSTEM
    assert out[1].role == "system" and out[1].content == SUMMARY_HEADER + "They discussed invoices."
    kept = out[2:]
    assert kept == request.messages[len(request.messages) - len(kept) :]
    assert count_request_tokens(fit.request) + request.max_tokens <= 1500
    assert fit.report.input_tokens_after == count_request_tokens(fit.request)
    assert fit.report.summarised and fit.report.removed_messages == 30 - len(kept)
    summarised = summariser.calls[0]
    assert summarised == request.messages[1 : 1 + fit.report.removed_messages]
    assert fit.report.record_text().startswith(f"summarised {fit.report.removed_messages} messages: ")


async def test_without_a_summariser_older_turns_are_dropped_and_said_so() -> None:
    fit = await fit_context(conversation(30), 1500)
    assert fit.request.messages[0] == SYSTEM and fit.request.messages[1].role == "user"
    assert not fit.report.summarised and fit.report.note == "no summariser"
    assert "dropped" in fit.report.record_text()


async def test_a_failing_summariser_drops_the_turns() -> None:
    async def broken(messages: tuple[ChatMessage, ...], max_tokens: int) -> str:
        raise Unavailable("router down", reason="ROUTER_UNAVAILABLE")

    fit = await fit_context(conversation(30), 1500, summariser=broken)
    assert fit.report.trimmed and not fit.report.summarised
    assert fit.report.note == "summariser failed: ROUTER_UNAVAILABLE"


async def test_an_input_budget_trims_below_the_window() -> None:
    fit = await fit_context(conversation(30), 100_000, input_budget=800, summariser=Summariser())
    assert fit.report.trimmed and fit.report.input_tokens_after <= 800


async def test_a_system_prompt_alone_over_the_window_is_refused() -> None:
    request = ChatRequest("m", (ChatMessage("system", "rule " * 2000), turn(0)), max_tokens=100)
    with pytest.raises(InvalidArgument) as err:
        await fit_context(request, 1000, summariser=Summariser())
    exc = err.value
    assert exc.reason == "CONTEXT_WINDOW_EXCEEDED"
    assert exc.violations[0][0] == "messages[0].content"
    assert "system prompt alone" in exc.message and "1000" in exc.message


async def test_a_last_message_that_cannot_fit_is_refused_not_cut() -> None:
    request = ChatRequest("m", (SYSTEM, turn(0), ChatMessage("user", "long " * 3000)), max_tokens=100)
    with pytest.raises(InvalidArgument) as err:
        await fit_context(request, 2000, summariser=Summariser())
    assert err.value.violations[0][0] == "messages[2].content"


async def test_a_tool_call_is_never_separated_from_its_results() -> None:
    call = ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "lookup", '{"q": "x"}'), ToolCall("c2", "f", "{}")))
    results = (
        ChatMessage("tool", "result one " * 30, tool_call_id="c1"),
        ChatMessage("tool", "result two " * 30, tool_call_id="c2"),
    )
    messages = (SYSTEM, *(turn(i) for i in range(10)), call, *results, ChatMessage("user", "and so?"))
    request = ChatRequest("m", messages, max_tokens=50)
    total = count_request_tokens(request) + 50
    for window in range(total - 400, total, 7):
        fit = await fit_context(request, window, summariser=Summariser())
        out = fit.request.messages
        for i, m in enumerate(out):
            if m.role == "tool":
                j = i
                while out[j].role == "tool":
                    j -= 1
                assert out[j].tool_calls, window


async def test_summaries_are_cached_per_prefix_and_extended_incrementally() -> None:
    cache = MemorySummaryCache()
    summariser = Summariser()
    request = conversation(30)
    first = await fit_context(request, 1500, summariser=summariser, cache=cache)
    again = await fit_context(request, 1500, summariser=summariser, cache=cache)
    assert len(summariser.calls) == 1 and again.report.summary_cached
    assert again.request == first.request
    # The conversation grows: the cached summary is folded in with the turns after it.
    longer = dataclasses.replace(request, messages=(*request.messages, turn(30), turn(31), turn(32), turn(33)))
    grown = await fit_context(longer, 1500, summariser=summariser, cache=cache)
    assert len(summariser.calls) == 2 and not grown.report.summary_cached
    folded = summariser.calls[1]
    assert folded[0].role == "system" and folded[0].content.startswith(SUMMARY_HEADER)
    assert folded[1] == request.messages[1 + first.report.removed_messages]


def test_memory_cache_is_bounded() -> None:
    cache = MemorySummaryCache(max_entries=2)
    for k in "abc":
        cache.put(k, k.upper())
    assert cache.longest(["a"]) is None and cache.longest(["a", "b", "c"]) == (2, "C")


# --- properties ---------------------------------------------------------------------------------

_message = st.one_of(
    st.builds(lambda n: ChatMessage("user", "u " * n), st.integers(1, 120)),
    st.builds(lambda n: ChatMessage("assistant", "a " * n), st.integers(1, 120)),
    st.builds(
        lambda n, k: (
            ChatMessage("assistant", "", tool_calls=tuple(ToolCall(f"c{i}", "t", "{}") for i in range(k))),
            *(ChatMessage("tool", "r " * n, tool_call_id=f"c{i}") for i in range(k)),
        ),
        st.integers(1, 60),
        st.integers(1, 3),
    ),
)


def _flatten(items: Sequence[ChatMessage | tuple[ChatMessage, ...]]) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    for item in items:
        out.extend(item if isinstance(item, tuple) else (item,))
    return tuple(out)


@settings(max_examples=120, deadline=None)
@given(
    items=st.lists(_message, min_size=1, max_size=25),
    system_words=st.integers(0, 80),
    window=st.integers(200, 3000),
    summarise=st.booleans(),
)
async def test_trimming_invariants(
    items: list[ChatMessage | tuple[ChatMessage, ...]], system_words: int, window: int, summarise: bool
) -> None:
    prefix = (ChatMessage("system", "s " * system_words),) if system_words else ()
    messages = (*prefix, *_flatten(items), ChatMessage("user", "last question?"))
    request = ChatRequest("m", messages, max_tokens=64)
    try:
        fit = await fit_context(request, window, summariser=Summariser() if summarise else None)
    except InvalidArgument as exc:
        assert exc.reason == "CONTEXT_WINDOW_EXCEEDED"
        return
    out = fit.request.messages
    # It fits, and the report's count is the real one.
    assert count_request_tokens(fit.request) + 64 <= window
    assert fit.report.input_tokens_after == count_request_tokens(fit.request)
    # The static prefix is first and verbatim; the last message is always kept.
    assert out[: len(prefix)] == prefix
    assert out[-1] == messages[-1]
    # What follows the (optional) summary is a verbatim suffix of the conversation.
    rest = out[len(prefix) :]
    if fit.report.summarised:
        assert rest[0].content.startswith(SUMMARY_HEADER)
        rest = rest[1:]
    assert rest == messages[len(messages) - len(rest) :]
    assert fit.report.removed_messages == len(messages) - len(prefix) - len(rest)
    # No tool result without the call that asked for it.
    if rest:
        assert rest[0].role != "tool"


@pytest.mark.parametrize("with_tools", [False, True])
def test_the_fixed_part_is_the_request_counted_without_its_turns(with_tools: bool) -> None:
    tools = (Tool("lookup", "Finds an order", {"type": "object", "properties": {"id": {"type": "string"}}}),)
    request = ChatRequest(
        model="m", messages=(ChatMessage("user", "where is my order 42?"),), tools=tools if with_tools else ()
    )
    assert count_fixed_tokens(request) == count_request_tokens(dataclasses.replace(request, messages=()))
    assert count_request_tokens(request) > count_fixed_tokens(request)
