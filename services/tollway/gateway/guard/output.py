"""The output guard: the PII policy over a streamed answer, with a bounded look-behind.

A number can arrive split across deltas ("4111 1111" then " 1111 1111"), so the guard
holds back the end of the stream until what is held can no longer grow into an item:

- the last token (text after the last whitespace) is always held: it may still become an
  e-mail address or a key;
- before it, tokens that could belong to the same item are held with it: a token with a
  digit and no lower-case letter ("4111", "+44", "GB29"), an '@' or a '[', a short
  all-capitals token ("GB29 NWBK 6016 ..."), an assignment ("password =") or bare
  punctuation; "tick0" or "v2" cannot continue a number and goes out at once;
- never more than ``lookbehind_chars`` (the policy's N): past that the oldest text goes
  out, but never through the middle of an item already seen whole.

So a delta of ordinary prose is passed on at once minus its last word, and the added time
to each delta is the scan of what is released. Everything released is cut at whitespace
after complete tokens, so scanning each released piece finds what scanning the whole
answer would (tested at every split point).

Then, for the caller that owns the data, reversible placeholders from the input
(``[EMAIL_1]``) are mapped back (:meth:`OutputGuard.restore`). The lifecycle keeps the
guarded text, placeholders and all, for the cache and the call record, and sends the
restored text to the client only.

Items longer than N (a PEM private key block) are caught only when they fit in N.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator

from tollway.gateway.guard.decisions import GuardDecision
from tollway.gateway.guard.pii import PiiType
from tollway.gateway.guard.policy import GuardPolicy, PiiAction
from tollway.gateway.guard.redaction import Vault, label

__all__ = ["OutputGuard", "guard_stream"]

_WS = re.compile(r"\s")
# A token that may be part of an item continuing into the next one: digits without lower-case
# letters (the scanner's numbers, IBAN groups and ids are digits, separators and capitals, so
# "tick0" or "v2" cannot continue one), an '@' or '['; a short capitals-and-digits group; an
# assignment; punctuation alone.
_CHAINABLE = re.compile(
    r"[^a-z]*\d[^a-z]*$|.*[@\[]|[A-Z0-9]{1,4}$|.*[:=]$|[=:+\-()/.]+$|(?i:.*(?:key|secret|token|passw))",
    re.DOTALL,
)


class OutputGuard:
    """The output guard of one answer; feed it the deltas in order, then :meth:`flush`.

    Not shared between requests: it holds the answer's unreleased end.

    Args:
        policy: The request's guard policy (its output rules and look-behind).
        vault: The input's reversible placeholders, to map back in :meth:`restore`.
    """

    __slots__ = ("_actions", "_buf", "_counts", "_limit", "_replacement", "_restored", "_scanner", "_vault")

    def __init__(self, policy: GuardPolicy, vault: Vault | None = None) -> None:
        self._scanner = policy.output_scanner
        self._actions = policy.output_pii
        self._limit = policy.output.lookbehind_chars
        self._replacement = policy.output.replacement
        self._vault = vault
        self._buf = ""
        self._counts: Counter[tuple[PiiType, str]] = Counter()
        self._restored = 0

    @property
    def active(self) -> bool:
        """Whether the guard changes anything (scans, or maps placeholders back)."""
        return (self._scanner is not None and bool(self._scanner.types)) or bool(self._vault)

    @property
    def held(self) -> int:
        """Characters currently held back (at most the look-behind, plus an item seen whole)."""
        return len(self._buf)

    @property
    def blocked(self) -> bool:
        """Whether an item was replaced by the policy's replacement text."""
        return any(action == "block" for (_, action) in self._counts)

    def feed(self, delta: str) -> str:
        """Takes the next delta; returns the guarded text now safe to release ("" to hold it all)."""
        if self._scanner is None or not self._scanner.types:
            return delta
        buf = self._buf + delta
        cut = self._safe_cut(buf)
        if cut == 0:
            self._buf = buf
            return ""
        self._buf = buf[cut:]
        return self._guard(buf[:cut])

    def flush(self) -> str:
        """The guarded rest of the answer, at its end; the guard is empty afterwards."""
        rest, self._buf = self._buf, ""
        if not rest or self._scanner is None or not self._scanner.types:
            return rest
        return self._guard(rest)

    def restore(self, guarded: str) -> str:
        """``guarded`` with the input's reversible placeholders mapped back, for the caller only."""
        if self._vault is None:
            return guarded
        text, n = self._vault.restore(guarded)
        self._restored += n
        return text

    def decisions(self) -> tuple[GuardDecision, ...]:
        """What the guard did so far: one decision per PII type and action, and the restores."""
        out = [GuardDecision("output", f"pii.{t.value}", action, n) for (t, action), n in self._counts.items()]  # type: ignore[arg-type]
        if self._restored:
            out.append(GuardDecision("output", "reversible", "restore", self._restored))
        return tuple(out)

    # --- internals ---------------------------------------------------------------------------

    def _safe_cut(self, buf: str) -> int:
        """How much of ``buf`` can be released: up to the start of the held tail."""
        end = len(buf)
        cut = _last_token_start(buf, end)
        while cut > 0:
            # The token before the held tail: between the whitespace before `cut` and that before it.
            ws_end = cut
            while ws_end > 0 and buf[ws_end - 1].isspace():
                ws_end -= 1
            start = _last_token_start(buf, ws_end)
            if ws_end == start or _CHAINABLE.match(buf, start, ws_end) is None:
                break
            cut = start
        if end - cut > self._limit:
            cut = end - self._limit
            # Never release half of an item the scanner already sees whole.
            assert self._scanner is not None
            for f in self._scanner.scan(buf):
                if f.start < cut < f.end:
                    cut = f.start
                    break
        return cut

    def _guard(self, text: str) -> str:
        assert self._scanner is not None
        findings = self._scanner.scan(text)
        if not findings:
            return text
        parts: list[str] = []
        pos = 0
        for f in findings:
            action = self._actions.get(f.type, PiiAction.ALLOW)
            if action is PiiAction.ALLOW:
                continue
            parts.append(text[pos : f.start])
            if action is PiiAction.REDACT:
                parts.append(label(f.type))
                self._counts[(f.type, "redact")] += 1
            else:  # reject: an answer already streaming cannot be refused; the item is removed
                parts.append(self._replacement)
                self._counts[(f.type, "block")] += 1
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)


def _last_token_start(buf: str, end: int) -> int:
    """Where the token ending at ``end`` begins (after the last whitespace before ``end``)."""
    i = end
    while i > 0 and not buf[i - 1].isspace():
        i -= 1
    return i


async def guard_stream(deltas: AsyncIterable[str], guard: OutputGuard) -> AsyncIterator[str]:
    """Yields the caller's view of a stream of text deltas: guarded, then restored.

    A delta that is held entirely yields nothing; the held end is released when the
    stream ends. For the guarded text without restoring (cache, call record), use
    :meth:`OutputGuard.feed` and :meth:`OutputGuard.flush` directly.
    """
    async for delta in deltas:
        out = guard.feed(delta)
        if out:
            yield guard.restore(out)
    rest = guard.flush()
    if rest:
        yield guard.restore(rest)
