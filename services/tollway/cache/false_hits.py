"""Holding a namespace to a declared false-hit rate, from the quality samples the cache already takes.

A namespace that declares ``max_false_hit_rate: r`` gets no fixed threshold. Every labelled sample
(a served semantic hit whose cached answer was compared with a fresh one, or a candidate the controller
held back whose fresh answer was compared with the cached one: that comparison costs no model call, the
fresh answer was needed anyway) adds ``(score, agreed)``. The score is what the decision thresholds: the
learned check's probability, or the cosine for presets without it.

For each threshold ``t`` on a fixed ladder, the samples scoring at least ``t`` are the hits ``t`` would have
served. The controller serves at the lowest ``t`` whose one-sided 95 % Wilson upper bound on the share of
those samples that disagreed is at most ``r``; while no ``t`` qualifies (at the start, or when even the top
of the ladder is too often wrong) it serves nothing, and the held-back candidates keep supplying evidence.
So the threshold rises as soon as the bound on the served rate exceeds the declared one, and falls only as
agreeing evidence accumulates below it. vCache (Schroeder et al., 2025,
"verified semantic prompt caching") learns a threshold per cached entry; a per-namespace ladder needs no
per-entry state in Redis and is what this file measures (``bench/false_hit_sim.py``).

State is per replica and in memory: a replica that restarts starts cautious again, which errs on the safe
side. Samples older than ``window`` are forgotten so the threshold follows drift in the traffic.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AGREE_COSINE", "AGREE_TOKEN_F1", "FalseHitController", "answers_agree", "wilson_upper"]

# Agreement between a cached and a fresh answer, as measured by bench/answer_agreement.py on SQuAD 2.0
# answers (same question's distinct gold answers agree; answers to other questions of the same paragraph do
# not): the cosine of the two answers' MiniLM embeddings, or token F1 when the caller sent no embeddings.
AGREE_COSINE = 0.80
AGREE_TOKEN_F1 = 0.50

# z for a one-sided 95 % bound.
_Z = 1.6448536269514722


def answers_agree(cached: str, fresh: str, embedding_cosine: float | None, *, min_cosine: float = AGREE_COSINE) -> bool:
    """Whether a cached answer agrees with a fresh one: same numbers, and close in meaning.

    Numbers come first because an embedding barely moves when only a number changes ("take 10 mg" vs
    "take 100 mg"), which is what a wrong semantic hit usually looks like.

    Args:
        cached: The answer that was served.
        fresh: A fresh answer to the same request.
        embedding_cosine: Cosine of the two answers' embeddings, or None (token F1 is used then).
        min_cosine: The cosine from which two answers agree (the measured :data:`AGREE_COSINE`).
    """
    from tollway.cache.quality import token_f1
    from tollway.cache.verify_numbers import extract_quantities

    q_cached = {q.value for q in extract_quantities(cached)}
    q_fresh = {q.value for q in extract_quantities(fresh)}
    if q_cached and q_fresh and q_cached != q_fresh:
        return False
    if embedding_cosine is not None:
        return embedding_cosine >= min_cosine
    return token_f1(cached, fresh) >= AGREE_TOKEN_F1


def wilson_upper(failures: int, trials: int, z: float = _Z) -> float:
    """One-sided Wilson score upper bound on a rate from ``failures`` out of ``trials``; 1.0 without trials.

    Args:
        failures: Samples that disagreed, 0 <= failures <= trials.
        trials: Samples.
        z: Normal quantile of the bound's confidence (1.645 for 95 %).
    """
    if trials <= 0:
        return 1.0
    p = failures / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return min(1.0, (centre + margin) / (1 + z2 / trials))


@dataclass(frozen=True)
class _Sample:
    score: float
    agreed: bool


class FalseHitController:
    """Chooses the serving threshold that keeps the false-hit rate's upper bound at or below a target.

    Args:
        max_false_hit_rate: The declared rate, in (0, 0.5].
        ladder: Candidate thresholds, ascending (at least one). The first is the floor: candidates scoring
            below it are never served and need no sample.
        window: Most recent samples kept.
        local_width: How far above a threshold its own evidence is looked for.
        min_local: Samples needed in ``[t, t + local_width)`` before ``t`` may be served: the bound over
            everything above ``t`` says nothing about the band just above it if no sample fell there.

    Raises:
        ValueError: The rate is outside (0, 0.5], the ladder is empty or not ascending, or the window < 1.
    """

    def __init__(
        self,
        max_false_hit_rate: float,
        ladder: Sequence[float],
        window: int = 20_000,
        *,
        local_width: float = 0.1,
        min_local: int = 20,
    ) -> None:
        if not 0.0 < max_false_hit_rate <= 0.5:
            raise ValueError(f"max_false_hit_rate {max_false_hit_rate!r} is not in (0, 0.5]")
        if not ladder or any(b <= a for a, b in itertools.pairwise(ladder)):
            raise ValueError("ladder must hold at least one threshold, strictly ascending")
        if window < 1:
            raise ValueError(f"window {window!r} must be at least 1")
        self.max_false_hit_rate = max_false_hit_rate
        self.ladder = tuple(float(t) for t in ladder)
        self._samples: deque[_Sample] = deque()
        self._window = window
        self._local_width = local_width
        self._min_local = min_local
        # Per ladder step i: samples (and disagreements) scoring in [ladder[i], ladder[i + 1]).
        self._n = [0] * len(self.ladder)
        self._bad = [0] * len(self.ladder)
        self._threshold = math.inf

    @property
    def floor(self) -> float:
        """The lowest threshold the controller may ever serve at."""
        return self.ladder[0]

    @property
    def threshold(self) -> float:
        """The threshold to serve at now; ``math.inf`` while the evidence allows serving nothing."""
        return self._threshold

    @property
    def sample_count(self) -> int:
        """Samples currently in the window."""
        return len(self._samples)

    def wants_sample(self, score: float) -> bool:
        """Whether a candidate with this score is informative: at or above the floor."""
        return score >= self.floor

    def observe(self, score: float, agreed: bool) -> float:
        """Adds one labelled sample and returns the threshold to serve at from now on.

        Args:
            score: The candidate's score when it was decided (learned probability or cosine).
            agreed: Whether the cached answer agreed with the fresh one.
        """
        if score < self.floor or not math.isfinite(score):
            return self._threshold
        sample = _Sample(score, agreed)
        self._samples.append(sample)
        self._count(sample, +1)
        while len(self._samples) > self._window:
            self._count(self._samples.popleft(), -1)
        self._threshold = self._choose()
        return self._threshold

    def upper_bound(self, threshold: float) -> float:
        """The 95 % upper bound on the false-hit rate of serving at ``threshold``, from the window."""
        i = bisect.bisect_left(self.ladder, threshold)
        return wilson_upper(sum(self._bad[i:]), sum(self._n[i:]))

    def _count(self, sample: _Sample, delta: int) -> None:
        i = bisect.bisect_right(self.ladder, sample.score) - 1
        self._n[i] += delta
        if not sample.agreed:
            self._bad[i] += delta

    def _choose(self) -> float:
        # Suffix sums from the top down: at_least[i] = samples scoring >= ladder[i].
        steps = len(self.ladder)
        at_least, bad_at_least = [0] * (steps + 1), [0] * (steps + 1)
        for i in range(steps - 1, -1, -1):
            at_least[i] = at_least[i + 1] + self._n[i]
            bad_at_least[i] = bad_at_least[i + 1] + self._bad[i]
        best = math.inf
        # The lowest step that passes wins. A failing step does not stop the walk: more agreeing samples
        # below can bring the bound back under the rate.
        for i in range(steps - 1, -1, -1):
            n = at_least[i]
            if not n or wilson_upper(bad_at_least[i], n) > self.max_false_hit_rate:
                continue
            band_end = bisect.bisect_left(self.ladder, self.ladder[i] + self._local_width - 1e-9)
            if n - at_least[band_end] >= self._min_local:
                best = self.ladder[i]
        return best
