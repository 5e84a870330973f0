"""The gateway's context assembly for grounded answers (gateway/retrieval_client.py)."""

from __future__ import annotations

from tollway.common.tokens import count_tokens
from tollway.gateway.retrieval_client import RetrievedChunk, _filters, assemble_context, lost_in_the_middle_order
from tollway.retrieval.v1 import retrieval_pb2 as pb


def chunk(i: int, words: int = 20, parent: str = "") -> RetrievedChunk:
    return RetrievedChunk(
        document=f"collections/kb/documents/d{i}",
        chunk_id=f"d{i}:abc:0",
        score=1.0 - i / 100,
        snippet=f"snippet {i}",
        text=" ".join(f"w{i}x{j}" for j in range(words)),
        parent_text=parent,
        title=f"Doc {i}",
    )


def test_best_chunks_sit_at_both_ends() -> None:
    assert lost_in_the_middle_order([1, 2, 3, 4, 5, 6]) == [1, 3, 5, 6, 4, 2]
    assert lost_in_the_middle_order([1, 2, 3]) == [1, 3, 2]
    ctx = assemble_context([chunk(i) for i in range(1, 6)], 10_000)
    order = [c.document.rsplit("/", 1)[1] for c in ctx.citations]
    assert order == ["d1", "d3", "d5", "d4", "d2"]
    assert [c.index for c in ctx.citations] == [1, 2, 3, 4, 5]
    assert ctx.text.startswith("[1] Doc 1\n") and ctx.text.rstrip().endswith(chunk(2).text)
    assert ctx.document_ids == [f"collections/kb/documents/d{i}" for i in range(1, 6)]


def test_the_budget_holds_and_smaller_later_chunks_may_still_fit() -> None:
    chunks = [chunk(1, 10), chunk(2, 400), chunk(3, 8)]
    budget = 200
    ctx = assemble_context(chunks, budget)
    assert [c.chunk_id for c in ctx.citations] == ["d1:abc:0", "d3:abc:0"]
    assert ctx.dropped_count == 1
    assert count_tokens(ctx.text) <= ctx.token_count <= budget
    assert assemble_context(chunks, 5).citations == []


def test_a_shared_parent_section_goes_in_once() -> None:
    parent = "# Section\nThe whole parent section text."
    ctx = assemble_context([chunk(1, parent=parent), chunk(2, parent=parent), chunk(3)], 10_000)
    assert len(ctx.citations) == 2 and ctx.dropped_count == 1
    assert ctx.text.count("The whole parent section text.") == 1


def test_filters_from_a_mapping() -> None:
    lang, years = _filters({"lang": "en", "year": [2023, 2024]})
    assert lang.operator == pb.FILTER_OPERATOR_EQUAL and lang.value.string_value == "en"
    assert years.operator == pb.FILTER_OPERATOR_IN and [v.number_value for v in years.values] == [2023, 2024]
