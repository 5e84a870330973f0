"""Namespace presets: a tier-2 threshold and a second-check profile per kind of traffic.

A namespace picks one with ``preset: strict`` in the namespaces file and may override any setting.
Thresholds are cosines between all-MiniLM-L6-v2 (int8) embeddings; they were read off the dev curves of

    python bench/cache_eval.py

(figures and the selection rule in the bench's output and docs/benchmarks.md). Each threshold is the lowest
one on a 0.01 grid at which the preset's profile keeps its precision floor on its reference sets at that
threshold and at every higher one, so a held-out split that shifts the curve a little does not fall off a
cliff. Rounding is always upwards (stricter).

=========  ===============================  ==================================================================
preset     for                              picked on (dev split)
=========  ===============================  ==================================================================
strict     facts, numbers, code, prices     precision >= 0.97 on langcache pairs AND on GSM-Plus math pairs
default    assistant and search prompts     precision >= 0.97 on langcache pairs
loose      chit-chat, FAQ-style questions   recall >= 0.5 on QQP duplicates (precision there ~0.8: QQP's
                                            label noise caps it; see the bench)
=========  ===============================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tollway.cache.verifier import ALL_RULES, DEFAULT_RULES, Verifier

__all__ = ["PRESETS", "PROFILES", "verifier_for"]

# Which verifier rules each preset runs; see tollway.cache.verifier for what each rule rejects.
PROFILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "strict": tuple(ALL_RULES),
        "default": DEFAULT_RULES,
        "loose": DEFAULT_RULES,
    }
)

# Namespace settings per preset; keys are fields of tollway.cache.namespaces.Namespace.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "strict": MappingProxyType({"threshold": 0.90, "second_check": True}),
        "default": MappingProxyType({"threshold": 0.90, "second_check": True}),
        "loose": MappingProxyType({"threshold": 0.85, "second_check": True}),
    }
)


def verifier_for(preset: str) -> Verifier:
    """Builds the verifier that runs a preset's profile.

    Args:
        preset: A key of :data:`PROFILES`.

    Raises:
        KeyError: The preset is unknown; the message lists the known ones.
    """
    if preset not in PROFILES:
        raise KeyError(f"unknown cache preset {preset!r}; known: {', '.join(PROFILES)}")
    return Verifier(PROFILES[preset])
