"""Context-window management: fit a conversation into the model's window before the call.

When the prompt plus ``max_tokens`` would not fit the model's context window (or the input
budget the caller allows), the older part of the conversation is replaced by a summary:

- the leading system turns (the static prefix) are kept verbatim and first, so providers'
  prompt caches keep hitting;
- the most recent turns are kept verbatim, as many as fit;
- the turns in between are summarised by a :data:`Summariser` (the gateway passes one that
  asks the router's cheapest tier), and the summary goes in as one system turn right after
  the prefix. Without a summariser, or when it fails, they are dropped, and the report says so;
- a turn is never cut in the middle, and an assistant turn that calls tools is kept or
  dropped together with the tool results that answer it;
- a system prefix that alone does not fit, or a last turn that cannot fit beside it, is
  refused (INVALID_ARGUMENT ``CONTEXT_WINDOW_EXCEEDED``), never cut.

Summaries are cached per conversation prefix (a hash chain over the summarised turns): the
next request of a growing conversation finds the summary of the longest prefix it shares
and asks only for the turns after it to be folded in.

Tokens are counted with :mod:`tollway.common.tokens`, the counter the budget estimate and
the router use, so "fits" here means "fits" there.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from tollway.common import tokens
from tollway.common.chat import ChatMessage, ChatRequest
from tollway.mesh.errors import InvalidArgument, TollwayError
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.gateway.guard")

__all__ = ["ContextFit", "MemorySummaryCache", "Summariser", "SummaryCache", "TrimReport", "fit_context"]

Summariser = Callable[[tuple[ChatMessage, ...], int], Awaitable[str]]
"""Summarises turns: ``(turns, max_summary_tokens) -> summary text``. The turns may begin
with a system turn holding an earlier summary, to be folded in."""

SUMMARY_HEADER = "Summary of the earlier part of this conversation (older turns were condensed to fit the context):\n"
_PREFIX_ROLES = frozenset({"system", "developer"})


class SummaryCache(Protocol):
    """Where summaries are kept between requests (in memory, or Redis through the gateway's store)."""

    def longest(self, keys: Sequence[str]) -> tuple[int, str] | None:
        """The summary of the longest prefix whose key is in ``keys`` (ordered shortest first),
        as ``(index into keys, summary)``; None when there is none. One round trip for a store."""
        ...

    def put(self, key: str, summary: str) -> None:
        """Keeps ``summary`` under ``key``."""
        ...


class MemorySummaryCache:
    """A bounded in-process :class:`SummaryCache` (least recently used out first)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[str, str] = collections.OrderedDict()

    def longest(self, keys: Sequence[str]) -> tuple[int, str] | None:
        for i in range(len(keys) - 1, -1, -1):
            summary = self._entries.get(keys[i])
            if summary is not None:
                self._entries.move_to_end(keys[i])
                return i, summary
        return None

    def put(self, key: str, summary: str) -> None:
        self._entries[key] = summary
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@frozen
class TrimReport:
    """What fitting the context did, for the call record.

    Attributes:
        input_tokens_before: The prompt's tokens as sent by the caller.
        input_tokens_after: The prompt's tokens as sent on (equal when nothing was trimmed);
            the budget estimate can use it instead of counting again.
        limit_tokens: The most the prompt could have: window (or input budget) minus max_tokens.
        removed_messages: Older turns taken out (summarised or dropped).
        summarised: Whether a summary replaced them (False: dropped).
        summary_tokens: The summary turn's tokens (0 without one).
        summary_cached: Whether the summary came from the cache (in full).
        note: Why turns were dropped without a summary ("no summariser", "summariser failed: ...").
    """

    input_tokens_before: int
    input_tokens_after: int
    limit_tokens: int
    removed_messages: int = 0
    summarised: bool = False
    summary_tokens: int = 0
    summary_cached: bool = False
    note: str = ""

    @property
    def trimmed(self) -> bool:
        """Whether any turn was removed."""
        return self.removed_messages > 0

    @property
    def tokens_saved(self) -> int:
        """Prompt tokens not sent thanks to the trim."""
        return self.input_tokens_before - self.input_tokens_after

    def record_text(self) -> str:
        """One call-record field: "" when nothing was trimmed, else what and how."""
        if not self.trimmed:
            return ""
        how = "summarised" if self.summarised else "dropped"
        text = f"{how} {self.removed_messages} messages: {self.input_tokens_before}->{self.input_tokens_after} tokens"
        if self.summarised:
            text += f" (summary {self.summary_tokens}{', cached' if self.summary_cached else ''})"
        if self.note:
            text += f" ({self.note})"
        return text


@frozen
class ContextFit:
    """The request to send on, and what was done to it."""

    request: ChatRequest
    report: TrimReport


def _message_tokens(m: ChatMessage, encoding: str) -> int:
    # Must add up to tokens.count_request_tokens: content + per-message framing + name + tool calls.
    n = tokens.count_tokens(m.content, encoding) + tokens.PER_MESSAGE_TOKENS
    if m.name:
        n += tokens.count_tokens(m.name, encoding)
    for call in m.tool_calls:
        n += tokens.count_tokens(call.name, encoding) + tokens.count_tokens(call.arguments, encoding)
    return n


def _units(messages: Sequence[ChatMessage], start: int) -> list[tuple[int, int]]:
    """``messages[start:]`` as ``[begin, end)`` spans that are kept or removed whole: an
    assistant turn with tool calls together with the tool turns that follow it, else one turn."""
    spans: list[tuple[int, int]] = []
    i = start
    while i < len(messages):
        j = i + 1
        if messages[i].tool_calls:
            while j < len(messages) and messages[j].role == "tool":
                j += 1
        spans.append((i, j))
        i = j
    return spans


def _chain(messages: Sequence[ChatMessage], prefix_end: int, units: Sequence[tuple[int, int]]) -> list[str]:
    """Cache keys of the summarised block after each unit: a hash chain seeded with the prefix,
    so a key names exactly the conversation up to that unit."""
    h = hashlib.sha256()
    for m in messages[:prefix_end]:
        _feed(h, m)
    keys = []
    for b, e in units:
        for m in messages[b:e]:
            _feed(h, m)
        keys.append("ctx:" + h.copy().hexdigest()[:40])
    return keys


def _feed(h: hashlib._Hash, m: ChatMessage) -> None:
    for part in (m.role, m.name, m.content, m.tool_call_id, *(c.id + c.name + c.arguments for c in m.tool_calls)):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part.encode())


async def fit_context(
    request: ChatRequest,
    context_window: int,
    *,
    summariser: Summariser | None = None,
    cache: SummaryCache | None = None,
    input_budget: int | None = None,
    summary_max_tokens: int = 512,
    encoding: str = tokens.DEFAULT_ENCODING,
) -> ContextFit:
    """Fits ``request`` into ``context_window`` tokens (prompt plus ``request.max_tokens``).

    Args:
        request: The request as it would go to the router.
        context_window: The model's window in tokens (``tollway.common.catalog.Model.context_window``).
        summariser: Condenses older turns; None drops them instead.
        cache: Keeps summaries per conversation prefix; None summarises every time.
        input_budget: A further cap on prompt tokens (what the conversation's budget has left).
        summary_max_tokens: The longest summary asked for.
        encoding: The tokenizer.

    Returns:
        The request unchanged when it fits (the report still counts its tokens), else one
        whose older turns are summarised or dropped.

    Raises:
        InvalidArgument: CONTEXT_WINDOW_EXCEEDED when the system prefix alone, or the prefix
            with the last turn, does not fit (the violation names the turns).
    """
    messages = request.messages
    max_out = max(0, request.max_tokens)
    limit = context_window - max_out
    if input_budget is not None:
        limit = min(limit, input_budget)
    fixed = tokens.count_fixed_tokens(request, encoding)
    costs = [_message_tokens(m, encoding) for m in messages]
    before = fixed + sum(costs)
    if before <= limit:
        return ContextFit(request, TrimReport(before, before, limit))

    prefix_end = 0
    while prefix_end < len(messages) and messages[prefix_end].role in _PREFIX_ROLES:
        prefix_end += 1
    base = fixed + sum(costs[:prefix_end])
    if base > limit:
        field = "messages[0].content" if prefix_end <= 1 else f"messages[0:{prefix_end}]"
        raise InvalidArgument(
            f"the system prompt alone is {base} tokens; with max_tokens {max_out} it does not fit the model's "
            f"context window of {context_window} tokens{_budget_note(input_budget)}; shorten the system prompt "
            "or lower max_tokens",
            [(field, f"{base} tokens, over the {limit} the window leaves for the prompt")],
            reason="CONTEXT_WINDOW_EXCEEDED",
            metadata={"context_window": str(context_window), "prompt_tokens": str(base), "max_tokens": str(max_out)},
        )
    units = _units(messages, prefix_end)
    last_b, last_e = units[-1]
    last_cost = sum(costs[last_b:last_e])
    if base + last_cost > limit:
        raise InvalidArgument(
            f"the last message ({last_cost} tokens) does not fit beside the system prompt ({base} tokens) and "
            f"max_tokens {max_out} in the model's context window of {context_window} tokens"
            f"{_budget_note(input_budget)}; shorten it or lower max_tokens",
            [(f"messages[{last_b}].content", f"{last_cost} tokens; at most {limit - base} fit")],
            reason="CONTEXT_WINDOW_EXCEEDED",
            metadata={"context_window": str(context_window), "prompt_tokens": str(before), "max_tokens": str(max_out)},
        )

    # Room kept for the summary turn; less when the last turn needs it (it always stays).
    reserve = 0
    if summariser is not None:
        header = tokens.count_tokens(SUMMARY_HEADER, encoding) + tokens.PER_MESSAGE_TOKENS
        reserve = min(summary_max_tokens + header, limit - base - last_cost)
    room = limit - base - reserve
    kept_from = len(units)
    used = 0
    for k in range(len(units) - 1, -1, -1):
        b, e = units[k]
        cost = sum(costs[b:e])
        if used + cost > room and k != len(units) - 1:
            break
        used += cost
        kept_from = k
    removed_units = units[:kept_from]
    removed_b, removed_e = prefix_end, units[kept_from][0]

    summary_turn: ChatMessage | None = None
    summary_cost = 0
    cached = False
    note = "no summariser" if summariser is None else ""
    if summariser is not None and removed_units:
        keys = _chain(messages, prefix_end, removed_units)
        try:
            summary, cached = await _summary(messages, removed_units, keys, summariser, cache, summary_max_tokens)
        except TollwayError as exc:
            log.warning("context summary failed; older turns dropped: %s", exc.message)
            summary, note = "", f"summariser failed: {exc.reason}"
        if summary:
            turn = ChatMessage("system", SUMMARY_HEADER + summary)
            cost = _message_tokens(turn, encoding)
            if base + used + cost <= limit:
                summary_turn, summary_cost = turn, cost
            else:
                note = f"summary of {cost} tokens did not fit"

    kept = messages[removed_e:]
    new_messages = (*messages[:prefix_end], *((summary_turn,) if summary_turn else ()), *kept)
    after = base + summary_cost + used
    report = TrimReport(
        before,
        after,
        limit,
        removed_messages=removed_e - removed_b,
        summarised=summary_turn is not None,
        summary_tokens=summary_cost,
        summary_cached=cached,
        note=note,
    )
    return ContextFit(dataclasses.replace(request, messages=new_messages), report)


async def _summary(
    messages: Sequence[ChatMessage],
    units: Sequence[tuple[int, int]],
    keys: Sequence[str],
    summariser: Summariser,
    cache: SummaryCache | None,
    max_tokens: int,
) -> tuple[str, bool]:
    """The summary of ``units``, from the cache when it holds it, else folded from the longest
    cached prefix plus the turns after it. Returns ``(summary, came wholly from the cache)``."""
    hit = cache.longest(keys) if cache is not None else None
    if hit is not None and hit[0] == len(keys) - 1:
        return hit[1], True
    start = units[0][0]
    earlier: tuple[ChatMessage, ...] = ()
    if hit is not None:
        earlier = (ChatMessage("system", SUMMARY_HEADER + hit[1]),)
        start = units[hit[0] + 1][0]
    summary = (await summariser((*earlier, *messages[start : units[-1][1]]), max_tokens)).strip()
    if summary and cache is not None:
        cache.put(keys[-1], summary)
    return summary, False


def _budget_note(input_budget: int | None) -> str:
    return "" if input_budget is None else f" (or the conversation's remaining budget of {input_budget} tokens)"
