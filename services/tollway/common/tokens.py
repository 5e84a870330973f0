"""Token counting with the model's tokenizer, shared by every service that counts.

The router counts when a provider reports no usage (llama.cpp streaming, cut streams) and
to classify prompts; the gateway counts the prompt it reserves budget for. Both must get
the same number for the same chat, so the counting lives here once (services may not
import each other).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable

import quicktok

from tollway.common.chat import ChatRequest

DEFAULT_ENCODING = "o200k_base"
# Chat templates wrap each turn in a few tokens and prime the answer with a few more.
PER_MESSAGE_TOKENS = 3
PER_REPLY_TOKENS = 3


@functools.cache
def _encoding(name: str) -> quicktok.Tokenizer:
    return quicktok.get_encoding(name)


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Exact token count of ``text`` under ``encoding`` (tiktoken-compatible)."""
    return _encoding(encoding).count(text)


def count_prompt_tokens(messages: Iterable[tuple[str, str]], encoding: str = DEFAULT_ENCODING) -> int:
    """Prompt tokens of ``(role, content)`` turns, with the framing chat templates add."""
    enc = _encoding(encoding)
    return sum(enc.count(content) + PER_MESSAGE_TOKENS for _, content in messages) + PER_REPLY_TOKENS


def count_request_tokens(request: ChatRequest, encoding: str = DEFAULT_ENCODING) -> int:
    """Prompt tokens of a whole request: the turns as :func:`count_prompt_tokens` counts
    them, plus author names, the tool calls in the history and the tool schemas offered
    (providers bill all of them as input)."""
    enc = _encoding(encoding)
    total = count_prompt_tokens(((m.role, m.content) for m in request.messages), encoding)
    for m in request.messages:
        if m.name:
            total += enc.count(m.name)
        for call in m.tool_calls:
            total += enc.count(call.name) + enc.count(call.arguments)
    return total + _tools_tokens(request, enc)


def count_fixed_tokens(request: ChatRequest, encoding: str = DEFAULT_ENCODING) -> int:
    """What :func:`count_request_tokens` counts besides the turns: the answer's framing and the
    tool schemas offered (the request's cost with no turns)."""
    return PER_REPLY_TOKENS + _tools_tokens(request, _encoding(encoding))


def _tools_tokens(request: ChatRequest, enc: quicktok.Tokenizer) -> int:
    return sum(
        enc.count(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}))
        for t in request.tools
    )
