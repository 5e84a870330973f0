"""Namespace presets: a tier-2 threshold and a second-check profile per kind of traffic.

A namespace picks one with ``preset: strict`` in the namespaces file and may override any setting.
Thresholds are cosines between all-MiniLM-L6-v2 (int8) embeddings; they were read off the dev curves of

    python bench/cache_eval.py

(figures in docs/benchmarks.md; the bench prints the value each rule below gives, next to the one here):

=========  =============================  ====================================================================
preset     for                            threshold
=========  =============================  ====================================================================
default    assistant and search prompts   the default rules, then the learned check
                                          (``tollway.cache.learned_check``), at the highest threshold whose
                                          recall on langcache reaches 0.5 with the rules alone (precision
                                          0.97 there). The learned check only vetoes: it never lowers the
                                          threshold, because it was fitted on langcache and GSM-Plus and a
                                          band it opens is proven only there (at 0.86 it cost QQP, which it
                                          never saw, 6 points of precision). Chosen, with the check's
                                          probability threshold, by ``bench/train_learned_check.py`` and
                                          recorded in the weights file (``operating_cosine``)
strict     facts, numbers, code, prices   every rule, then the learned check, at max(default, the highest
                                          threshold whose recall on langcache reaches 0.5 with the default
                                          rules alone): never looser than ``default``
loose      chit-chat, FAQ-style questions the highest whose recall on QQP duplicates reaches 0.5 with the
                                          default rules (precision ~0.80 there: QQP's label noise caps it)
=========  =============================  ====================================================================

``default`` and ``strict`` never serve across a changed number, unit, negation, antonym, converse, ordinal
or superlative qualifier (the adversarial set of ``bench/adversarial.py``: the few hits left are listed in
docs/benchmarks.md). ``loose`` runs the rules without the learned check.

No preset reaches recall 0.5 on the GSM-Plus math pairs once numbers are checked: two in five of their
positives add an irrelevant sentence that carries a number, and the number rule cannot tell those from the
far more numerous negatives whose added or changed number does change the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from tollway.cache.verifier import ALL_RULES, DEFAULT_RULES, Verifier

__all__ = ["LEARNED", "PRESETS", "PROFILES", "verifier_for"]

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
        "strict": MappingProxyType({"threshold": 0.92, "second_check": True}),
        "default": MappingProxyType({"threshold": 0.92, "second_check": True}),
        "loose": MappingProxyType({"threshold": 0.86, "second_check": True}),
    }
)


# Presets that run the learned check after their rules, with the operating point (a name in the weights
# file) whose probability a candidate needs.
LEARNED: Mapping[str, str] = MappingProxyType({"default": "default", "strict": "default"})


@cache
def verifier_for(preset: str) -> Verifier:
    """Returns the verifier that runs a preset's profile (one shared, stateless instance per preset).

    Args:
        preset: A key of :data:`PROFILES`.

    Raises:
        KeyError: The preset is unknown; the message lists the known ones.
        LearnedCheckError: The preset uses the learned check and its weights file is missing or corrupt
            (the message names the path).
    """
    if preset not in PROFILES:
        raise KeyError(f"unknown cache preset {preset!r}; known: {', '.join(PROFILES)}")
    if preset not in LEARNED:
        return Verifier(PROFILES[preset])
    from tollway.cache.learned_check import shipped

    learned = shipped()
    return Verifier(PROFILES[preset], learned=learned, learned_threshold=learned.threshold(LEARNED[preset]))
