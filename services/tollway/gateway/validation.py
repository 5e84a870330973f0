"""Checks a chat request as it arrived, before anything is spent on it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from tollway.common.chat import ChatRequest, check_tool_choice
from tollway.gateway.grounding import spec_problems
from tollway.gateway.guard.structured import compile_format
from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen
from tollway.mesh.propagation import FORWARDED

ROLES = ("system", "user", "assistant", "tool")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# gRPC metadata values other than "-bin" ones are printable ASCII (what a gRPC client may send on).
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
MAX_TOKENS_LIMIT = 32_768
# The prompt store's ids and labels are at most 64 characters; anything longer cannot exist.
MAX_TEMPLATE_ID_CHARS = 64


class _Message(Protocol):
    role: str
    content: str
    name: str


class _CachePolicy(Protocol):
    namespace: str
    mode: int


class _PromptRef(Protocol):
    template: str
    label: str
    version: int

    def WhichOneof(self, name: str) -> str | None: ...


class _Tool(Protocol):
    name: str
    description: str


class _ToolChoice(Protocol):
    mode: int
    tool_name: str


class _ResponseFormat(Protocol):
    schema_name: str


class _Retrieval(Protocol):
    collection: str
    top_k: int
    max_context_tokens: int


class ChatRequestLike(Protocol):
    """The fields GenerateRequest and CompleteRequest share."""

    model: str
    tier: str
    messages: Sequence[_Message]
    max_tokens: int
    temperature: float
    top_p: float
    stop: Sequence[str]
    seed: int
    user: str
    feature: str
    request_id: str
    cache_policy: _CachePolicy
    prompt_ref: _PromptRef
    tools: Sequence[_Tool]
    tool_choice: _ToolChoice
    response_format: _ResponseFormat
    retrieval: _Retrieval

    def HasField(self, name: str) -> bool: ...


@frozen
class Limits:
    """Size limits a request must respect."""

    max_input_chars: int = 400_000
    max_messages: int = 512
    default_max_tokens: int = 256


def validate(req: ChatRequestLike, limits: Limits) -> list[tuple[str, str]]:
    """Every problem with ``req`` as (field path, what to fix); empty when it is valid."""
    bad: list[tuple[str, str]] = []
    # With a prompt_ref the prompt supplies messages (and may name the model); what the
    # request and the prompt make together is checked again once it is resolved
    # (check_resolved), since only then is it known.
    with_prompt = req.HasField("prompt_ref")
    if with_prompt:
        bad.extend(_prompt_ref_problems(req.prompt_ref))
    if not req.model.strip():
        if not with_prompt:
            bad.append(("model", "required: name a model from GET /v1/models, or 'auto'"))
    elif len(req.model) > 128:
        bad.append(("model", "at most 128 characters"))
    if not req.messages:
        if not with_prompt:
            bad.append(("messages", "at least one message is required (or a prompt_ref)"))
    elif len(req.messages) > limits.max_messages:
        bad.append(("messages", f"at most {limits.max_messages} messages, got {len(req.messages)}"))
    total = 0
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            bad.append((f"messages[{i}].role", f"{m.role!r} is not a role; use one of {', '.join(ROLES)}"))
        if not m.content and m.role != "assistant":
            bad.append((f"messages[{i}].content", "must not be empty"))
        total += len(m.content)
    if total > limits.max_input_chars:
        bad.append(("messages", f"{total} characters in all; the limit is {limits.max_input_chars}"))
    if not 0 <= req.max_tokens <= MAX_TOKENS_LIMIT:
        bad.append(("max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT} (0 means {limits.default_max_tokens})"))
    if req.HasField("temperature") and not 0.0 <= req.temperature <= 2.0:
        bad.append(("temperature", f"must be between 0 and 2, got {req.temperature}"))
    if req.HasField("top_p") and not 0.0 < req.top_p <= 1.0:
        bad.append(("top_p", f"must be in (0, 1], got {req.top_p}"))
    if len(req.stop) > 4:
        bad.append(("stop", f"at most 4 stop sequences, got {len(req.stop)}"))
    for i, s in enumerate(req.stop):
        if not s or len(s) > 64:
            bad.append((f"stop[{i}]", "must be 1 to 64 characters"))
    if len(req.user) > 128:
        bad.append(("user", "at most 128 characters"))
    if len(req.feature) > 64:
        bad.append(("feature", "at most 64 characters"))
    if req.request_id and not _REQUEST_ID.match(req.request_id):
        bad.append(("request_id", "1 to 64 characters of letters, digits and . _ : -"))
    return bad


_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_TOOL_DESCRIPTION_CHARS = 4096


def tool_problems(req: ChatRequestLike) -> list[tuple[str, str]]:
    """Every problem with the tool and format fields that needs no parsing, as (field, what to fix).

    The JSON texts (tool parameters, the answer schema) are parsed and checked when the
    request is translated (:mod:`tollway.common.codec`, :func:`check_formats`).
    """
    bad: list[tuple[str, str]] = []
    if len(req.tools) > MAX_TOOLS:
        bad.append(("tools", f"at most {MAX_TOOLS} tools, got {len(req.tools)}"))
    seen: set[str] = set()
    for i, t in enumerate(req.tools):
        if not _TOOL_NAME.match(t.name):
            bad.append((f"tools[{i}].name", "1 to 64 characters of letters, digits, '_' and '-'"))
        elif t.name in seen:
            bad.append((f"tools[{i}].name", f"{t.name!r} is given twice; tool names must be unique"))
        seen.add(t.name)
        if len(t.description) > MAX_TOOL_DESCRIPTION_CHARS:
            bad.append((f"tools[{i}].description", f"at most {MAX_TOOL_DESCRIPTION_CHARS} characters"))
    if req.tool_choice.tool_name and req.tool_choice.tool_name not in seen:
        bad.append(("tool_choice.tool_name", f"{req.tool_choice.tool_name!r} is not one of the request's tools"))
    name = req.response_format.schema_name
    if name and not _TOOL_NAME.match(name):
        bad.append(("response_format.schema_name", "1 to 64 characters of letters, digits, '_' and '-'"))
    return bad


def check_formats(chat: ChatRequest) -> None:
    """Checks what only the decoded request shows: a forced tool that is offered, a valid schema.

    Raises:
        InvalidArgument: A forced tool missing from ``tools``; or an answer schema that is not
            a valid JSON Schema (reason INVALID_JSON_SCHEMA, naming the path of the fault).
    """
    check_tool_choice(chat.tool_choice, chat.tools)
    compile_format(chat.response_format)


def _prompt_ref_problems(ref: _PromptRef) -> list[tuple[str, str]]:
    # The prompt store checks the id's spelling and the variables itself; these are the
    # checks that need no call, so a request that cannot resolve costs no round trip.
    bad: list[tuple[str, str]] = []
    if not ref.template.strip():
        bad.append(("prompt_ref.template", "required: the id of a template in the prompt store"))
    elif len(ref.template) > MAX_TEMPLATE_ID_CHARS:
        bad.append(("prompt_ref.template", f"at most {MAX_TEMPLATE_ID_CHARS} characters"))
    selector = ref.WhichOneof("selector")
    if selector == "version" and ref.version < 1:
        bad.append(("prompt_ref.version", f"must be 1 or more, got {ref.version}"))
    elif selector == "label" and len(ref.label) > MAX_TEMPLATE_ID_CHARS:
        bad.append(("prompt_ref.label", f"at most {MAX_TEMPLATE_ID_CHARS} characters"))
    return bad


def _raise(bad: list[tuple[str, str]]) -> None:
    if bad:
        fields = ", ".join(f for f, _ in bad)
        raise InvalidArgument(f"invalid request: {bad[0][0]}: {bad[0][1]} (problems in: {fields})", bad)


def check(req: ChatRequestLike, limits: Limits) -> None:
    """Raises InvalidArgument listing every problem with ``req``."""
    bad = validate(req, limits) + tool_problems(req)
    if req.HasField("retrieval"):
        r = req.retrieval
        bad.extend(spec_problems(r.collection, r.top_k, r.max_context_tokens))
    _raise(bad)


def check_resolved(chat: ChatRequest, limits: Limits, template: str) -> None:
    """Checks what a request and its resolved prompt make together, before anything is spent.

    The request's own fields were checked on arrival; this catches what only the union
    shows: no model named by either, or rendered messages past the request limits.

    Raises:
        InvalidArgument: Listing every problem; the fields are the request's.
    """
    bad: list[tuple[str, str]] = []
    if not chat.model.strip():
        bad.append(("model", f"required: prompt template {template!r} names no model; name one in the request"))
    if len(chat.messages) > limits.max_messages:
        bad.append(("messages", f"at most {limits.max_messages} messages with the prompt's, got {len(chat.messages)}"))
    total = sum(len(m.content) for m in chat.messages)
    if total > limits.max_input_chars:
        bad.append(("messages", f"{total} characters with the prompt's; the limit is {limits.max_input_chars}"))
    if not 0 < chat.max_tokens <= MAX_TOKENS_LIMIT:
        bad.append(("max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT}, got {chat.max_tokens} from the prompt"))
    _raise(bad)


def _read_header(key: str) -> bool:
    """Whether the gateway reads or forwards this header (the others it never looks at)."""
    return key == "authorization" or key in FORWARDED or key.startswith("x-tollway-")


def check_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> None:
    """Refuses a request whose ``authorization``, forwarded or ``x-tollway-*`` header is not printable ASCII.

    Envoy passes HTTP header bytes on as they came, and gRPC hands non-UTF-8 ones over as
    Latin-1; a forwarded one would then fail the call made on the request's behalf. The
    message counts the bad characters and never repeats the value, which may be a key.

    Raises:
        InvalidArgument: Such a header holds a character outside 0x20-0x7e.
    """
    for key, value in metadata:
        if isinstance(value, str) and _read_header(key) and _NOT_PRINTABLE.search(value):
            count = len(_NOT_PRINTABLE.findall(value))
            raise InvalidArgument(
                f"the {key} header holds {count} character(s) that are not printable ASCII; "
                "header values must be printable ASCII",
                [(key, "printable ASCII")],
                reason="HEADER_NOT_ASCII",
            )
