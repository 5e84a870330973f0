"""What a provider fake does, decided by the model name, the same for every wire format.

Scenarios (the model name, or a dash-separated part of it after ``fake-``):
    anything else            a normal answer: "Hello from <model>." word by word
    fake-words-<n>           a normal answer of n words
    fake-slow-<ms>           waits <ms> before the first byte (headers)
    fake-ttft-<ms>-words-<n> waits <ms> before the first byte, then answers n words
    fake-gap-<ms>            waits <ms> between chunks, 1000 chunks (for cancellation tests)
    fake-gap-<ms>-words-<n>  waits <ms> between chunks, n chunks (a slow stream that ends: the console tests)
    fake-prose-gap-<ms>      an English sentence of 31 words, one chunk per word with its leading space
                             (as model tokenizers cut text), <ms> apart (the output guard's bench)
    fake-cut-mid-stream      sends 3 chunks, then drops the connection (unterminated body)
    fake-reset-mid-stream    sends 3 chunks, then resets the connection (TCP RST)
    fake-stall-before-first  sends the response head (and the wire's opening event), then
                             nothing, keeping the connection open: a provider process that
                             stopped (SIGSTOP) before its first token
    fake-stall-mid-stream    sends 3 chunks, then nothing, keeping the connection open: a
                             provider that stopped mid-answer
    fake-malformed-sse       sends a chunk that is not JSON after 2 chunks
    fake-stream-error        sends 3 chunks, then the provider's in-stream error event
    fake-<status>            answers with that HTTP status and the provider's error body
                             (429, 503 and 529 carry ``retry-after: 1``)
    fake-<status>-then-ok    the first request of each x-request-id gets <status>, later ones
                             a normal answer (per request id, so tests stay independent)
    fake-no-usage            never sends usage (like llama.cpp streaming)
    fake-tools               asks for two tool calls, arguments split in awkward fragments
    fake-json                answers a JSON object (matching the request's schema when given)
    fake-bad-json            answers text that is not JSON
    fake-cached              reports cached prompt tokens (and cache writes where the wire has them)
    fake-long                answers with finish reason "length"
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.http import Response

TOOL_CALLS = (
    ("call_w1", "get_weather", {"city": "Paris", "unit": "celsius", "note": 'say "hi" \\ bye'}),
    ("call_t2", "get_time", {"tz": "Europe/Paris", "nested": {"list": [1, 2.5, None, True]}}),
)


PROSE = (
    "Proration credits the unused part of the monthly plan against the annual price, so the corrected "
    "invoice shows the difference as account credit, which is applied to your next payment automatically."
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The behaviour picked by a model name."""

    model: str
    status: int = 0
    then_ok: bool = False
    slow_ms: int = 0
    gap_ms: int = 0
    cut_after: int = -1
    reset: bool = False
    stall_after: int = -1
    malformed_after: int = -1
    error_after: int = -1
    usage: bool = True
    tools: bool = False
    json: bool = False
    bad_json: bool = False
    cached: bool = False
    length: bool = False
    n_words: int = -1
    prose: bool = False

    def words(self, schema: dict[str, Any] | None = None) -> list[str]:
        """The answer's text pieces, in order."""
        if self.prose:
            return [("" if i == 0 else " ") + w for i, w in enumerate(PROSE.split())]
        if self.gap_ms:
            return [f"tick{i} " for i in range(1000 if self.n_words < 0 else self.n_words)]
        if self.json:
            text = json.dumps(sample(schema or {"type": "object", "properties": {"answer": {"type": "string"}}}))
            return [text[i : i + 7] for i in range(0, len(text), 7)]
        if self.bad_json:
            return ["{not", " json", " at all"]
        if self.n_words >= 0:
            return [f"w{i} " for i in range(self.n_words)]
        return ["Hello", " from", f" {self.model}", "."]


def parse(model: str) -> Scenario:
    """The scenario of a model name (see the module docstring)."""
    s: dict[str, Any] = {"model": model}
    if m := re.fullmatch(r"fake-(\d{3})(-then-ok)?", model):
        s["status"] = int(m.group(1))
        s["then_ok"] = bool(m.group(2))
    if m := re.fullmatch(r"fake-slow-(\d+)", model):
        s["slow_ms"] = int(m.group(1))
    if m := re.fullmatch(r"fake-gap-(\d+)", model):
        s["gap_ms"] = int(m.group(1))
    if m := re.fullmatch(r"fake-gap-(\d+)-words-(\d+)", model):
        s["gap_ms"], s["n_words"] = int(m.group(1)), int(m.group(2))
    if m := re.fullmatch(r"fake-prose-gap-(\d+)", model):
        s["gap_ms"], s["prose"] = int(m.group(1)), True
    if m := re.fullmatch(r"fake-words-(\d+)", model):
        s["n_words"] = int(m.group(1))
    if m := re.fullmatch(r"fake-ttft-(\d+)-words-(\d+)", model):
        s["slow_ms"], s["n_words"] = int(m.group(1)), int(m.group(2))
    if model == "fake-cut-mid-stream":
        s["cut_after"] = 3
    if model == "fake-reset-mid-stream":
        s["cut_after"], s["reset"] = 3, True
    if model == "fake-stall-before-first":
        s["stall_after"] = 0
    if model == "fake-stall-mid-stream":
        s["stall_after"] = 3
    if model == "fake-malformed-sse":
        s["malformed_after"] = 2
    if model == "fake-stream-error":
        s["error_after"] = 3
    if model == "fake-no-usage":
        s["usage"] = False
    s["tools"] = model == "fake-tools"
    s["json"] = model == "fake-json"
    s["bad_json"] = model == "fake-bad-json"
    s["cached"] = model == "fake-cached"
    s["length"] = model == "fake-long"
    return Scenario(**s)


class SeenRequests:
    """Remembers request ids, for the ``-then-ok`` scenarios (bounded)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: dict[str, None] = {}
        self._limit = limit

    def first_time(self, request_id: str) -> bool:
        """True the first time ``request_id`` is seen (an empty id is always "first")."""
        if not request_id:
            return True
        if request_id in self._seen:
            return False
        if len(self._seen) >= self._limit:
            self._seen.pop(next(iter(self._seen)))
        self._seen[request_id] = None
        return True


def split_awkwardly(text: str) -> list[str]:
    """Pieces of ``text`` cut at places a naive parser would trip on (inside strings, escapes)."""
    cuts = sorted({1, 2, 5, 9, 10, 17, 18, 23, len(text) // 2, len(text) - 2})
    pieces, last = [], 0
    for cut in cuts:
        if 0 < cut < len(text) and cut > last:
            pieces.append(text[last:cut])
            last = cut
    pieces.append(text[last:])
    return [p for p in pieces if p]


def sample(schema: dict[str, Any]) -> Any:
    """A value satisfying a (simple) JSON schema: objects, arrays, enums and scalars."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: sample(v) for k, v in props.items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"})]
    if kind == "integer":
        return int(schema.get("minimum", 42))
    if kind == "number":
        return float(schema.get("minimum", 4.2))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "fake"


def prompt_tokens(texts: list[str]) -> int:
    """The fakes' token count of a prompt: words plus a fixed framing cost."""
    return sum(len(t.split()) for t in texts) + 7


async def stall_forever() -> None:
    """Never returns: what a stopped provider process sends (its connection stays open).

    Cancelled with the fake server's connection task when the client goes away or the
    server stops.
    """
    await asyncio.Event().wait()


async def play_whole(sc: Scenario, pieces: int, body: bytes, server_error: Response) -> Response:
    """A whole (non-streamed) answer played as the scenario plays a stream, as a real provider's
    would go: a slow model is as slow before its whole answer (``pieces`` gaps), a stopped one sends
    no head, a cut connection ends inside the body, a bad answer is not JSON, and a failure while
    generating is the wire's server error."""
    if sc.gap_ms:
        await asyncio.sleep(sc.gap_ms * pieces / 1000)
    if sc.stall_after >= 0:
        await stall_forever()
    if sc.cut_after >= 0:

        async def half() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]

        return Response(headers={"content-type": "application/json"}, stream=half(), cut=True, reset=sc.reset)
    if sc.malformed_after >= 0:
        return Response(headers={"content-type": "application/json"}, body=b"{not json")
    if sc.error_after >= 0:
        return server_error
    return Response(headers={"content-type": "application/json"}, body=body)
