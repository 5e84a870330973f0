"""Simulates a namespace that declares ``max_false_hit_rate`` on a stream of labelled lookups.

Each lookup is one labelled pair (query = text_b, best candidate = text_a) drawn at random from the chosen
sets. Its score is what the default preset thresholds: the learned check's probability when the cosine
passes the pre-filter and the hard rules pass, else 0 (never served). The controller
(``tollway.cache.false_hits``) serves a hit when the score reaches its current threshold. Labels reach it
the way they do in the service:

- a served hit is sampled for quality with probability ``--sample-rate`` (the fresh answer costs a call);
- a candidate above the floor that the controller held back is compared with probability
  ``--shadow-rate``: the lookup missed, so the fresh answer is being computed anyway and comparing it with
  the candidate's cached answer costs nothing but the comparison;
- the comparison itself errs as the measured agreement judge does (``--judge-error``, the rate at which it
  calls a disagreeing pair of answers agreeing, 0.007 at the shipped cosine 0.80; ``--judge-miss``, the
  rate at which it calls an agreeing pair disagreeing; see bench/answer_agreement.py). A judge that misses
  agreement only makes the controller more cautious.

Printed per block of lookups: the threshold, the realised false-hit rate (wrong hits / hits, from the true
labels), the hit rate, and the cumulative false-hit rate.

Usage::

    python bench/false_hit_sim.py --rate 0.02
    python bench/false_hit_sim.py --rate 0.05 --sets gptcache-qqp
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_eval import DATA, SETS, SHORT, embed, learned_scores, load_pairs

from tollway.cache.false_hits import FalseHitController

SEED = 20251122


def ladder(floor: float) -> list[float]:
    """Thresholds from the floor to 0.995 in steps of 0.005 (probabilities)."""
    return [round(t, 3) for t in np.arange(floor, 0.9951, 0.005)]


def simulate(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    rate: float,
    lookups: int,
    sample_rate: float,
    shadow_rate: float,
    judge_error: float,
    judge_miss: float = 0.0,
    floor: float,
    block: int,
    seed: int = SEED,
) -> list[dict[str, float]]:
    """Runs the stream; returns one row per block of lookups."""
    rng = random.Random(seed)
    controller = FalseHitController(rate, ladder(floor))
    rows = []
    hits = wrong = total_hits = total_wrong = 0
    for step in range(1, lookups + 1):
        i = rng.randrange(len(labels))
        score, good = float(scores[i]), bool(labels[i])
        served = score >= controller.threshold and score >= floor
        if served:
            hits += 1
            wrong += not good
        sample = (served and rng.random() < sample_rate) or (
            not served and controller.wants_sample(score) and rng.random() < shadow_rate
        )
        if sample:
            # The judge calls a wrong pair "agreeing" with probability judge_error, and a right one
            # "disagreeing" with probability judge_miss.
            agreed = rng.random() >= judge_miss if good else rng.random() < judge_error
            controller.observe(score, agreed)
        if step % block == 0:
            total_hits += hits
            total_wrong += wrong
            rows.append(
                {
                    "lookups": step,
                    "threshold": controller.threshold,
                    "hit_rate": hits / block,
                    "false_hit_rate": wrong / hits if hits else 0.0,
                    "cumulative_false_hit_rate": total_wrong / total_hits if total_hits else 0.0,
                    "samples": controller.sample_count,
                }
            )
            hits = wrong = 0
    return rows


def _threshold(value: float) -> str:
    return "none served" if value == float("inf") else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=["langcache-chatgpt-pairs", "gsmplus-testmini", "adversarial"],
                        choices=SETS)  # fmt: skip
    parser.add_argument("--rate", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--lookups", type=int, default=60_000)
    parser.add_argument("--block", type=int, default=6_000)
    parser.add_argument("--sample-rate", type=float, default=0.05)
    parser.add_argument("--shadow-rate", type=float, default=0.05)
    parser.add_argument("--judge-error", type=float, default=0.007, help="P(judge says agree | wrong hit)")
    parser.add_argument("--judge-miss", type=float, default=0.0, help="P(judge says disagree | right hit)")
    parser.add_argument(
        "--floor",
        type=float,
        default=None,
        help="lowest probability ever served (default: the default preset's operating point)",
    )
    parser.add_argument("--cosine", type=float, default=None,
                        help="the namespace's cosine threshold: the index returns nothing below it "
                        "(default: the default preset's)")  # fmt: skip
    parser.add_argument("--qqp-pairs", type=int, default=20_000)
    args = parser.parse_args(argv)
    from tollway.cache.learned_check import shipped
    from tollway.cache.presets import PRESETS

    # As in the service: a namespace declaring a rate keeps its preset's cosine threshold (the index search
    # returns no candidate below it) and the controller's ladder starts at the preset's operating point.
    cosine = PRESETS["default"]["threshold"] if args.cosine is None else args.cosine
    args.floor = shipped().threshold("default") if args.floor is None else args.floor
    print(f"cosine threshold {cosine:.2f}, probability floor {args.floor:.2f}")

    scores, labels = [], []
    for name in args.sets:
        pairs = load_pairs(name, args.data, args.qqp_pairs)
        embed(pairs, None)
        s, _ = learned_scores(pairs)
        assert pairs.cosine is not None
        s[pairs.cosine < cosine] = 0.0
        scores.append(s)
        labels.append(pairs.labels)
    score, label = np.concatenate(scores), np.concatenate(labels)
    print(f"stream from {', '.join(SHORT[n] for n in args.sets)}: {len(label)} pairs, {int(label.sum())} positive")
    best = (score >= args.floor) & (label == 1)
    print(f"hit rate ceiling (every right candidate above the floor served): {best.mean():.3f}")
    for rate in args.rate:
        print(f"\n### declared max_false_hit_rate {rate}\n")
        print("| lookups | threshold | hit rate | false-hit rate (block) | cumulative | samples |")
        print("|---|---|---|---|---|---|")
        for row in simulate(score, label, rate=rate, lookups=args.lookups, sample_rate=args.sample_rate,
                            shadow_rate=args.shadow_rate, judge_error=args.judge_error,
                            judge_miss=args.judge_miss, floor=args.floor,
                            block=args.block):  # fmt: skip
            print(
                f"| {row['lookups']} | {_threshold(row['threshold'])} | {row['hit_rate']:.3f} | "
                f"{row['false_hit_rate']:.4f} | {row['cumulative_false_hit_rate']:.4f} | {row['samples']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
