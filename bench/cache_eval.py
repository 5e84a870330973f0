"""Tier-2 cache quality: plain cosine vs cosine + the second check vs GPTCache, on labelled pairs.

For each pair set in ../shared/data (dev split only): text_a is the cached request, text_b the incoming
one, label 1 means text_a's answer may be served for text_b. Both texts are embedded once with Tollway's
embedder (vectors cached under build/cache_eval/), then for every cosine threshold on a 0.01 grid the
bench counts, over all pairs, the hits (cosine >= threshold, and for "check" the verifier accepts) and
reports precision = correct hits / hits and recall = correct hits / positives.

GPTCache (PyPI ``gptcache``, in the git-ignored venv peers/gptcache-venv, never a project dependency) runs
in the same invocation, in a subprocess of that venv, on the same pairs and the same vectors: its custom
``embedding_func`` returns our MiniLM vector for a text, its data manager is sqlite + faiss (flat L2), its
similarity evaluation ``SearchDistanceEvaluation`` (its default and the one of its own QQP benchmark).
Each pair goes through its public ``put``/``get`` API in isolation (put text_a, get text_b, remove the
entry). Its hit rule is ``4 - squared L2 >= 4 * similarity_threshold``; on unit vectors that is
``cosine >= 2 * similarity_threshold - 1``, so our cosine threshold c is GPTCache's ``(1 + c) / 2``.
GPTCache's own answer to false hits, ``KReciprocalEvaluation`` (the query must be among the cached
entry's k nearest stored neighbours), is scored too, with the faiss store holding every distinct text_a
of the set. Its model-based evaluators (ONNX cross-encoder, SBERT cross-encoder, Cohere) need a model
download and cannot run here.

The peer venv (git-ignored; nothing here downloads a model)::

    python3 -m venv peers/gptcache-venv
    peers/gptcache-venv/bin/pip install gptcache==0.1.44 faiss-cpu==1.15.1 sqlalchemy==2.1.9 numpy==2.4.6

(GPTCache imports SQLAlchemy lazily for its sqlite store and tries to pip-install it at run time when it is
missing, hence the explicit pin.)

Usage::

    python bench/cache_eval.py                    # all three sets, QQP subsampled to 20,000 pairs
    python bench/cache_eval.py --qqp-pairs 0      # all 56,597 QQP dev pairs (embedding takes ~8 min)
    python bench/cache_eval.py --no-gptcache --sweep --ablation
    python bench/cache_eval.py --before 302bfec^  # also the default preset of that revision, same pairs

``--before REV`` extracts ``services/`` of that git revision into a temporary folder and runs its default
preset (its threshold, rules and, if it has one, learned check) in a subprocess whose ``PYTHONPATH`` puts
that tree first, on the same pairs and cosines: before and after come from one run.

The same file is the GPTCache worker: ``peers/gptcache-venv/bin/python bench/cache_eval.py
--gptcache-worker IN.npz OUT.npz`` (only numpy and gptcache are imported in that mode).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CACHE_DIR = ROOT / "build" / "cache_eval"
PEER_PYTHON = ROOT / "peers" / "gptcache-venv" / "bin" / "python"
SETS = ("langcache-chatgpt-pairs", "gsmplus-testmini", "gptcache-qqp", "adversarial")
SHORT = {"langcache-chatgpt-pairs": "langcache", "gsmplus-testmini": "gsm-plus", "gptcache-qqp": "qqp",
         "adversarial": "adversarial"}  # fmt: skip
# Kinds of adversarial edit that must never be served at the default preset (the aim).
MUST_NEVER_HIT = ("number", "unit", "negation", "entity_swap")
# Below this cosine no candidate reaches the learned check (see bench/train_learned_check.py).
LEARNED_PREFILTER = 0.70
SEED = 20251122
GRID = np.round(np.arange(0.50, 0.996, 0.01), 2)
RECALL_TARGETS = (0.5, 0.3)
# What the per-candidate costs are read with: wall time (perf_counter) by default; ``--clock cpu`` reads the
# thread's CPU time instead, which leaves out the time the thread waited for a core on a shared machine
# (the p99 of wall time there measures the neighbours, not the check).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


# ---------------------------------------------------------------------------------------------- data


@dataclass
class PairSet:
    """One labelled pair set, embedded."""

    name: str
    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray
    note: str = ""
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    a_index: np.ndarray | None = None
    b_index: np.ndarray | None = None
    cosine: np.ndarray | None = None
    kinds: list[str] = field(default_factory=list)


def load_adversarial(data_dir: Path) -> PairSet:
    """The pairs bench/adversarial.py generates from every dev set's texts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adversarial import generate, load_dev_texts

    pairs = generate(load_dev_texts(data_dir))
    return PairSet(
        name="adversarial",
        text_a=[p.text_a for p in pairs],
        text_b=[p.text_b for p in pairs],
        labels=np.array([p.label for p in pairs], dtype=np.int8),
        note=f"{len(pairs)} generated pairs ({sum(p.label for p in pairs)} benign rewrites)",
        kinds=[p.kind for p in pairs],
    )


def load_pairs(name: str, data_dir: Path, qqp_pairs: int) -> PairSet:
    if name == "adversarial":
        return load_adversarial(data_dir)
    folder = data_dir / name
    dev = set((folder / "dev_ids.txt").read_text().split())
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["id"] in dev]
    note = f"{len(rows)} dev pairs"
    if name == "gptcache-qqp" and 0 < qqp_pairs < len(rows):
        rows = random.Random(SEED).sample(rows, qqp_pairs)
        rows.sort(key=lambda r: r["id"])
        note = f"{qqp_pairs} of {len(dev)} dev pairs, sampled with seed {SEED}"
    return PairSet(
        name=name,
        text_a=[r["text_a"] for r in rows],
        text_b=[r["text_b"] for r in rows],
        labels=np.array([int(r["label"]) for r in rows], dtype=np.int8),
        note=note,
    )


def embed(pairs: PairSet, model_id: str | None) -> float:
    """Fills vectors and cosines; returns seconds spent embedding (0 when the vectors were cached)."""
    from tollway.embedding.model import DEFAULT_MODEL_ID, load_model

    model_id = model_id or DEFAULT_MODEL_ID
    pairs.texts = sorted(set(pairs.text_a) | set(pairs.text_b))
    digest = hashlib.sha256("\x1e".join(pairs.texts).encode()).hexdigest()[:16]
    path = CACHE_DIR / f"{pairs.name}.{model_id}.{digest}.npy"
    spent = 0.0
    if path.exists():
        pairs.vectors = np.load(path)
    else:
        started = time.perf_counter()
        pairs.vectors = load_model(model_id).embed(pairs.texts).vectors
        spent = time.perf_counter() - started
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.save(path, pairs.vectors)
    position = {text: i for i, text in enumerate(pairs.texts)}
    pairs.a_index = np.array([position[t] for t in pairs.text_a])
    pairs.b_index = np.array([position[t] for t in pairs.text_b])
    pairs.cosine = np.einsum("ij,ij->i", pairs.vectors[pairs.a_index], pairs.vectors[pairs.b_index])
    return spent


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class Method:
    """A way to decide hits: a per-pair score compared with a threshold, and an optional veto."""

    name: str
    score: np.ndarray  # hit iff score >= threshold (on the cosine grid) ...
    accept: np.ndarray  # ... and accept is True


def curve(method: Method, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, hits) at each grid threshold; precision is NaN where nothing hits."""
    positives = max(int(labels.sum()), 1)
    precision, recall, hits = [], [], []
    for t in GRID:
        hit = (method.score >= t) & method.accept
        n = int(hit.sum())
        correct = int((hit & (labels == 1)).sum())
        hits.append(n)
        precision.append(correct / n if n else float("nan"))
        recall.append(correct / positives)
    return np.array(precision), np.array(recall), np.array(hits)


def at_recall(method: Method, labels: np.ndarray, target: float) -> tuple[float, float, float] | None:
    """(threshold, precision, recall) at the highest grid threshold whose recall reaches the target."""
    precision, recall, _ = curve(method, labels)
    ok = np.nonzero(recall >= target)[0]
    if not len(ok):
        return None
    i = ok[-1]
    return float(GRID[i]), float(precision[i]), float(recall[i])


def lowest_stable(
    precision_by_set: Sequence[np.ndarray], floor: float, recall_by_set: Sequence[np.ndarray] | None = None
) -> float | None:
    """Lowest grid threshold at which every set keeps precision >= floor there and at all higher ones."""
    best = None
    for i in range(len(GRID) - 1, -1, -1):
        good = all(np.nan_to_num(p[i:], nan=1.0).min() >= floor for p in precision_by_set)
        if recall_by_set is not None:
            good = good and all(r[i] > 0 for r in recall_by_set)
        if not good:
            break
        best = float(GRID[i])
    return best


# ----------------------------------------------------------------------------------------- verifier


def run_verifier(pairs: PairSet, rules: Sequence[str] | object) -> tuple[np.ndarray, list[float]]:
    """Verifier decision per pair (query = text_b, cached = text_a) and the time per call in seconds.

    ``rules`` is a list of rule names or a ready Verifier (a preset's, learned check included). The text
    memo is cleared first so every timed call includes analysing both texts, as a cold lookup does.
    """
    from tollway.cache.verifier import Verifier
    from tollway.cache.verify_text import analyze

    analyze.cache_clear()
    verifier = rules if isinstance(rules, Verifier) else Verifier(rules)  # type: ignore[arg-type]
    assert pairs.cosine is not None
    accept = np.empty(len(pairs.text_a), dtype=bool)
    times = []
    for i, (a, b) in enumerate(zip(pairs.text_a, pairs.text_b, strict=True)):
        started = clock()
        accept[i] = verifier.check(b, a, float(pairs.cosine[i])).accept
        times.append(clock() - started)
    return accept, times


def learned_scores(pairs: PairSet) -> tuple[np.ndarray, list[float]]:
    """The learned check's probability per pair where the hard rules pass and cosine >= the pre-filter (else
    0), and the learned check's own time per scored candidate (texts already analysed: the rules did it)."""
    from tollway.cache.learned_check import shipped
    from tollway.cache.verifier import CONTRADICTION_RULES, Verifier

    model = shipped()
    hard = Verifier(CONTRADICTION_RULES)
    passed = frozenset(CONTRADICTION_RULES)  # as in the service: the rules ran first and did not object
    assert pairs.cosine is not None
    score = np.zeros(len(pairs.text_a))
    times = []
    for i, (a, b) in enumerate(zip(pairs.text_a, pairs.text_b, strict=True)):
        cos = float(pairs.cosine[i])
        if cos < LEARNED_PREFILTER or not hard.check(b, a).accept:
            continue
        started = clock()
        score[i] = model.probability(b, a, cos, passed=passed)
        times.append(clock() - started)
    return score, times


def gptcache_formula(pairs: PairSet) -> np.ndarray:
    """GPTCache's SearchDistanceEvaluation score on our vectors, computed in-process: ``(4 - L2^2) / 4``
    clipped to [0, 1] (its faiss store returns squared L2), mapped back onto the cosine grid as 2s - 1."""
    assert pairs.vectors is not None and pairs.a_index is not None and pairs.b_index is not None
    diff = pairs.vectors[pairs.a_index] - pairs.vectors[pairs.b_index]
    s = np.clip((4.0 - np.einsum("ij,ij->i", diff, diff)) / 4.0, 0.0, 1.0)
    return 2 * s - 1


# ----------------------------------------------------------------------------------------- GPTCache


def run_gptcache(pairs: PairSet, work: Path) -> dict[str, np.ndarray] | str:
    """Runs the GPTCache worker in the peer venv; returns its per-pair scores or why it could not run."""
    if not PEER_PYTHON.exists():
        return f"no peer venv at {PEER_PYTHON.relative_to(ROOT)} (see the docstring)"
    inp, out = work / f"{pairs.name}.in.npz", work / f"{pairs.name}.out.npz"
    np.savez(inp, texts=np.array(pairs.texts), vectors=pairs.vectors, a=pairs.a_index, b=pairs.b_index)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [str(PEER_PYTHON), str(Path(__file__).resolve()), "--gptcache-worker", str(inp), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return f"worker failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    with np.load(out) as result:
        return {key: result[key] for key in result.files}


def gptcache_worker(inp: str, out: str) -> None:
    """Scores every pair through GPTCache's own pipeline. Runs inside the peer venv."""
    import logging

    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation import KReciprocalEvaluation, SearchDistanceEvaluation

    logging.getLogger("gptcache").setLevel(logging.ERROR)
    with np.load(inp) as data:
        texts = data["texts"].tolist()
        vectors = data["vectors"].astype(np.float32)
        a_index, b_index = data["a"], data["b"]
    vector_of = {text: vectors[i] for i, text in enumerate(texts)}

    def embedding_func(text: str, **_: object) -> np.ndarray:
        return vector_of[text]  # our embedder's vector for this text, computed once by the parent

    # GPTCache commits to sqlite on every put; on a RAM disk that is not an fsync per pair.
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="gptcache-eval-", dir=shm if shm.is_dir() else None))
    manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{tmp / 'scalar.db'}"),
        VectorBase("faiss", dimension=vectors.shape[1], index_path=str(tmp / "faiss.index"), top_k=1),
    )
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=embedding_func,
        data_manager=manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=0.0),
    )

    def one_pair(i: int, threshold: float | None = None) -> float | bool:
        """Puts text_a, gets text_b, removes the entry; the score (or, with a threshold, the hit)."""
        if threshold is not None:
            cache.config = Config(similarity_threshold=threshold)
        put(texts[a_index[i]], f"answer-{i}", cache_obj=cache)
        seen: list[tuple[str, float]] = []
        answer = get(texts[b_index[i]], cache_obj=cache, hit_callback=seen.extend)
        found = manager.v.search(vectors[a_index[i]], top_k=1) or []
        manager.v.delete([int(vid) for _, vid in found])
        if threshold is not None:
            cache.config = Config(similarity_threshold=0.0)
            return answer == f"answer-{i}"
        return float(seen[0][1]) if answer == f"answer-{i}" and seen else -1.0

    started = time.perf_counter()
    search_distance = np.array([one_pair(i) for i in range(len(a_index))])
    seconds = time.perf_counter() - started

    # Cross-check: GPTCache's own thresholded decision equals the sweep rule on a sample of pairs.
    rng = np.random.default_rng(SEED)
    sample = rng.choice(len(a_index), size=min(200, len(a_index)), replace=False)
    agree = total = 0
    for similarity_threshold in (0.90, 0.94, 0.97):
        for i in sample:
            total += 1
            agree += one_pair(int(i), similarity_threshold) == (search_distance[i] >= similarity_threshold)

    # KReciprocalEvaluation needs a populated store: every distinct cached text of the set.
    from gptcache.manager.vector_data.base import VectorData
    from gptcache.manager.vector_data.faiss import Faiss

    store = Faiss(str(tmp / "kr.index"), vectors.shape[1], 4)
    cached_ids = np.unique(a_index)
    store.mul_add([VectorData(id=int(i), data=vectors[i]) for i in cached_ids])
    kreciprocal = KReciprocalEvaluation(vectordb=store, top_k=3)
    low, high = kreciprocal.range()
    kr_scores = np.array(
        [
            kreciprocal.evaluation(
                {"question": texts[b], "embedding": vectors[b]},
                {"question": texts[a], "embedding": vectors[a]},
            )
            / (high - low)
            for a, b in zip(a_index, b_index, strict=True)
        ]
    )
    shutil.rmtree(tmp, ignore_errors=True)
    np.savez(
        out,
        search_distance=search_distance,
        kreciprocal=kr_scores,
        seconds=np.array(seconds),
        agree=np.array([agree, total]),
    )


# ------------------------------------------------------------------------------- another revision


def run_preset_at(rev: str, loaded: dict[str, PairSet], work: Path) -> dict[str, tuple[float, np.ndarray]] | str:
    """The default preset of git revision ``rev``: its threshold and hit decision per pair, per set.

    Returns why it could not run instead, as a string.
    """
    tree = work / "rev"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "services"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return f"git archive {rev}: {archive.stderr.decode().strip()}"
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    inp, out = work / "rev.in.npz", work / "rev.out.npz"
    arrays: dict[str, np.ndarray] = {}
    for name, pairs in loaded.items():
        assert pairs.cosine is not None
        arrays[f"{name}/a"], arrays[f"{name}/b"] = np.array(pairs.text_a), np.array(pairs.text_b)
        arrays[f"{name}/cosine"] = pairs.cosine
    np.savez(inp, names=np.array(list(loaded)), **arrays)
    env = {**os.environ, "PYTHONPATH": str(tree / "services")}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--preset-worker", str(inp), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        return f"{rev}: worker failed: {last}"
    with np.load(out) as result:
        return {name: (float(result[f"{name}/threshold"]), result[f"{name}/hit"]) for name in loaded}


def preset_worker(inp: str, out: str) -> None:
    """Decides every pair with the default preset of whichever ``tollway`` is first on the path."""
    import inspect

    import tollway
    from tollway.cache.presets import PRESETS, verifier_for

    # The revision's tree must win over the checkout the venv points at, or "before" would be "after".
    expected = os.environ.get("PYTHONPATH", "")
    if expected and not str(Path(tollway.__file__).resolve()).startswith(str(Path(expected).resolve())):
        raise SystemExit(f"imported {tollway.__file__}, not the tree under {expected}")
    verifier = verifier_for("default")
    threshold = float(PRESETS["default"]["threshold"])
    takes_cosine = "cosine" in inspect.signature(verifier.check).parameters  # older verifiers had no model
    result: dict[str, np.ndarray] = {}
    with np.load(inp) as data:
        for name in data["names"].tolist():
            texts_a, texts_b, cosines = data[f"{name}/a"], data[f"{name}/b"], data[f"{name}/cosine"]
            hit = np.zeros(len(cosines), dtype=bool)
            for i, (a, b, cos) in enumerate(zip(texts_a.tolist(), texts_b.tolist(), cosines.tolist(), strict=True)):
                if cos >= threshold:
                    verdict = verifier.check(b, a, cos) if takes_cosine else verifier.check(b, a)
                    hit[i] = verdict.accept
            result[f"{name}/hit"] = hit
            result[f"{name}/threshold"] = np.array(threshold)
    np.savez(out, **result)


# ------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the pair sets")
    parser.add_argument("--qqp-pairs", type=int, default=20_000, help="QQP dev pairs to sample; 0 = all")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--model", default=None, help="embedding model id (default: the embedder's)")
    parser.add_argument("--no-gptcache", action="store_true", help="skip the GPTCache side")
    parser.add_argument("--sweep", action="store_true", help="print the whole precision/recall sweep")
    parser.add_argument("--ablation", action="store_true", help="also score each verifier rule on its own")
    parser.add_argument("--before", metavar="REV", help="also run the default preset of this git revision")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="time per candidate: wall or thread CPU")
    parser.add_argument("--gptcache-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--preset-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gptcache_worker:
        gptcache_worker(*args.gptcache_worker)
        return 0
    if args.preset_worker:
        preset_worker(*args.preset_worker)
        return 0

    from tollway.cache.presets import PRESETS, PROFILES, verifier_for

    global clock
    clock = CLOCKS[args.clock]
    started = time.perf_counter()
    decisions: dict[tuple[str, str], np.ndarray] = {}
    preset_timings: dict[str, list[float]] = {}
    learned_timings: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="cache-eval-"))
    results: dict[str, dict[str, Method]] = {}
    loaded: dict[str, PairSet] = {}
    timings: dict[str, list[float]] = {}
    notes: list[str] = []
    for name in args.sets:
        pairs = load_pairs(name, args.data, args.qqp_pairs)
        spent = embed(pairs, args.model)
        loaded[name] = pairs
        assert pairs.cosine is not None
        methods = {"cosine": Method("cosine", pairs.cosine, np.ones(len(pairs.labels), dtype=bool))}
        for profile in ("default", "strict"):
            accept, times = run_verifier(pairs, PROFILES[profile])
            methods[f"cosine+rules({profile})"] = Method(profile, pairs.cosine, accept)
            if profile == "strict":
                timings[name] = times
        for preset in PRESETS:
            accept, times = run_verifier(pairs, verifier_for(preset))
            decisions[(name, preset)] = (pairs.cosine >= PRESETS[preset]["threshold"]) & accept
            if preset == "default":
                # The shipped default (rules + learned check) swept over the cosine threshold.
                methods["cosine+preset(default)"] = Method("preset-default", pairs.cosine, accept)
            if preset == "default":
                preset_timings[name] = times
        score, times = learned_scores(pairs)
        learned_timings[name] = times
        everything = np.ones(len(pairs.labels), dtype=bool)
        # Swept on the learned probability (same 0.01 grid), candidates from cosine >= LEARNED_PREFILTER.
        methods["rules+learned(p)"] = Method("learned", score, everything)
        if not args.no_gptcache and not PEER_PYTHON.exists():
            methods["gptcache(distance, formula)"] = Method("gptcache-formula", gptcache_formula(pairs), everything)
        if not args.no_gptcache and PEER_PYTHON.exists():
            gpt = run_gptcache(pairs, work)
            if isinstance(gpt, str):
                notes.append(f"{SHORT[name]}: GPTCache not run: {gpt}")
            else:
                # Back onto the cosine grid: GPTCache similarity_threshold s == cosine threshold 2s - 1.
                hit_any = np.ones(len(pairs.labels), dtype=bool)
                methods["gptcache(distance)"] = Method("gptcache", 2 * gpt["search_distance"] - 1, hit_any)
                methods["gptcache(k-reciprocal)"] = Method("gptcache-kr", 2 * gpt["kreciprocal"] - 1, hit_any)
                agree, total = (int(x) for x in gpt["agree"])
                notes.append(
                    f"{SHORT[name]}: GPTCache put/get {len(pairs.labels)} pairs in {float(gpt['seconds']):.1f} s; "
                    f"its thresholded get agreed with the sweep rule on {agree}/{total} sampled decisions"
                )
        results[name] = methods
        notes.append(
            f"{SHORT[name]}: {pairs.note}, {int(pairs.labels.sum())} positive; "
            f"{len(pairs.texts)} texts embedded" + (f" in {spent:.0f} s" if spent else " (cached vectors)")
        )

    print("## Tier-2 precision at recall >= 0.5 (and >= 0.3), dev split\n")
    print("Threshold = highest cosine threshold (0.01 grid) whose recall reaches the target; GPTCache's own")
    print("similarity_threshold there is (1 + cosine) / 2. `-` = the method never reaches that recall.\n")
    print("| set | method | thr @R.5 | P @R.5 | R | thr @R.3 | P @R.3 | max R |")
    print("|---|---|---|---|---|---|---|---|")
    for name, methods in results.items():
        labels = loaded[name].labels
        for label, method in methods.items():
            row = [SHORT[name], label]
            for target in RECALL_TARGETS:
                point = at_recall(method, labels, target)
                if point is None:
                    row += ["-", "-"] + (["-"] if target == 0.5 else [])
                else:
                    row += [fmt(point[0], 2), fmt(point[1])] + ([fmt(point[2])] if target == 0.5 else [])
            max_recall = curve(method, labels)[1].max()
            row.append(fmt(max_recall))
            print("| " + " | ".join(row) + " |")

    if args.sweep:
        for name, methods in results.items():
            labels = loaded[name].labels
            print(f"\n### Sweep: {SHORT[name]} (precision / recall)\n")
            print("| cosine thr | gptcache s | " + " | ".join(methods) + " |")
            print("|---|---|" + "---|" * len(methods))
            curves = {label: curve(m, labels) for label, m in methods.items()}
            for i, t in enumerate(GRID):
                if t < 0.70 or round(t * 100) % 2:
                    continue
                cells = [f"{fmt(c[0][i], 3)} / {fmt(c[1][i], 3)}" for c in curves.values()]
                print(f"| {t:.2f} | {(1 + t) / 2:.3f} | " + " | ".join(cells) + " |")

    print("\n## At each preset's own configuration (threshold, rules, learned check)\n")
    print("| set | preset | threshold | hits | precision | recall |")
    print("|---|---|---|---|---|---|")
    for (name, preset), hit in decisions.items():
        labels = loaded[name].labels
        n, correct = int(hit.sum()), int((hit & (labels == 1)).sum())
        print(
            f"| {SHORT[name]} | {preset} | {PRESETS[preset]['threshold']:.2f} | {n} | "
            f"{fmt(correct / n if n else float('nan'))} | {fmt(correct / max(int(labels.sum()), 1))} |"
        )
    if args.before:
        before = run_preset_at(args.before, loaded, work)
        print(f"\n## Default preset: {args.before} (before) and this checkout (after), same pairs\n")
        if isinstance(before, str):
            print(f"not run: {before}")
        else:
            print("| set | before thr | hits | precision | recall | after thr | hits | precision | recall |")
            print("|---|---|---|---|---|---|---|---|---|")
            for name, (threshold, hit_before) in before.items():
                labels = loaded[name].labels
                cells = []
                after = (PRESETS["default"]["threshold"], decisions[(name, "default")])
                for t, hit in ((threshold, hit_before), after):
                    n, correct = int(hit.sum()), int((hit & (labels == 1)).sum())
                    precision = correct / n if n else float("nan")
                    cells += [f"{t:.2f}", str(n), fmt(precision), fmt(correct / max(int(labels.sum()), 1))]
                print(f"| {SHORT[name]} | " + " | ".join(cells) + " |")
    if "adversarial" in loaded:
        adv = loaded["adversarial"]
        print("\n## Adversarial set per kind: hits at each preset / pairs of that kind\n")
        kinds = sorted(set(adv.kinds))
        print("| kind | label | pairs | cosine >= 0.92 | " + " | ".join(PRESETS) + " |")
        print("|---|---|---|---|" + "---|" * len(PRESETS))
        for kind in kinds:
            mask = np.array([k == kind for k in adv.kinds])
            label = int(adv.labels[mask][0])
            cells = [str(int((decisions[("adversarial", p)] & mask).sum())) for p in PRESETS]
            assert adv.cosine is not None
            print(
                f"| {kind} | {label} | {int(mask.sum())} | {int(((adv.cosine >= 0.92) & mask).sum())} | "
                + " | ".join(cells)
                + " |"
            )
        banned = np.array([k in MUST_NEVER_HIT for k in adv.kinds])
        wrong = int((decisions[("adversarial", "default")] & banned).sum())
        print(
            f"\nDefault preset hits across a changed {'/'.join(MUST_NEVER_HIT)}: {wrong} of {int(banned.sum())} pairs"
        )

    print("\n## Preset thresholds from these curves\n")
    suggestions = suggest_presets(results, loaded)
    print("| preset | profile | rule | suggested | in presets.py |")
    print("|---|---|---|---|---|")
    for preset, (rule, value) in suggestions.items():
        current = PRESETS[preset]["threshold"]
        print(f"| {preset} | {len(PROFILES[preset])} rules | {rule} | {fmt(value, 2)} | {current:.2f} |")

    if timings:
        print("\nVerifier cost per candidate (strict profile, text memo cleared first, so both texts are analysed):")
        for name, times in timings.items():
            micro = np.array(times) * 1e6
            print(
                f"- {SHORT[name]}: p50 {np.percentile(micro, 50):.0f} us, p99 {np.percentile(micro, 99):.0f} us, "
                f"max {micro.max():.0f} us over {len(micro)} pairs"
            )
    for label, table in (("default preset (rules + learned check)", preset_timings),
                         ("learned check alone, texts already analysed", learned_timings)):  # fmt: skip
        print(f"\nCost per candidate, {label}:")
        for name, times in table.items():
            if not times:
                continue
            micro = np.array(times) * 1e6
            print(
                f"- {SHORT[name]}: p50 {np.percentile(micro, 50):.0f} us, p99 {np.percentile(micro, 99):.0f} us, "
                f"max {micro.max():.0f} us over {len(micro)} candidates"
            )
    if args.ablation:
        print("\n## Each rule alone on top of plain cosine (precision at recall >= 0.5; gsm-plus at >= 0.3)\n")
        from tollway.cache.verifier import ALL_RULES

        print("| rule | " + " | ".join(SHORT[n] for n in loaded) + " |")
        print("|---|" + "---|" * len(loaded))
        for rule in [None, *ALL_RULES]:
            cells = []
            for name, pairs in loaded.items():
                target = 0.3 if name == "gsmplus-testmini" else 0.5
                accept = run_verifier(pairs, [rule])[0] if rule else np.ones(len(pairs.labels), dtype=bool)
                point = at_recall(Method(str(rule), pairs.cosine, accept), pairs.labels, target)
                cells.append("-" if point is None else f"{point[1]:.3f} @{point[0]:.2f}")
            print(f"| {rule or '(none: plain cosine)'} | " + " | ".join(cells) + " |")
    for note in notes:
        print(f"- {note}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nTotal run time {time.perf_counter() - started:.0f} s")
    return 0


def suggest_presets(
    results: dict[str, dict[str, Method]], loaded: dict[str, PairSet]
) -> dict[str, tuple[str, float | None]]:
    """Applies the selection rules documented in tollway.cache.presets to the dev curves."""
    out: dict[str, tuple[str, float | None]] = {}
    lc, _, qqp, _ = SETS
    default = None
    if lc in results:
        # The learned check never lowers the cosine (see tollway.cache.presets); the rules alone set it.
        point = at_recall(results[lc]["cosine+rules(default)"], loaded[lc].labels, 0.5)
        default = None if point is None or point[1] < 0.97 else point[0]
        out["default"] = ("default rules alone R>=0.5 on langcache (P>=0.97 there); learned check vetoes", default)
        strict = None if point is None or default is None else max(default, point[0])
        out["strict"] = ("max(default, default rules alone R>=0.5 on langcache)", strict)
    if qqp in results:
        point = at_recall(results[qqp]["cosine+rules(default)"], loaded[qqp].labels, 0.5)
        out["loose"] = ("default profile, R>=0.5 on qqp", point[0] if point else None)
    return out


if __name__ == "__main__":
    sys.exit(main())
