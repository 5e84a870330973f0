"""Unique text for prompts that the gateway's guards must let through."""

from __future__ import annotations

import uuid

# Hex digits to letters: a random hex string holds, now and then, a run of twelve or more digits
# that passes the Luhn check, which the default guard policy refuses as a payment card (a flaky
# 403 in a test that only wanted a prompt no cache had seen).
_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def unique_words() -> str:
    """32 random lowercase letters: unique per call, and no number of any kind."""
    return uuid.uuid4().hex.translate(_LETTERS)
