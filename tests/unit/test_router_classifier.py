"""The heuristic classifier's tiers and reasons; classifiers are pluggable."""

from __future__ import annotations

import pytest

from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat, Tool
from tollway.router.classifier import Classification, HeuristicClassifier, load_classifier


def req(*texts: str, **kw: object) -> ChatRequest:
    return ChatRequest("auto", tuple(ChatMessage("user", t) for t in texts), **kw)  # type: ignore[arg-type]


def test_a_short_plain_question_is_small() -> None:
    c = HeuristicClassifier().classify(req("What is the capital of France?"))
    assert c.tier == "small" and "no code" in c.reason


def test_code_makes_it_medium() -> None:
    c = HeuristicClassifier().classify(req("Fix this:\n```python\ndef f(x):\n    return x +\n```"))
    assert c.tier == "medium" and "code" in c.reason


def test_code_with_reasoning_and_steps_is_large() -> None:
    prompt = (
        "Explain why this deadlocks and compare two designs, step by step:\n"
        "1. read the code\n2. find the lock order\n3. propose a fix\n"
        "```go\nfunc main() { mu.Lock(); ch <- 1 }\n```"
    )
    c = HeuristicClassifier().classify(req(prompt))
    assert c.tier == "large"
    assert "code" in c.reason and "reasoning" in c.reason and "multi-step" in c.reason


def test_a_long_prompt_counts() -> None:
    c = HeuristicClassifier().classify(req("word " * 1500))
    assert c.score >= 2 and "prompt tokens" in c.reason


def test_tools_and_schemas_add_to_the_score() -> None:
    plain = HeuristicClassifier().classify(req("hello")).score
    rich = (
        HeuristicClassifier()
        .classify(req("hello", tools=(Tool("t"),), response_format=ResponseFormat("json_schema", schema={})))
        .score
    )
    assert rich == plain + 1.5


def test_many_turns_count() -> None:
    turns = tuple(ChatMessage("user" if i % 2 == 0 else "assistant", "ok") for i in range(14))
    c = HeuristicClassifier().classify(ChatRequest("auto", turns))
    assert "14 turns" in c.reason


class FixedClassifier:
    name = "fixed"

    def classify(self, request: ChatRequest) -> Classification:
        return Classification("large", 9.0, "always large")


def test_a_classifier_can_be_plugged_in_by_path() -> None:
    c = load_classifier("tests.unit.test_router_classifier:FixedClassifier")
    assert c.classify(req("hi")).tier == "large" and c.name == "fixed"
    assert isinstance(load_classifier("heuristic"), HeuristicClassifier)


@pytest.mark.parametrize("spec", ["nope", "no.such.module:X", "tests.unit.test_router_classifier:Missing"])
def test_a_bad_classifier_spec_fails_quoting_it(spec: str) -> None:
    with pytest.raises(ValueError, match=spec.split(":")[0]):
        load_classifier(spec)
