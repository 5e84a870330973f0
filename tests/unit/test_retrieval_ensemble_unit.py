"""What an ensemble model embeds of a sentence window: the window (the default for new collections)
or its whole parent section (collections stored before the choice existed); the choice is checked
at creation and fixed (docs/benchmarks.md, issue 15: E5 over windows ranked SQuAD better)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest

from tollway.mesh.errors import InvalidArgument
from tollway.retrieval.ingest import _embedded_texts
from tollway.retrieval.retrieval import Retrieval
from tollway.retrieval.types import Chunk, Chunking, Collection, EnsembleUnit, Strategy

MINILM, E5 = "minilm-l6-v2-int8", "e5-small-q4"
WINDOWS = Chunking(Strategy.HIERARCHICAL, 200, 0, 1024, 2)
SECTION = "Radon gas seeps into basements. It is the leading cause of lung cancer in non-smokers."
CHUNKS = [
    Chunk("radon:h:0", "radon", "Radon gas seeps into basements.", "Radon", SECTION, {}, None),
    Chunk("radon:h:1", "radon", "It is the leading cause of lung cancer in non-smokers.", "Radon", SECTION, {}, None),
]


def collection(chunking: Chunking = WINDOWS, unit: EnsembleUnit | None = EnsembleUnit.WINDOW) -> Collection:
    return Collection("c", MINILM, 384, chunking, {}, ensemble={E5: 384}, ensemble_unit=unit)


def test_the_window_unit_embeds_each_window_as_the_main_model_does() -> None:
    col = collection()
    assert not col.ensemble_embeds_sections
    windows = [
        "Radon\nRadon gas seeps into basements.",
        "Radon\nIt is the leading cause of lung cancer in non-smokers.",
    ]
    assert _embedded_texts(CHUNKS, E5, col) == windows
    assert _embedded_texts(CHUNKS, MINILM, col) == windows


def test_the_section_unit_embeds_every_window_s_whole_section_once_per_window() -> None:
    col = collection(unit=EnsembleUnit.SECTION)
    assert col.ensemble_embeds_sections
    assert _embedded_texts(CHUNKS, E5, col) == [f"Radon\n{SECTION}"] * 2
    # The main model keeps the windows: they are the units a search ranks.
    assert _embedded_texts(CHUNKS, MINILM, col)[0] == "Radon\nRadon gas seeps into basements."


def test_without_sentence_windows_every_model_embeds_the_chunk_itself() -> None:
    # Size-cut hierarchical children are scored on their own text, so the unit cannot apply.
    col = collection(Chunking(Strategy.HIERARCHICAL, 200, 0, 1024, 0), unit=None)
    assert not col.ensemble_embeds_sections
    assert _embedded_texts(CHUNKS, E5, col) == [c.indexed_text() for c in CHUNKS]


class _Store:
    def __init__(self) -> None:
        self.created: list[Collection] = []

    async def create_collection(self, col: Collection) -> bool:
        self.created.append(col)
        return True


class _Catalog:
    async def models(self) -> tuple[Mapping[str, int], str]:
        return {MINILM: 384, E5: 384}, MINILM


def _retrieval() -> Retrieval:
    return Retrieval(cast(Any, _Store()), cast(Any, None), cast(Any, None), _Catalog(), clock=lambda: 0)


async def _create(chunking: Chunking, models: tuple[str, ...], unit: EnsembleUnit | None) -> Collection:
    return await _retrieval().create_collection(
        "c", embedding_model=MINILM, chunking=chunking, fields={}, ensemble_models=models, ensemble_unit=unit
    )


async def test_a_new_sentence_window_ensemble_embeds_windows_unless_told_sections() -> None:
    assert (await _create(WINDOWS, (E5,), None)).ensemble_unit is EnsembleUnit.WINDOW
    assert (await _create(WINDOWS, (E5,), EnsembleUnit.SECTION)).ensemble_unit is EnsembleUnit.SECTION
    # Where it does not apply it is not stored: such a collection reads back unspecified.
    assert (await _create(WINDOWS, (), None)).ensemble_unit is None
    assert (await _create(Chunking(Strategy.RECURSIVE, 200), (E5,), None)).ensemble_unit is None


@pytest.mark.parametrize(
    ("chunking", "models"),
    [
        (WINDOWS, ()),  # no ensemble model to embed anything
        (Chunking(Strategy.RECURSIVE, 200), (E5,)),  # no windows: the ensemble embeds each chunk
        (Chunking(Strategy.HIERARCHICAL, 200, 0, 1024, 0), (E5,)),  # size-cut children
    ],
)
async def test_a_unit_where_it_cannot_apply_is_refused_naming_the_field(
    chunking: Chunking, models: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await _create(chunking, models, EnsembleUnit.WINDOW)
    assert err.value.violations[0][0] == "collection.ensemble_unit"
