"""Reassembles streamed tool-call fragments into complete calls with valid JSON arguments."""

from __future__ import annotations

import dataclasses
import json

from tollway.common.chat import ToolCall
from tollway.router.types import ToolCallDelta


class ToolCallError(ValueError):
    """The fragments of a call do not make a JSON object; the message names the call."""


@dataclasses.dataclass
class _Pending:
    id: str = ""
    name: str = ""
    parts: list[str] = dataclasses.field(default_factory=list)


class ToolCallAssembler:
    """Accumulates :class:`ToolCallDelta` fragments by index, in arrival order.

    Providers split a call's arguments anywhere (even inside a string or an escape), and
    may interleave several calls; only the concatenation per index is JSON.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _Pending] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, delta: ToolCallDelta) -> None:
        """Adds one fragment; the first one of an index carries its id and name."""
        call = self._calls.setdefault(delta.index, _Pending())
        if delta.id and not call.id:
            call.id = delta.id
        if delta.name and not call.name:
            call.name = delta.name
        if delta.arguments:
            call.parts.append(delta.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The complete calls, ordered by index and renumbered from 0.

        Raises:
            ToolCallError: A call has no name, or its arguments are not a JSON object.
        """
        out: list[ToolCall] = []
        for position, index in enumerate(sorted(self._calls)):
            pending = self._calls[index]
            text = "".join(pending.parts).strip() or "{}"
            if not pending.name:
                raise ToolCallError(f"tool call #{index} has no function name")
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ToolCallError(
                    f"tool call #{index} ({pending.name}) has arguments that are not valid JSON: {exc}: {text[:200]!r}"
                ) from None
            if not isinstance(value, dict):
                raise ToolCallError(f"tool call #{index} ({pending.name}) has arguments that are not a JSON object")
            out.append(ToolCall(id=pending.id or f"call_{position}", name=pending.name, arguments=text, index=position))
        return tuple(out)
