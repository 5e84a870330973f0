"""EmbeddingConfig from TOLLWAY_EMBEDDING_* variables."""

from __future__ import annotations

import pytest

from tollway.embedding.config import EmbeddingConfig
from tollway.embedding.model import DEFAULT_MODEL_ID
from tollway.mesh.config import ConfigError, load_config


def test_defaults() -> None:
    cfg = load_config(EmbeddingConfig, "embedding", env={})
    assert cfg.port == 50056
    assert cfg.models == (DEFAULT_MODEL_ID,)
    assert cfg.default_model == DEFAULT_MODEL_ID
    assert cfg.batching is True


def test_values_from_the_environment() -> None:
    env = {
        "TOLLWAY_EMBEDDING_MODELS": f"{DEFAULT_MODEL_ID}, other-model",
        "TOLLWAY_EMBEDDING_BATCH_MAX_WAIT_MS": "1.5",
        "TOLLWAY_EMBEDDING_BATCHING": "off",
        "TOLLWAY_EMBEDDING_LRU_MAX_ENTRIES": "0",
    }
    cfg = load_config(EmbeddingConfig, "embedding", env=env)
    assert cfg.models == (DEFAULT_MODEL_ID, "other-model")
    assert cfg.batch_max_wait_ms == 1.5
    assert cfg.batching is False
    assert cfg.lru_max_entries == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOLLWAY_EMBEDDING_DEFAULT_MODEL": "absent"}, "default_model 'absent'"),
        ({"TOLLWAY_EMBEDDING_MAX_TEXTS_PER_CALL": "0"}, "max_texts_per_call must be >= 1"),
        ({"TOLLWAY_EMBEDDING_BATCH_MAX_WAIT_MS": "-1"}, "batch_max_wait_ms"),
        ({"TOLLWAY_EMBEDDING_BATCHING": "maybe"}, "'maybe'"),
        ({"TOLLWAY_EMBEDDING_BATCH_SIZE": "8"}, "TOLLWAY_EMBEDDING_BATCH_SIZE"),
    ],
)
def test_bad_values_fail_naming_the_key_or_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(EmbeddingConfig, "embedding", env=env)
