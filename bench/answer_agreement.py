"""Measures the judge that decides whether a cached answer agrees with a fresh one (tollway.cache.false_hits).

Data: SQuAD 2.0 dev questions in ../shared/data/squad2-cs224n (CC BY-SA 4.0), evaluation only.
- Agreeing pairs: two distinct gold answers to the same question (different annotators' spans of one answer:
  "10th and 11th centuries" / "in the 10th and 11th centuries").
- Disagreeing pairs: the first answers of two different questions about the same paragraph (same topic,
  other answer): the kind of answer a wrong semantic hit serves.

Both answers are embedded with the cache's embedder (all-MiniLM-L6-v2 int8). For each cosine threshold the
bench prints how often the judge (same numbers, then cosine >= threshold) calls an agreeing pair agreeing
and a disagreeing pair agreeing; the second is the judge error that lets a false hit pass unnoticed, which
``bench/false_hit_sim.py --judge-error`` takes. Caveat: SQuAD answers are short spans, model answers are
sentences; the threshold is a starting point to re-measure on a namespace's own samples.

Usage::

    python bench/answer_agreement.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "squad2-cs224n"
SEED = 20251122


def load(data: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(agreeing pairs, disagreeing pairs) from the dev questions."""
    dev = set((data / "dev_ids.txt").read_text().split())
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines() if line.strip()]
    answers = {q["_id"]: q["answers"] for q in queries if q["_id"] in dev and q.get("answers")}
    paragraph: dict[str, str] = {}
    for line in (data / "qrels.tsv").read_text().splitlines()[1:]:
        query_id, corpus_id, *_ = line.split("\t")
        paragraph[query_id] = corpus_id
    agree = [(a[0], other) for a in answers.values() for other in a[1:]]
    by_paragraph: dict[str, list[str]] = defaultdict(list)
    for query_id, a in answers.items():
        if query_id in paragraph:
            by_paragraph[paragraph[query_id]].append(a[0])
    disagree = []
    for firsts in by_paragraph.values():
        for x, y in itertools.pairwise(firsts):
            if x.strip().lower() != y.strip().lower():
                disagree.append((x, y))
    rng = random.Random(SEED)
    return agree, rng.sample(disagree, min(len(disagree), 3 * len(agree)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)

    from tollway.cache.false_hits import AGREE_COSINE, answers_agree
    from tollway.embedding.model import load_model

    agree, disagree = load(args.data)
    texts = sorted({t for pair in agree + disagree for t in pair})
    vectors = load_model().embed(texts).vectors
    index = {t: i for i, t in enumerate(texts)}

    def cosines(pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.array([float(vectors[index[a]] @ vectors[index[b]]) for a, b in pairs])

    cos_agree, cos_disagree = cosines(agree), cosines(disagree)
    print(f"{len(agree)} agreeing pairs, {len(disagree)} disagreeing pairs (SQuAD 2.0 dev answers)\n")
    print("| cosine threshold | agreeing judged agree | disagreeing judged agree (judge error) |")
    print("|---|---|---|")
    for t in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9):
        yes = np.mean([answers_agree(a, b, c, min_cosine=t) for (a, b), c in zip(agree, cos_agree, strict=True)])
        err = np.mean([answers_agree(a, b, c, min_cosine=t) for (a, b), c in zip(disagree, cos_disagree, strict=True)])
        mark = " (shipped)" if abs(t - AGREE_COSINE) < 1e-9 else ""
        print(f"| {t:.2f}{mark} | {yes:.3f} | {err:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
