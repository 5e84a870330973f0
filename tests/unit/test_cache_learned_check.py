"""The learned second check: features, loading the shipped weights, refusing a bad file, the preset wiring.

Examples are written for these tests, not taken from the evaluation pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollway.cache import learned_check, presets
from tollway.cache.cache import Cache
from tollway.cache.learned_check import (
    FEATURES,
    WEIGHTS_PATH,
    LearnedCheckError,
    features,
    load_learned_check,
    shipped,
)
from tollway.cache.namespaces import NamespaceRegistry


def test_shipped_weights_load_and_match_the_features() -> None:
    model = shipped()
    assert model.coef.shape == (len(FEATURES),)
    assert 0 < model.threshold("default") < 1
    doc = json.loads(WEIGHTS_PATH.read_text())
    assert "licence" in doc and "CC BY-SA" in doc["licence"]
    assert "gptcache-qqp" not in doc["trained_on"]  # Quora text is evaluation-only


def test_features_see_what_differs() -> None:
    same = features("how do I reset my router", "how can I reset my router", 0.97)
    swapped = features("npm audit false positives", "yarn audit false positives", 0.95)
    index = {name: i for i, name in enumerate(FEATURES)}
    assert same[index["key_jaccard"]] > swapped[index["key_jaccard"]]
    assert swapped[index["rule_term_swap"]] == 1.0
    assert same.shape == (len(FEATURES),)


def test_probability_orders_a_paraphrase_above_a_swapped_term() -> None:
    model = shipped()
    paraphrase = model.probability("how can I reset my router", "how do I reset my router", 0.96)
    swapped = model.probability("yarn audit false positives", "npm audit false positives", 0.96)
    assert paraphrase > model.threshold("default") > swapped


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(LearnedCheckError, match=str(path)):
        load_learned_check(path)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not json {",
        lambda d: json.dumps({**d, "features": ["cosine"]}),
        lambda d: json.dumps({**d, "coef": d["coef"][:-1]}),
        lambda d: json.dumps({**d, "coef": ["x"] * len(d["coef"])}),
        lambda d: json.dumps({**d, "scale": [0.0] * len(d["scale"])}),
        lambda d: json.dumps({**d, "intercept": None}),
        lambda d: json.dumps({**d, "operating_points": {"default": 1.5}}),
        lambda d: json.dumps([1, 2]),
    ],
    ids=["not-json", "other-features", "short-coef", "text-coef", "zero-scale", "no-intercept", "bad-point", "list"],
)
def test_corrupt_weights_file_names_the_path(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "weights.json"
    path.write_text(mutate(json.loads(WEIGHTS_PATH.read_text())))
    with pytest.raises(LearnedCheckError, match=str(path)):
        load_learned_check(path)


def test_cache_refuses_to_start_without_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "gone.json"
    monkeypatch.setattr(learned_check, "WEIGHTS_PATH", missing)
    presets.verifier_for.cache_clear()
    try:
        ns_file = tmp_path / "ns.yaml"
        ns_file.write_text("namespaces:\n  default: {preset: default}\n")
        with pytest.raises(LearnedCheckError, match=str(missing)):
            Cache(store=None, namespaces=NamespaceRegistry(ns_file), sync=None)  # type: ignore[arg-type]
    finally:
        presets.verifier_for.cache_clear()


def test_presets_without_the_learned_check_start_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(learned_check, "WEIGHTS_PATH", tmp_path / "gone.json")
    presets.verifier_for.cache_clear()
    try:
        ns_file = tmp_path / "ns.yaml"
        ns_file.write_text("namespaces:\n  faq: {preset: loose}\n")
        Cache(store=None, namespaces=NamespaceRegistry(ns_file), sync=None)  # type: ignore[arg-type]
    finally:
        presets.verifier_for.cache_clear()


def test_default_preset_rejects_with_the_learned_check_and_reports_its_score() -> None:
    verdict = presets.verifier_for("default").check("yarn audit false positives", "npm audit false positives", 0.95)
    assert not verdict.accept and verdict.reason == "learned_check"
    assert verdict.score is not None and verdict.score < 0.3
    ok = presets.verifier_for("default").check("how can I reset my router", "how do I reset my router", 0.96)
    assert ok.accept and ok.score is not None


def test_learned_check_never_runs_without_a_cosine() -> None:
    with pytest.raises(ValueError, match="cosine"):
        presets.verifier_for("default").check("how can I reset my router", "how do I reset my router")


def test_lookup_response_names_the_check_that_rejected_each_candidate() -> None:
    from tollway.cache.entries import LookupOutcome, MissReason, NamespaceStats, Rejection
    from tollway.cache.service import lookup_to_proto, stats_to_proto
    from tollway.common.caching import CacheTier

    outcome = LookupOutcome(
        CacheTier.MISS,
        "k" * 64,
        miss_reason=MissReason.REJECTED_BY_CHECK,
        check_reason="learned_check: p=0.050 < 0.30",
        rejections=(
            Rejection(7, 0.97, "number_mismatch", "10 vs 100"),
            Rejection(9, 0.95, "learned_check", "p=0.050 < 0.30", 0.05),
        ),
    )
    resp = lookup_to_proto(outcome)
    assert [(r.entry_id, r.check, r.detail) for r in resp.rejected_candidates] == [
        ("7", "number_mismatch", "10 vs 100"),
        ("9", "learned_check", "p=0.050 < 0.30"),
    ]
    assert not resp.rejected_candidates[0].HasField("learned_score")
    assert resp.rejected_candidates[1].learned_score == pytest.approx(0.05)
    stats = stats_to_proto(
        NamespaceStats("default", 0, 0, check_rejection_count=3, check_rejection_counts={"unit_mismatch": 3})
    )
    assert dict(stats.check_rejection_counts) == {"unit_mismatch": 3}


def test_default_preset_runs_at_the_operating_point_the_training_chose() -> None:
    # bench/train_learned_check.py picks the cosine and the probability together; a preset that drifted from
    # the recorded cosine would run the model at a point nobody measured.
    doc = json.loads(WEIGHTS_PATH.read_text())
    assert presets.PRESETS["default"]["threshold"] == doc["operating_cosine"]["default"]
    assert presets.verifier_for("default").learned_threshold == doc["operating_points"]["default"]
    assert presets.PRESETS["strict"]["threshold"] >= presets.PRESETS["default"]["threshold"]


def test_nothing_under_services_imports_scikit_learn() -> None:
    # scikit-learn is a dev requirement (training only); the service must run from the JSON weights alone.
    import ast
    import subprocess
    import sys

    root = Path(learned_check.__file__).resolve().parents[1]  # services/tollway
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "sklearn" or n.startswith("sklearn.") for n in names), path
    probe = (
        "import sys; from tollway.cache import cache, presets; "
        "presets.verifier_for('default').check('a b c', 'a b d', 0.95); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
