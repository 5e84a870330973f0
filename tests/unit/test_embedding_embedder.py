"""The embedding domain (validation, in-process cache, batching) on the real model, without Redis or gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tollway.embedding.embedder import Embedder
from tollway.embedding.model import DEFAULT_MODEL_ID, ModelRegistry, catalogue
from tollway.mesh.errors import InvalidArgument, NotFound, Unavailable

SHORT_MODEL = "minilm-short"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    base = catalogue()[DEFAULT_MODEL_ID]
    registry = ModelRegistry([base, dataclasses.replace(base, model_id=SHORT_MODEL, max_tokens=8)])
    registry.load_all()
    return registry


@pytest.fixture
async def embedder(registry: ModelRegistry) -> AsyncIterator[Embedder]:
    embedder = Embedder(registry, None, max_texts_per_call=8, max_text_chars=100)
    await embedder.start()
    yield embedder
    await embedder.aclose()


async def test_embeds_in_order_with_the_default_model(embedder: Embedder, registry: ModelRegistry) -> None:
    texts = ["How do I reset my password?", "Best pizza in Naples"]
    out = await embedder.embed(texts)
    assert out.model_id == DEFAULT_MODEL_ID
    assert out.dimension == 384
    assert out.vectors.shape == (2, 384)
    assert out.truncated == [False, False]
    assert out.cache_hit_count == 0
    np.testing.assert_allclose(out.vectors, registry.get().embed(texts).vectors, atol=1e-6)


async def test_repeated_texts_come_from_the_cache(embedder: Embedder) -> None:
    first = await embedder.embed(["cache me", "and me"])
    again = await embedder.embed(["and me", "new one", "cache me"])
    assert again.cache_hit_count == 2
    np.testing.assert_array_equal(again.vectors[0], first.vectors[1])
    np.testing.assert_array_equal(again.vectors[2], first.vectors[0])


async def test_duplicates_in_one_call_are_computed_once_and_both_answered(embedder: Embedder) -> None:
    out = await embedder.embed(["twice", "once", "twice"])
    assert out.cache_hit_count == 0
    np.testing.assert_array_equal(out.vectors[0], out.vectors[2])


async def test_the_cache_is_per_model_and_truncation_is_reported(embedder: Embedder) -> None:
    text = "one two three four five six seven eight nine"
    default = await embedder.embed([text])
    short = await embedder.embed([text], SHORT_MODEL)
    assert short.model_id == SHORT_MODEL
    assert short.cache_hit_count == 0
    assert default.truncated == [False]
    assert short.truncated == [True]
    assert not np.array_equal(default.vectors[0], short.vectors[0])
    cached = await embedder.embed([text], SHORT_MODEL)
    assert cached.cache_hit_count == 1
    assert cached.truncated == [True]


async def test_concurrent_calls_each_get_their_own_vectors(embedder: Embedder, registry: ModelRegistry) -> None:
    texts = [f"concurrent question {i} about invoices" for i in range(12)]
    outs = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    expected = registry.get().embed(texts).vectors
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out.vectors[0], expected[i], atol=1e-6)


@pytest.mark.parametrize(
    ("texts", "reason", "field"),
    [
        ([], "EMPTY_INPUT", "texts"),
        (["fine", ""], "EMPTY_TEXT", "texts[1]"),
        (["x"] * 9, "TOO_MANY_TEXTS", "texts"),
        (["fine", "y" * 101], "TEXT_TOO_LONG", "texts[1]"),
    ],
)
async def test_bad_input_is_rejected_naming_the_field(
    embedder: Embedder, texts: list[str], reason: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await embedder.embed(texts)
    assert err.value.reason == reason
    assert err.value.violations[0][0] == field


async def test_too_many_texts_names_the_limit(embedder: Embedder) -> None:
    with pytest.raises(InvalidArgument, match="at most 8") as err:
        await embedder.embed(["x"] * 9)
    assert err.value.metadata["limit"] == "8"


async def test_unknown_model_is_not_found_and_lists_the_known_ones(embedder: Embedder) -> None:
    with pytest.raises(NotFound) as err:
        await embedder.embed(["hello"], "gpt-embed-9000")
    assert err.value.reason == "UNKNOWN_MODEL"
    assert "gpt-embed-9000" in err.value.message
    assert DEFAULT_MODEL_ID in err.value.message and SHORT_MODEL in err.value.message
    assert err.value.metadata["known_models"] == f"{DEFAULT_MODEL_ID},{SHORT_MODEL}"


async def test_models_are_listed_default_first(registry: ModelRegistry) -> None:
    embedder = Embedder(ModelRegistry(registry.specs, SHORT_MODEL), None)
    assert [m.model_id for m in embedder.list_models()] == [SHORT_MODEL, DEFAULT_MODEL_ID]
    assert embedder.list_models()[1].max_tokens == 256
    await embedder.aclose()


async def test_a_closed_embedder_is_unavailable(registry: ModelRegistry) -> None:
    embedder = Embedder(registry, None)
    await embedder.start()
    await embedder.aclose()
    with pytest.raises(Unavailable) as err:
        await embedder.embed(["too late"])
    assert err.value.reason == "SHUTTING_DOWN"


async def test_concurrent_calls_for_the_same_new_text_agree(embedder: Embedder) -> None:
    outs = await asyncio.gather(*(embedder.embed(["the very same new text", f"other {i}"]) for i in range(4)))
    for out in outs[1:]:
        np.testing.assert_array_equal(out.vectors[0], outs[0].vectors[0])
