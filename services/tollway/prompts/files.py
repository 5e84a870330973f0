"""Prompts as files: one YAML file per template, in a folder of a team's repository.

The format (every key but ``id`` and ``messages`` optional; unknown keys are refused)::

    id: support-triage                  # the template id
    description: Sorts a support ticket into a queue.
    author: support-team                # default: whoever pushes
    change_note: Ask for the product area too.
    labels: [production]                # set to this version where they do not exist yet
    parameters: {model: auto, tier: small, temperature: 0.2, max_tokens: 200}
    variables:                          # the JSON Schema of the variables, as YAML
      type: object
      required: [ticket]
      properties:
        ticket: {type: string, minLength: 1, maxLength: 4000}
    messages:
      - role: system
        content: You sort support tickets ...
      - role: user
        content: "{{ ticket }}"
    example: {ticket: "My invoice is wrong"}   # checked against the schema, counted

Labels listed here only bootstrap a new template: moving a label is a promotion (``tollway
prompts promote``), reviewed and recorded, never a side effect of pushing a file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.mesh.frozen import frozen
from tollway.mesh.schema import Reader, SchemaError, load_yaml, rule
from tollway.prompts.types import ID_PATTERN, ROLES, Content, MessageTemplate, ModelDefaults
from tollway.prompts.variables import canonical_json


class PromptFileError(SchemaError):
    """A prompt file is unreadable or malformed; the message names the file, key and value."""


@frozen
class _MessageSpec:
    role: str = dataclasses.field(metadata=rule(choices=ROLES, noun="a role"))
    content: str


@frozen
class _ParametersSpec:
    model: str = ""
    tier: str = dataclasses.field(default="", metadata=rule(choices=("", "small", "medium", "large"), noun="a tier"))
    temperature: float | None = dataclasses.field(default=None, metadata=rule(low=0, high=2))
    max_tokens: int = dataclasses.field(default=0, metadata=rule(low=0))
    top_p: float | None = dataclasses.field(default=None, metadata=rule(low=0, high=1, low_open=True))
    stop: tuple[str, ...] = ()
    response_format: str = dataclasses.field(
        default="", metadata=rule(choices=("", "text", "json_object", "json_schema"), noun="a response format")
    )
    response_schema: Any = None


@frozen
class _FileSpec:
    id: str
    messages: tuple[_MessageSpec, ...]
    description: str = ""
    author: str = ""
    change_note: str = ""
    labels: tuple[str, ...] = ()
    parameters: _ParametersSpec = _ParametersSpec()
    variables: Any = None
    example: Any = None


@frozen
class PromptFile:
    """One prompt file, read.

    Attributes:
        path: Where it was read from.
        template_id: The template's id.
        description: What the template is for.
        author: Who wrote it ("" = whoever pushes).
        change_note: Why this version.
        labels: Labels set to the published version where they do not exist yet.
        content: The version content it publishes.
        example: Example variables ({} when none).
    """

    path: Path
    template_id: str
    description: str
    author: str
    change_note: str
    labels: tuple[str, ...]
    content: Content
    example: Mapping[str, Any]


def parse_prompt_file(doc: Any, path: Path) -> PromptFile:
    """Builds a :class:`PromptFile` from parsed YAML.

    Raises:
        PromptFileError: An unknown key, a wrong type, a bad id, role or label; the message
            names the file and the key.
    """
    r = Reader(str(path), PromptFileError)
    spec = r.read(_FileSpec, doc)
    if not ID_PATTERN.match(spec.id):
        raise r.fail("id", spec.id, "is not a template id (1 to 64 of a-z, 0-9, '.', '_', '-')")
    for i, label in enumerate(spec.labels):
        if not ID_PATTERN.match(label):
            raise r.fail(f"labels[{i}]", label, "is not a label (1 to 64 of a-z, 0-9, '.', '_', '-')")
    if not spec.messages:
        raise r.fail_key("messages", "at least one message is required")
    for key, value in (("variables", spec.variables), ("example", spec.example)):
        if value is not None and not isinstance(value, dict):
            raise r.fail(key, value, "must be a mapping")
    p = spec.parameters
    if p.response_schema is not None and not isinstance(p.response_schema, dict):
        raise r.fail("parameters.response_schema", p.response_schema, "must be a mapping")
    content = Content(
        messages=tuple(MessageTemplate(m.role, m.content) for m in spec.messages),
        schema_json=canonical_json(spec.variables) if spec.variables is not None else "",
        parameters=ModelDefaults(
            model=p.model,
            tier=p.tier,
            temperature=p.temperature,
            max_tokens=p.max_tokens,
            top_p=p.top_p,
            stop=p.stop,
            response_format=p.response_format,
            response_schema_json=json.dumps(p.response_schema, sort_keys=True) if p.response_schema else "",
        ),
    )
    return PromptFile(
        path=path,
        template_id=spec.id,
        description=spec.description,
        author=spec.author,
        change_note=spec.change_note,
        labels=spec.labels,
        content=content,
        example=spec.example or {},
    )


def load_prompt_dir(directory: str | Path) -> list[PromptFile]:
    """Reads every ``*.yaml`` / ``*.yml`` file of a folder (not its subfolders), by name.

    Raises:
        PromptFileError: The folder does not exist, a file is malformed, or two files have
            the same id.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise PromptFileError(f"{folder}: not a directory of prompt files")
    out: list[PromptFile] = []
    seen: dict[str, Path] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        f = parse_prompt_file(load_yaml(path, what="the prompt file", error=PromptFileError).data, path)
        if f.template_id in seen:
            raise PromptFileError(f"{path}: id: {f.template_id!r} is already used by {seen[f.template_id]}")
        seen[f.template_id] = path
        out.append(f)
    return out
