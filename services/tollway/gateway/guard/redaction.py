"""Redaction: findings replaced by placeholders, and reversible placeholders mapped back.

Plain redaction writes ``[EMAIL]``. Reversible redaction writes numbered placeholders
(``[EMAIL_1]``, the same value always the same number within a request) and keeps the
originals in a :class:`Vault` that lives only in the request's memory: the provider, the
cache and the call record see placeholders, and the answer is mapped back for the caller
that owns the data. Because the cache key is taken over the redacted messages, two callers
with different addresses in the same sentence share one cached answer, each seeing its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tollway.gateway.guard.pii import Finding, PiiType

__all__ = ["PLACEHOLDER", "Vault", "label", "redact"]

_LABELS = {t: t.value.upper() for t in PiiType}
# The shape of any placeholder this module writes, numbered or not. The output guard keeps
# a placeholder whole across deltas by matching this shape.
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(_LABELS.values()) + r")(?:_\d{1,4})?\]")
_NUMBERED = re.compile(r"\[(?:" + "|".join(_LABELS.values()) + r")_\d{1,4}\]")


def label(pii_type: PiiType) -> str:
    """The placeholder of a plain redaction: ``[EMAIL]``."""
    return f"[{_LABELS[pii_type]}]"


class Vault:
    """The originals behind one request's reversible placeholders.

    Never serialised: it lives as long as the request and is dropped with it.
    """

    __slots__ = ("_by_placeholder", "_by_value", "_counts")

    def __init__(self) -> None:
        self._by_value: dict[tuple[PiiType, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[PiiType, int] = {}

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def placeholder(self, pii_type: PiiType, value: str) -> str:
        """The placeholder for ``value``: the one it already has, or the type's next number."""
        key = (pii_type, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._counts.get(pii_type, 0) + 1
        self._counts[pii_type] = n
        ph = f"[{_LABELS[pii_type]}_{n}]"
        self._by_value[key] = ph
        self._by_placeholder[ph] = value
        return ph

    def restore(self, text: str) -> tuple[str, int]:
        """``text`` with every placeholder of this vault replaced by its original.

        Returns:
            The restored text and how many placeholders were replaced. Placeholders the
            vault does not know (the model invented ``[EMAIL_9]``) stay as they are.
        """
        if not self._by_placeholder or "[" not in text:
            return text, 0
        count = 0

        def swap(m: re.Match[str]) -> str:
            nonlocal count
            original = self._by_placeholder.get(m.group())
            if original is None:
                return m.group()
            count += 1
            return original

        return _NUMBERED.sub(swap, text), count


def redact(
    text: str,
    findings: Sequence[Finding],
    replace: Mapping[PiiType, bool],
    vault: Vault | None = None,
    replacement: str = "",
) -> str:
    """``text`` with the findings whose type ``replace`` marks True replaced.

    Args:
        text: The text the findings were found in.
        findings: Ordered, non-overlapping (as :meth:`Scanner.scan` returns them).
        replace: Which types to replace; others are left as they are.
        vault: Replace with numbered placeholders kept here (reversible); None writes ``[TYPE]``.
        replacement: When set, the text every replaced item becomes (blocked content).
    """
    parts: list[str] = []
    pos = 0
    for f in findings:
        if not replace.get(f.type, False):
            continue
        parts.append(text[pos : f.start])
        if replacement:
            parts.append(replacement)
        elif vault is not None:
            parts.append(vault.placeholder(f.type, text[f.start : f.end]))
        else:
            parts.append(label(f.type))
        pos = f.end
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)
