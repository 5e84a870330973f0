"""Cutting documents into chunks: fixed-size windows, recursive by structure, hierarchical
(children cut by size, or sentence windows).

Every chunk is a slice of the original text, so its formatting (newlines, Markdown, code
indentation) survives. The smallest pieces are *units*: a word (a run of non-space
characters) or a whole fenced code block (```` ``` ```` or ``~~~``). A boundary falls only
between units, so no chunk splits a word or a code block; a unit longer than the limit
becomes a chunk of its own rather than being cut.

Tokens are counted with :func:`tollway.common.tokens.count_tokens` (o200k_base), one unit
at a time with its leading space, which is how a BPE tokenizer sees a word in running text;
the sum can differ from counting a whole chunk by a token or two at boundaries.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from tollway.common.tokens import count_tokens
from tollway.mesh.frozen import frozen
from tollway.retrieval.types import Chunking, ChunkText, Strategy

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]{0,3}\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_WORD = re.compile(r"\S+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A sentence ends at . ! or ? (optionally closed by quotes or brackets) followed by space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@frozen(slots=True)
class _Unit:
    start: int
    end: int
    tokens: int


@functools.lru_cache(maxsize=65536)
def _word_tokens(word: str) -> int:
    return count_tokens(" " + word)


def _fences(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _FENCE.finditer(text)]


def _units(text: str, start: int, end: int, fences: list[tuple[int, int]]) -> list[_Unit]:
    """Words and whole code blocks of ``text[start:end]``, in order."""
    out: list[_Unit] = []
    pos = start
    for f_start, f_end in fences:
        if f_end <= start or f_start >= end:
            continue
        for m in _WORD.finditer(text, pos, max(pos, f_start)):
            out.append(_Unit(m.start(), m.end(), _word_tokens(m.group())))
        block_end = min(f_end, end)
        block = text[max(f_start, start) : block_end].rstrip()
        if block:
            out.append(_Unit(max(f_start, start), max(f_start, start) + len(block), count_tokens(block)))
        pos = block_end
    for m in _WORD.finditer(text, pos, end):
        out.append(_Unit(m.start(), m.end(), _word_tokens(m.group())))
    return out


def _span_tokens(units: list[_Unit]) -> int:
    return sum(u.tokens for u in units)


def fixed_windows(units: list[_Unit], max_tokens: int, overlap_tokens: int) -> Iterator[tuple[int, int]]:
    """Spans of consecutive units of at most ``max_tokens`` (one unit at least), each window
    starting with up to ``overlap_tokens`` tokens of the previous one."""
    i = 0
    n = len(units)
    while i < n:
        j = i
        total = 0
        while j < n and (j == i or total + units[j].tokens <= max_tokens):
            total += units[j].tokens
            j += 1
        yield units[i].start, units[j - 1].end
        if j >= n:
            return
        k = j
        repeated = 0
        while overlap_tokens and k - 1 > i and repeated + units[k - 1].tokens <= overlap_tokens:
            k -= 1
            repeated += units[k].tokens
        i = k


class _Cutter:
    """Recursive cutting of one text: sections, then paragraphs, sentences, words."""

    def __init__(self, text: str, max_tokens: int) -> None:
        self.text = text
        self.max_tokens = max_tokens
        self.fences = _fences(text)

    def _in_fence(self, pos: int) -> bool:
        return any(s <= pos < e for s, e in self.fences)

    def sections(self, start: int, end: int) -> list[tuple[int, int, str]]:
        """(start, end, heading path) of the Markdown sections of ``text[start:end]``."""
        heads = [m for m in _HEADING.finditer(self.text, start, end) if not self._in_fence(m.start())]
        out: list[tuple[int, int, str]] = []
        path: list[tuple[int, str]] = []
        if not heads or heads[0].start() > start:
            out.append((start, heads[0].start() if heads else end, ""))
        for i, m in enumerate(heads):
            level = len(m.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, m.group(2).strip())]
            stop = heads[i + 1].start() if i + 1 < len(heads) else end
            out.append((m.start(), stop, " > ".join(t for _, t in path)))
        return out

    def _blocks(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        """Paragraphs and code blocks of a span: (start, end, is_code)."""
        out: list[tuple[int, int, bool]] = []
        pos = start
        for f_start, f_end in self.fences:
            if f_end <= start or f_start >= end:
                continue
            out += self._paragraphs(pos, max(pos, f_start))
            out.append((max(f_start, start), min(f_end, end), True))
            pos = min(f_end, end)
        out += self._paragraphs(pos, end)
        return out

    def _paragraphs(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        out = []
        pos = start
        for m in _PARAGRAPH_BREAK.finditer(self.text, start, end):
            out.append((pos, m.start(), False))
            pos = m.end()
        out.append((pos, end, False))
        return [(s, e, c) for s, e, c in out if self.text[s:e].strip()]

    def _sentences(self, start: int, end: int) -> list[tuple[int, int]]:
        out = []
        pos = start
        for m in _SENTENCE_END.finditer(self.text, start, end):
            out.append((pos, m.start()))
            pos = m.end()
        out.append((pos, end))
        return [(s, e) for s, e in out if self.text[s:e].strip()]

    def _tokens(self, start: int, end: int) -> int:
        return _span_tokens(_units(self.text, start, end, self.fences))

    def _merge(self, pieces: list[tuple[int, int]], split: callable) -> list[tuple[int, int]]:  # type: ignore[valid-type]
        """Greedily joins neighbouring pieces up to the limit; ``split`` cuts a piece too big alone."""
        out: list[tuple[int, int]] = []
        current: tuple[int, int] | None = None
        current_tokens = 0
        for s, e in pieces:
            tokens = self._tokens(s, e)
            if tokens > self.max_tokens:
                if current:
                    out.append(current)
                    current, current_tokens = None, 0
                out += split(s, e)
                continue
            if current and current_tokens + tokens <= self.max_tokens:
                current = (current[0], e)
                current_tokens += tokens
            else:
                if current:
                    out.append(current)
                current, current_tokens = (s, e), tokens
        if current:
            out.append(current)
        return out

    def cut(self, start: int, end: int) -> list[tuple[int, int, str]]:
        """Chunks of ``text[start:end]``: (start, end, heading path)."""
        out: list[tuple[int, int, str]] = []
        for s, e, heading in self.sections(start, end):
            if not self.text[s:e].strip():
                continue
            if self._tokens(s, e) <= self.max_tokens:
                out.append((s, e, heading))
                continue
            blocks = self._blocks(s, e)
            code = {(bs, be) for bs, be, is_code in blocks if is_code}

            def split_block(bs: int, be: int, code: set[tuple[int, int]] = code) -> list[tuple[int, int]]:
                if (bs, be) in code:
                    return [(bs, be)]  # a code block is never cut
                return self._merge(self._sentences(bs, be), self._split_words)

            out += [(bs, be, heading) for bs, be in self._merge([(bs, be) for bs, be, _ in blocks], split_block)]
        return [(s, e, h) for s, e, h in out if self.text[s:e].strip()]

    def _split_words(self, start: int, end: int) -> list[tuple[int, int]]:
        return list(fixed_windows(_units(self.text, start, end, self.fences), self.max_tokens, 0))

    def sentence_windows(self, start: int, end: int, size: int) -> list[tuple[int, int]]:
        """Every run of 1 to ``size`` consecutive sentences of ``text[start:end]`` that fits
        ``max_tokens``, in order of its first sentence (shortest first).

        A code block counts as one sentence; a sentence longer than the limit is cut into word
        windows first. Windows span paragraph breaks: neighbouring sentences of one section
        are what the windows exist to join.
        """
        sentences: list[tuple[int, int, int]] = []
        for bs, be, is_code in self._blocks(start, end):
            pieces = [(bs, be)] if is_code else self._sentences(bs, be)
            for s, e in pieces:
                tokens = self._tokens(s, e)
                if tokens > self.max_tokens and not is_code:
                    sentences += [(ws, we, self._tokens(ws, we)) for ws, we in self._split_words(s, e)]
                else:
                    sentences.append((s, e, tokens))
        out = []
        for i, (s, _, _) in enumerate(sentences):
            total = 0
            for _, e, tokens in sentences[i : i + size]:
                total += tokens
                if e != sentences[i][1] and total > self.max_tokens:
                    break
                out.append((s, e))
        return out


def _trimmed(text: str, start: int, end: int) -> str:
    return text[start:end].strip()


def chunk_text(text: str, chunking: Chunking) -> tuple[list[ChunkText], list[str]]:
    """Cuts ``text`` by ``chunking``.

    Returns:
        The chunks to index, in document order, and (for hierarchical chunking) the parent
        sections they point into by :attr:`ChunkText.parent` (empty for the other strategies).
    """
    if chunking.strategy is Strategy.FIXED:
        units = _units(text, 0, len(text), _fences(text))
        spans = fixed_windows(units, chunking.max_tokens, chunking.overlap_tokens)
        return [ChunkText(_trimmed(text, s, e)) for s, e in spans], []
    if chunking.strategy is Strategy.RECURSIVE:
        cutter = _Cutter(text, chunking.max_tokens)
        return [ChunkText(_trimmed(text, s, e), -1, h) for s, e, h in cutter.cut(0, len(text))], []
    parent_max = chunking.parent_max_tokens or 4 * chunking.max_tokens
    parents = _Cutter(text, parent_max).cut(0, len(text))
    children = _Cutter(text, chunking.max_tokens)
    chunks: list[ChunkText] = []
    for i, (ps, pe, heading) in enumerate(parents):
        if chunking.sentence_window > 0:
            windows = children.sentence_windows(ps, pe, chunking.sentence_window)
            chunks += [ChunkText(_trimmed(text, s, e), i, heading) for s, e in windows]
        else:
            chunks += [ChunkText(_trimmed(text, s, e), i, heading or h) for s, e, h in children.cut(ps, pe)]
    return chunks, [_trimmed(text, s, e) for s, e, _ in parents]
