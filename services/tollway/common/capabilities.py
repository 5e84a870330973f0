"""What the public chat surfaces can honour, and the refusal for what they cannot.

The router knows each deployment's capabilities (``tools``, ``json``: see
:mod:`tollway.common.catalog`) and refuses a named model that lacks one. The gateway API
(``tollway.gateway.v1.GenerateRequest``) does not carry tool definitions, response formats,
log-probabilities or several choices, so a request on the OpenAI surface that asks for
one of them could only be answered by quietly dropping it: a 200 with prose where the
caller expected a tool call or a JSON object. It is refused instead, with a 400 that names
the parameter, the capability and the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tollway.mesh.errors import InvalidArgument

REASON = "CAPABILITY_UNSUPPORTED"


def _asked(body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(parameter, capability, why) for each thing ``body`` asks for that cannot be carried."""
    out: list[tuple[str, str, str]] = []
    if body.get("tools"):
        out.append(("tools", "tools", "tool definitions"))
    if body.get("functions"):
        out.append(("functions", "tools", "function definitions"))
    choice = body.get("tool_choice")
    if choice not in (None, "none", "auto") and not body.get("tools"):
        out.append(("tool_choice", "tools", "a tool choice"))
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind in ("json_object", "json_schema"):
        out.append(("response_format", "json", f"response_format {kind}"))
    if body.get("logprobs") is True:
        out.append(("logprobs", "logprobs", "token log-probabilities"))
    top = body.get("top_logprobs")
    if type(top) is int and top > 0:
        out.append(("top_logprobs", "logprobs", "token log-probabilities"))
    n = body.get("n")
    if type(n) is int and n > 1:
        out.append(("n", "n", "several choices (n > 1)"))
    return out


def check_openai_body(body: Any) -> None:
    """Refuses a chat-completions body asking for what Tollway would have to drop.

    Checked before the body is translated: the first thing asked for names the
    parameter (OpenAI's ``param``), every one is listed as a violation.

    Raises:
        InvalidArgument: reason ``CAPABILITY_UNSUPPORTED``, naming the parameters, the
            capabilities (metadata ``capability``) and the model (metadata ``model``).
    """
    if not isinstance(body, Mapping):
        return  # the translation refuses a body that is not an object, with its own message
    asked = _asked(body)
    if not asked:
        return
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    what = ", ".join(f"'{param}' ({why})" for param, _, why in asked)
    raise InvalidArgument(
        f"{what}: not supported for model {model!r} through this API, which cannot carry "
        f"{'it' if len(asked) == 1 else 'them'} to the provider; the request was not sent. "
        "Remove the parameter (Tollway never answers without honouring it)",
        [(param, f"capability {cap} is not supported") for param, cap, _ in asked],
        reason=REASON,
        metadata={"model": model, "capability": ",".join(dict.fromkeys(cap for _, cap, _ in asked))},
    )
