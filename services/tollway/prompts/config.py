"""Prompts service settings, from ``TOLLWAY_PROMPTS_*`` (Redis comes from ``TOLLWAY_REDIS_URL``)."""

from __future__ import annotations

from pathlib import Path

from tollway.mesh.frozen import frozen

_DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


@frozen
class PromptsConfig:
    """Prompts service settings; each field is ``TOLLWAY_PROMPTS_<FIELD>``.

    Attributes:
        port: gRPC port.
        metrics_port: Prometheus endpoint port; 0 turns it off.
        key_prefix: Prefix of every Redis key the service writes.
        seed_dir: A folder of prompt files published at start (``deploy/prompts`` by default;
            empty: none). Publishing is idempotent, and a seed sets a label only where the label
            does not exist yet, so a restart never moves a label someone moved since.
        seed_actor: The author and actor the seed records.
        compiled_cache_size: Compiled message templates kept in memory (LRU).
        version_cache_size: Versions kept in memory (LRU; versions never change).
        max_messages: Most messages a version may have.
        max_template_chars: Most characters of all message templates of a version together.
        max_schema_chars: Most characters of a variable schema.
        max_variables_chars: Most characters of a request's variables, as compact JSON.
        max_rendered_chars: Most characters of a rendered prompt.
        max_range: Largest ``range()`` a template may loop over.
        evaluation_dedup_s: How long a RecordEvaluation request id is remembered.
        token_encoding: The tokenizer token counts use (the gateway's).
    """

    port: int = 50053
    metrics_port: int = 0
    key_prefix: str = "tw:prompts"
    seed_dir: str = str(_DEPLOY / "prompts")
    seed_actor: str = "seed"
    compiled_cache_size: int = 2048
    version_cache_size: int = 4096
    max_messages: int = 64
    max_template_chars: int = 65536
    max_schema_chars: int = 65536
    max_variables_chars: int = 262144
    max_rendered_chars: int = 1048576
    max_range: int = 1000
    evaluation_dedup_s: int = 86400
    token_encoding: str = "o200k_base"

    def __post_init__(self) -> None:
        positive = (
            "compiled_cache_size",
            "version_cache_size",
            "max_messages",
            "max_template_chars",
            "max_schema_chars",
            "max_variables_chars",
            "max_rendered_chars",
            "max_range",
            "evaluation_dedup_s",
        )
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Config 'TOLLWAY_PROMPTS_{name.upper()}' has value {value!r}. Must be above 0.")
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            raise ValueError(
                f"Config 'TOLLWAY_PROMPTS_KEY_PREFIX' has value {self.key_prefix!r}. "
                "Must be non-empty, without braces or spaces."
            )
        if self.seed_dir and not Path(self.seed_dir).is_dir():
            raise ValueError(
                f"Config 'TOLLWAY_PROMPTS_SEED_DIR' has value {self.seed_dir!r}. "
                "Not a directory (set it empty to seed nothing)."
            )
        if not self.seed_actor:
            raise ValueError("Config 'TOLLWAY_PROMPTS_SEED_ACTOR' has value ''. Must be non-empty.")
