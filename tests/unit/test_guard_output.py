"""The output guard on a stream: items split across deltas at every point are still caught."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.gateway.guard.output import OutputGuard, guard_stream
from tollway.gateway.guard.pii import PiiType
from tollway.gateway.guard.policy import GuardPolicy, parse_policies
from tollway.gateway.guard.redaction import Vault

POLICY = parse_policies({"defaults": {"pii": {"card": "reject", "secret": "reject"}}}).default

ITEMS = {
    "card": "4111 1111 1111 1111",
    "card_compact": "5555555555554444",
    "phone": "+44 20 7946 0958",
    "phone_us": "(415) 555-2671",
    "email": "jane.doe@example.com",
    "iban": "GB29 NWBK 6016 1331 9268 19",
    "ssn": "536-90-4399",
    "key": "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
    "password": "password = Zx81kLmnOpq2345RstUv",
}


def run(pieces: Sequence[str], policy: GuardPolicy = POLICY, vault: Vault | None = None) -> tuple[str, OutputGuard]:
    guard = OutputGuard(policy, vault)
    out = "".join(guard.feed(p) for p in pieces) + guard.flush()
    return out, guard


def whole(text: str, policy: GuardPolicy = POLICY) -> str:
    return run([text], policy)[0]


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_an_item_split_at_every_point_is_caught(name: str) -> None:
    text = f"Sure. The value is {ITEMS[name]} as you asked; anything else?"
    expected = whole(text)
    assert ITEMS[name] not in expected
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]])[0] == expected, i


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_an_item_streamed_one_character_at_a_time_is_caught(name: str) -> None:
    text = f"{ITEMS[name]} then more words follow here"
    out, guard = run(list(text))
    assert out == whole(text)
    assert ITEMS[name] not in out
    assert guard.held == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(sorted(ITEMS)), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_gives_the_same_answer_as_no_split(names: list[str], cuts: list[int]) -> None:
    fillers = ["Here you go:", "and", "also note", "(see above)", "—", "ok.\n"]
    rng = random.Random(len(names) * 31 + sum(cuts))
    text = " ".join(f"{rng.choice(fillers)} {ITEMS[n]}" for n in names) + " end."
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert run(pieces)[0] == whole(text)


def test_the_held_tail_is_bounded_by_the_look_behind() -> None:
    guard = OutputGuard(POLICY)
    limit = POLICY.output.lookbehind_chars
    # A long run of digit groups is chainable all the way: only N characters stay held.
    for _ in range(200):
        guard.feed("12 ")
        assert guard.held <= limit + 2
    # Prose passes at once except its last word.
    guard = OutputGuard(POLICY)
    assert guard.feed("The weather is fine today") == "The weather is fine "
    assert guard.held == len("today")


def test_reject_on_output_replaces_the_item_and_is_recorded_as_block() -> None:
    out, guard = run(["Your card 4111 1111 ", "1111 1111 is on file. Mail jo@example.com."])
    assert out == "Your card [removed] is on file. Mail [EMAIL]."
    assert guard.blocked
    rules = {(d.rule, d.action, d.count) for d in guard.decisions()}
    assert rules == {("pii.card", "block", 1), ("pii.email", "redact", 1)}


def test_output_guard_off_passes_everything() -> None:
    policy = parse_policies({"defaults": {"output": {"enabled": False}}}).default
    out, guard = run(["card 4111 1111 1111 1111"], policy)
    assert out == "card 4111 1111 1111 1111" and guard.decisions() == ()


def test_placeholders_split_across_deltas_are_restored_for_the_caller() -> None:
    vault = Vault()
    ph = vault.placeholder(PiiType.EMAIL, "jo@example.com")
    text = f"I will write to {ph} today."
    for i in range(len(text) + 1):
        guard = OutputGuard(POLICY, vault)
        guarded = [guard.feed(text[:i]), guard.feed(text[i:]), guard.flush()]
        # The guarded text (for the cache and the record) keeps the placeholder ...
        assert "".join(guarded) == text
        # ... and the caller's view, restored piece by piece, has the original.
        assert "".join(guard.restore(g) for g in guarded) == "I will write to jo@example.com today."


async def test_guard_stream_transforms_an_async_stream() -> None:
    vault = Vault()
    vault.placeholder(PiiType.PHONE, "+1 415-555-2671")

    async def deltas() -> AsyncIterator[str]:
        for piece in ["Call [PHO", "NE_1] or 4111 11", "11 1111 1111", " now"]:
            yield piece

    guard = OutputGuard(POLICY, vault)
    out = [piece async for piece in guard_stream(deltas(), guard)]
    assert "".join(out) == "Call +1 415-555-2671 or [removed] now"
    assert {d.action for d in guard.decisions()} == {"block", "restore"}
