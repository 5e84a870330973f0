"""Chunking: limits, overlap, structure, and the boundaries that must never be cut."""

from __future__ import annotations

import itertools
import re

import pytest

from tollway.common.tokens import count_tokens
from tollway.retrieval.chunking import chunk_text
from tollway.retrieval.types import Chunking, Strategy

CODE = "```python\ndef add(a, b):\n    total = a + b\n    return total\n```"
DOC = (
    "# Guide\nIntro sentence one. Intro sentence two is a little longer than the first.\n\n"
    + "## Install\n" + " ".join(f"alpha{i} beta{i}." for i in range(120)) + "\n\n"
    + CODE + "\n\n"
    + "## Use\nShort paragraph about usage.\n"
)  # fmt: skip


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("strategy", list(Strategy))
def test_chunks_are_slices_that_never_split_a_word_or_the_code_block(strategy: Strategy) -> None:
    chunks, _ = chunk_text(DOC, Chunking(strategy, 40, 8, 120))
    doc_words = set(words(DOC))
    for c in chunks:
        assert c.text in DOC  # a slice of the original, formatting kept
        assert set(words(c.text)) <= doc_words  # no word cut in two
        if "def add" in c.text or "return total" in c.text:
            assert CODE in c.text  # the code block travels whole
    # Every word of the document is in some chunk.
    assert set(words(DOC)) <= {w for c in chunks for w in words(c.text)}


def test_fixed_windows_respect_the_limit_and_overlap() -> None:
    text = " ".join(f"w{i}" for i in range(500))
    chunks, parents = chunk_text(text, Chunking(Strategy.FIXED, 50, 10))
    assert parents == []
    assert len(chunks) > 5
    for c in chunks:
        assert count_tokens(c.text) <= 52  # per-word counting may differ by a token at edges
    for a, b in itertools.pairwise(chunks):
        shared = set(words(a.text)) & set(words(b.text))
        assert shared, "consecutive windows overlap"
        assert sum(count_tokens(" " + w) for w in shared) <= 10


def test_fixed_without_overlap_partitions_the_words() -> None:
    text = " ".join(f"w{i}" for i in range(300))
    chunks, _ = chunk_text(text, Chunking(Strategy.FIXED, 40, 0))
    assert [w for c in chunks for w in words(c.text)] == words(text)


def test_a_unit_longer_than_the_limit_is_a_chunk_of_its_own() -> None:
    big_code = "```\n" + "\n".join(f"line_{i} = {i}" for i in range(200)) + "\n```"
    chunks, _ = chunk_text("Before it.\n\n" + big_code + "\n\nAfter it.", Chunking(Strategy.RECURSIVE, 30))
    assert any(c.text == big_code for c in chunks)


def test_recursive_keeps_sections_apart_and_records_the_heading_path() -> None:
    chunks, _ = chunk_text(DOC, Chunking(Strategy.RECURSIVE, 60))
    assert chunks[0].text.startswith("# Guide")
    assert {c.section for c in chunks} >= {"Guide", "Guide > Install", "Guide > Use"}
    assert all("## Use" not in c.text or "alpha" not in c.text for c in chunks)
    for c in chunks:
        if c.text != CODE:
            assert count_tokens(c.text) <= 62


def test_recursive_cuts_long_paragraphs_at_sentences() -> None:
    chunks, _ = chunk_text(DOC, Chunking(Strategy.RECURSIVE, 60))
    install = [c for c in chunks if c.section == "Guide > Install" and "alpha" in c.text]
    assert len(install) > 1
    assert all(re.search(r"\.$", c.text) for c in install)  # each ends at a sentence end


def test_hierarchical_children_point_at_parents_that_contain_them() -> None:
    chunks, parents = chunk_text(DOC, Chunking(Strategy.HIERARCHICAL, 30, 0, 120))
    assert parents and len(chunks) > len(parents)
    for c in chunks:
        assert 0 <= c.parent < len(parents)
        assert c.text in parents[c.parent]


def test_headings_inside_code_are_not_sections() -> None:
    text = "Intro.\n\n```bash\n# not a heading\necho hi\n```\n"
    chunks, _ = chunk_text(text, Chunking(Strategy.RECURSIVE, 200))
    assert [c.section for c in chunks] == [""]
