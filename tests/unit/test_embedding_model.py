"""The ONNX embedder and the model registry, on the real model from the wheels (no servers)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tollway.embedding.model import (
    DEFAULT_MODEL_ID,
    EmbeddingModel,
    ModelRegistry,
    UnknownModelError,
    catalogue,
    load_model,
)

LONG_TEXT = " ".join(f"word{i} and some filler text" for i in range(200))


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return load_model()


def test_default_model_describes_itself(model: EmbeddingModel) -> None:
    assert model.model_id == DEFAULT_MODEL_ID
    assert model.dimension == 384
    assert model.max_tokens == 256


def test_vectors_are_float32_unit_norm_in_input_order(model: EmbeddingModel) -> None:
    texts = ["How do I reset my password?", "ok", "I forgot my login credentials", "Best pizza in Naples"]
    result = model.embed(texts)
    assert result.vectors.shape == (4, 384)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    # Each row belongs to its own text, whatever the length-sorted batching did.
    for i, text in enumerate(texts):
        np.testing.assert_allclose(result.vectors[i], model.embed([text]).vectors[0], atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_texts(model: EmbeddingModel) -> None:
    v = model.embed(
        ["How do I reset my password?", "I forgot my password, how can I change it?", "Best pizza in Naples"]
    )
    assert float(v.vectors[0] @ v.vectors[1]) > 0.6
    assert float(v.vectors[0] @ v.vectors[2]) < 0.2


def test_long_texts_are_truncated_and_flagged(model: EmbeddingModel) -> None:
    result = model.embed(["short text", LONG_TEXT, LONG_TEXT + " with a different ending beyond the limit"])
    assert result.truncated == [False, True, True]
    assert model.count_tokens(LONG_TEXT) == 256
    # Only the first 256 tokens count, so what comes after them changes nothing.
    np.testing.assert_array_equal(result.vectors[1], result.vectors[2])


def test_text_of_exactly_max_tokens_is_not_truncated(model: EmbeddingModel) -> None:
    text = " ".join(["a"] * 254)  # 254 word pieces + [CLS] + [SEP]
    assert model.count_tokens(text) == 256
    assert model.embed([text]).truncated == [False]
    assert model.embed([text + " a"]).truncated == [True]


def test_small_inference_batches_give_the_same_vectors(model: EmbeddingModel) -> None:
    texts = [f"question number {i} about {'billing ' * (i % 7)}" for i in range(40)]
    whole = model.embed(texts).vectors
    small = EmbeddingModel(model.spec, batch_size=3).embed(texts).vectors
    np.testing.assert_allclose(whole, small, atol=1e-5)


def test_empty_list_gives_an_empty_matrix(model: EmbeddingModel) -> None:
    result = model.embed([])
    assert result.vectors.shape == (0, 384)
    assert result.truncated == []


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as err:
        load_model("no-such-model")
    assert err.value.model_id == "no-such-model"
    assert DEFAULT_MODEL_ID in err.value.known
    assert DEFAULT_MODEL_ID in str(err.value)


def test_registry_serves_several_models_by_id_and_loads_lazily() -> None:
    base = catalogue()[DEFAULT_MODEL_ID]
    short = dataclasses.replace(base, model_id="minilm-short", max_tokens=8)
    registry = ModelRegistry([base, short], DEFAULT_MODEL_ID)
    assert [s.model_id for s in registry.specs] == [DEFAULT_MODEL_ID, "minilm-short"]
    assert not registry.is_loaded("minilm-short")
    assert registry.spec(None).model_id == DEFAULT_MODEL_ID
    cut = registry.get("minilm-short").embed(["one two three four five six seven eight"])
    assert cut.truncated == [True]
    assert registry.is_loaded("minilm-short")
    assert registry.get("minilm-short") is registry.get("minilm-short")
    with pytest.raises(UnknownModelError, match="minilm-short"):
        registry.get("other")


def test_registry_rejects_duplicate_ids_and_a_missing_default() -> None:
    base = catalogue()[DEFAULT_MODEL_ID]
    with pytest.raises(ValueError, match="twice"):
        ModelRegistry([base, base])
    with pytest.raises(ValueError, match="default model"):
        ModelRegistry([base], "absent")
    with pytest.raises(UnknownModelError):
        ModelRegistry.from_ids(["absent"])


def test_the_catalogue_has_a_second_model_for_migrations() -> None:
    registry = ModelRegistry.from_ids([DEFAULT_MODEL_ID, "minilm-l6-v2-int8-128"])
    short, long = "a short question", LONG_TEXT
    full = registry.get(DEFAULT_MODEL_ID).embed([short, long])
    cut = registry.get("minilm-l6-v2-int8-128").embed([short, long])
    assert cut.truncated == [False, True]
    np.testing.assert_allclose(full.vectors[0], cut.vectors[0], atol=1e-6)
    assert float(full.vectors[1] @ cut.vectors[1]) < 0.999
