"""The prompts service's values: plain frozen dataclasses, no gRPC and no Redis."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

from tollway.mesh.frozen import frozen

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""Template ids, labels and metric names: safe in Redis keys, URLs and file names."""

ROLES = ("system", "user", "assistant")
DEFAULT_LABEL = "production"


class Resolution(enum.Enum):
    """Why a version was chosen (see ``tollway.prompts.v1.Resolution``)."""

    VERSION = "version"
    TENANT_PIN = "tenant_pin"
    VARIANT = "variant"
    LABEL = "label"


class ChangeKind(enum.Enum):
    """How a label moved."""

    SET = "set"
    ROLLBACK = "rollback"


@frozen
class MessageTemplate:
    """One message of a version, before rendering: ``role`` and a Jinja2 ``content``."""

    role: str
    content: str


@frozen
class ModelDefaults:
    """The model parameters a version brings; the request's own values win over them.

    Attributes mirror ``tollway.prompts.v1.ModelParameters``; None and empty mean "not set".
    """

    model: str = ""
    tier: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    response_format: str = ""
    response_schema_json: str = ""

    def canonical(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (unset ones included, so the hash is stable)."""
        return dataclasses.asdict(self) | {"stop": list(self.stop)}


@frozen
class Content:
    """What a version is: the part that is hashed.

    Attributes:
        messages: The message templates, in order.
        schema_json: The variables' JSON Schema as JSON text ("" when there are none).
        parameters: The model parameter defaults.
    """

    messages: tuple[MessageTemplate, ...]
    schema_json: str = ""
    parameters: ModelDefaults = ModelDefaults()


@frozen
class Version:
    """One immutable version.

    Attributes:
        template_id: The template's id.
        number: The version number, from 1.
        content: Exactly what was published.
        author: Who published it.
        created_ms: When (Unix ms).
        change_note: Why.
        content_hash: SHA-256 (hex) of the canonical content.
        token_count: Tokens of the example rendering (or of the static text).
        token_encoding: The tokenizer that counted them.
        static_prefix_count: Leading messages without variables.
        example_variables: The example variables given at publish ({} when none).
        evaluations: metric -> (count, mean); filled in when read.
    """

    template_id: str
    number: int
    content: Content
    author: str
    created_ms: int
    change_note: str
    content_hash: str
    token_count: int
    token_encoding: str
    static_prefix_count: int
    example_variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evaluations: Mapping[str, tuple[int, float]] = dataclasses.field(default_factory=dict)


@frozen
class Variant:
    """One arm of a label's A/B split: a version and its relative weight."""

    version: int
    weight: int


@frozen
class Label:
    """Where a label points, and its split (empty: none)."""

    name: str
    version: int
    variants: tuple[Variant, ...] = ()


@frozen
class Template:
    """A template and its routing state.

    Attributes:
        template_id: The id.
        description: What it is for.
        created_ms: When it was created (Unix ms).
        latest_version: The newest version number (0: none published).
        labels: Its labels, by name.
        pins: tenant -> version.
    """

    template_id: str
    description: str
    created_ms: int
    latest_version: int
    labels: tuple[Label, ...] = ()
    pins: Mapping[str, int] = dataclasses.field(default_factory=dict)


@frozen
class LabelChange:
    """One recorded move of a label (``from_version`` 0: the label was new)."""

    label: str
    from_version: int
    to_version: int
    actor: str
    at_ms: int
    kind: ChangeKind
    reason: str = ""
    cursor: str = ""  # where the history page after this entry starts (the store's id)


@frozen
class Rendered:
    """A rendered prompt.

    Attributes:
        messages: ``(role, text)`` pairs, in order.
        cacheable_prefix_count: Leading messages without variables.
        token_count: Tokens of the messages with the chat framing.
    """

    messages: tuple[tuple[str, str], ...]
    cacheable_prefix_count: int
    token_count: int


@frozen
class Resolved:
    """The result of ResolvePrompt: the version chosen, why, and its rendering."""

    version: Version
    resolution: Resolution
    label: str
    rendered: Rendered
    variant_index: int = 0


@frozen
class Published:
    """The result of a publish: the version, whether it is new, and advice."""

    version: Version
    created: bool
    warnings: tuple[str, ...] = ()
