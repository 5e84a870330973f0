"""Token counting when a provider does not report usage (llama.cpp streaming, cut streams)."""

from __future__ import annotations

import functools

import quicktok


@functools.cache
def _encoding(name: str) -> quicktok.Tokenizer:
    return quicktok.get_encoding(name)


def count_tokens(text: str, encoding: str = "o200k_base") -> int:
    """Exact token count of ``text`` under ``encoding`` (tiktoken-compatible)."""
    return _encoding(encoding).count(text)


def count_prompt_tokens(messages: list[tuple[str, str]], encoding: str = "o200k_base") -> int:
    """Prompt tokens of a chat, with the per-message framing chat templates add (~3 a turn)."""
    return sum(count_tokens(content, encoding) + 3 for _, content in messages) + 3
