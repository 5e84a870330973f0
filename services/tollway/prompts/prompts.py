"""The prompt store: templates, immutable versions, labels, splits, pins, resolution.

Domain code only: it checks every input, raises the typed errors of
:mod:`tollway.mesh.errors` and never touches gRPC. Every change happens in one store script
(see :mod:`tollway.prompts.store`); this module decides what may change and explains refusals.
A refused request changes nothing: all checks run before the one write.

Versions never change once published, so each process keeps the ones it has read (with their
parsed schema) in a bounded LRU: resolving an explicit version costs no Redis round trip, and
resolving a label costs one (the label, its split and the tenant's pin, in one pipeline).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tollway.common.paging import Page, page_size
from tollway.common.tokens import count_prompt_tokens
from tollway.mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tollway.mesh.frozen import frozen
from tollway.prompts import metrics
from tollway.prompts.config import PromptsConfig
from tollway.prompts.render import LRU, Renderer
from tollway.prompts.routing import choose
from tollway.prompts.store import HistoryRow, PromptsStore, ScriptResult, TemplateRow
from tollway.prompts.types import (
    DEFAULT_LABEL,
    ID_PATTERN,
    ROLES,
    ChangeKind,
    Content,
    Label,
    LabelChange,
    MessageTemplate,
    ModelDefaults,
    Published,
    Rendered,
    Resolution,
    Resolved,
    Template,
    Variant,
    Version,
)
from tollway.prompts.variables import canonical_json, check_variables, declared_names, parse_schema

log = logging.getLogger("tollway.prompts")

MAX_TEXT_CHARS = 1000
MAX_ACTOR_CHARS = 200
MAX_VARIANTS = 16
MAX_STOP = 4
TIERS = ("", "small", "medium", "large")
RESPONSE_FORMATS = ("", "text", "json_object", "json_schema")


def wall_clock_ms() -> int:
    """Now, in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def content_hash(content: Content) -> str:
    """SHA-256 (hex) of the canonical content: the messages, the schema (parsed, so spacing
    and key order do not count) and the parameters. Author, note and time are not content."""
    schema = json.loads(content.schema_json) if content.schema_json.strip() else None
    body = {
        "messages": [[m.role, m.content] for m in content.messages],
        "schema": schema,
        "parameters": content.parameters.canonical(),
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _check_id(value: str, field: str, what: str) -> None:
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid {what}: use 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            [(field, "malformed")],
        )


def _check_text(value: str, field: str, limit: int = MAX_TEXT_CHARS, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", [(field, "required")])
    if len(value) > limit:
        raise InvalidArgument(f"{field} has {len(value)} characters; the limit is {limit}", [(field, "too long")])


def _check_version_number(value: int, field: str = "version") -> None:
    if value < 1:
        raise InvalidArgument(f"{field} is {value}; versions are numbered from 1", [(field, "must be 1 or more")])


def _token(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _untoken(kind: str, token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raw = ""
    got, _, value = raw.partition(":")
    if got != kind or not value:
        raise InvalidArgument(
            "page_token is not one this list returned; pass next_page_token unchanged", [("page_token", "malformed")]
        )
    return value


@frozen
class _Prepared:
    """A version as kept in memory: itself and its parsed schema."""

    version: Version
    schema: dict[str, Any] | None


def _version_body(v: Version) -> str:
    return json.dumps(
        {
            "messages": [[m.role, m.content] for m in v.content.messages],
            "schema": v.content.schema_json,
            "parameters": v.content.parameters.canonical(),
            "author": v.author,
            "created_ms": v.created_ms,
            "note": v.change_note,
            "hash": v.content_hash,
            "tokens": v.token_count,
            "encoding": v.token_encoding,
            "prefix": v.static_prefix_count,
            "example": dict(v.example_variables),
        },
        ensure_ascii=False,
    )


def _version_from_body(template_id: str, number: int, body: str) -> Version:
    d = json.loads(body)
    p = d["parameters"]
    return Version(
        template_id=template_id,
        number=number,
        content=Content(
            messages=tuple(MessageTemplate(r, c) for r, c in d["messages"]),
            schema_json=d["schema"],
            parameters=ModelDefaults(**(p | {"stop": tuple(p["stop"])})),
        ),
        author=d["author"],
        created_ms=d["created_ms"],
        change_note=d["note"],
        content_hash=d["hash"],
        token_count=d["tokens"],
        token_encoding=d["encoding"],
        static_prefix_count=d["prefix"],
        example_variables=d["example"],
    )


def _parse_split(raw: str) -> tuple[Variant, ...]:
    return tuple(Variant(int(v), int(w)) for v, w in json.loads(raw)) if raw else ()


def _change(row: HistoryRow) -> LabelChange:
    f = row.fields
    return LabelChange(
        label=f["label"],
        from_version=int(f["from"]),
        to_version=int(f["to"]),
        actor=f["actor"],
        at_ms=int(f["at"]),
        kind=ChangeKind(f["kind"]),
        reason=f.get("reason", ""),
        cursor=row.entry_id,
    )


class Prompts:
    """The prompts service's domain object.

    Args:
        store: The Redis store.
        cfg: The service settings (limits, cache sizes).
        clock: Unix milliseconds (tests move it by hand).
    """

    def __init__(self, store: PromptsStore, cfg: PromptsConfig, *, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.renderer = Renderer(
            cache_size=cfg.compiled_cache_size,
            max_range=cfg.max_range,
            max_rendered_chars=cfg.max_rendered_chars,
            encoding=cfg.token_encoding,
        )
        self._versions = LRU(cfg.version_cache_size)

    # -- templates --------------------------------------------------------------------------

    async def create_template(self, template_id: str, description: str, actor: str) -> tuple[Template, bool]:
        """Creates a template; idempotent for the same description.

        Raises:
            InvalidArgument: A malformed id, a description over 1000 characters.
            AlreadyExists: The id exists with another description.
        """
        _check_id(template_id, "template_id", "template id")
        _check_text(description, "description")
        _check_text(actor, "actor", MAX_ACTOR_CHARS)
        result = await self.store.create_template(template_id, description, self.clock())
        if result.outcome == "exists" and result.values[0] != description:
            raise AlreadyExists(
                f"template {template_id!r} exists with another description; its id is taken",
                reason="TEMPLATE_EXISTS",
                metadata={"template_id": template_id},
            )
        return await self.get_template(template_id), result.outcome == "created"

    async def get_template(self, template_id: str) -> Template:
        """A template with its labels, splits and pins.

        Raises:
            NotFound: No such template.
        """
        _check_id(template_id, "template_id", "template id")
        row = await self.store.template(template_id)
        if row is None:
            raise self._no_template(template_id)
        return self._template(row)

    @staticmethod
    def _template(row: TemplateRow) -> Template:
        labels = tuple(
            Label(name, version, _parse_split(row.variants.get(name, "")))
            for name, version in sorted(row.labels.items())
        )
        return Template(
            row.template_id, row.description, row.created_ms, row.latest, labels, dict(sorted(row.pins.items()))
        )

    async def list_templates(self, size: int, token: str) -> Page[Template]:
        """A page of templates in id order (AIP-158)."""
        size = page_size(size)
        after = _untoken("t", token) if token else ""
        out: list[Template] = []
        # A listed id whose creation never completed has no template: skip it, read on.
        while len(out) <= size:
            ids = await self.store.template_ids(after, size + 1 - len(out))
            if not ids:
                break
            for tid in ids:
                row = await self.store.template(tid)
                if row is not None:
                    out.append(self._template(row))
            after = ids[-1]
        return Page.of(out, size, lambda t: _token("t", t.template_id))

    @staticmethod
    def _no_template(template_id: str) -> NotFound:
        return NotFound(
            f"no template {template_id!r}; create it first (CreateTemplate, or `tollway prompts push`)",
            reason="TEMPLATE_NOT_FOUND",
            metadata={"template_id": template_id},
        )

    @staticmethod
    def _no_version(template_id: str, number: int, latest: int) -> NotFound:
        newest = f"the newest is {latest}" if latest else "none is published yet"
        return NotFound(
            f"template {template_id!r} has no version {number}; {newest}",
            reason="VERSION_NOT_FOUND",
            metadata={"template_id": template_id, "version": str(number), "latest_version": str(latest)},
        )

    # -- versions ---------------------------------------------------------------------------

    def _check_content(self, content: Content) -> tuple[dict[str, Any] | None, Any]:
        """Every publish-time rule; returns the parsed schema and the renderer's findings."""
        cfg = self.cfg
        if not content.messages:
            raise InvalidArgument("a version needs at least one message", [("content.messages", "empty")])
        if len(content.messages) > cfg.max_messages:
            raise InvalidArgument(
                f"a version has {len(content.messages)} messages; the limit is {cfg.max_messages} "
                "(TOLLWAY_PROMPTS_MAX_MESSAGES)",
                [("content.messages", f"more than {cfg.max_messages}")],
                reason="TEMPLATE_TOO_LARGE",
                metadata={"limit": str(cfg.max_messages), "size": str(len(content.messages))},
            )
        bad_roles = [
            (f"content.messages[{i}].role", f"{m.role!r} is not one of {', '.join(ROLES)}")
            for i, m in enumerate(content.messages)
            if m.role not in ROLES
        ]
        if bad_roles:
            raise InvalidArgument(f"content.messages: {bad_roles[0][1]}", bad_roles)
        chars = sum(len(m.content) for m in content.messages)
        if chars > cfg.max_template_chars:
            raise InvalidArgument(
                f"the message templates have {chars} characters together; the limit is {cfg.max_template_chars} "
                "(TOLLWAY_PROMPTS_MAX_TEMPLATE_CHARS)",
                [("content.messages", f"longer than {cfg.max_template_chars} characters")],
                reason="TEMPLATE_TOO_LARGE",
                metadata={"limit": str(cfg.max_template_chars), "size": str(chars)},
            )
        self._check_parameters(content.parameters)
        schema = parse_schema(content.schema_json, cfg.max_schema_chars)
        checked = self.renderer.check(content, declared_names(schema) if schema is not None else None)
        return schema, checked

    @staticmethod
    def _check_parameters(p: ModelDefaults) -> None:
        f = "content.parameters"
        bad: list[tuple[str, str]] = []
        if p.temperature is not None and not (math.isfinite(p.temperature) and 0 <= p.temperature <= 2):
            bad.append((f"{f}.temperature", f"{p.temperature} is not in [0, 2]"))
        if p.top_p is not None and not (math.isfinite(p.top_p) and 0 < p.top_p <= 1):
            bad.append((f"{f}.top_p", f"{p.top_p} is not in (0, 1]"))
        if p.max_tokens < 0:
            bad.append((f"{f}.max_tokens", f"{p.max_tokens} is negative"))
        if len(p.stop) > MAX_STOP:
            bad.append((f"{f}.stop", f"{len(p.stop)} sequences; at most {MAX_STOP}"))
        if p.tier not in TIERS:
            bad.append((f"{f}.tier", f"{p.tier!r} is not one of small, medium, large"))
        if p.response_format not in RESPONSE_FORMATS:
            bad.append((f"{f}.response_format", f"{p.response_format!r} is not one of text, json_object, json_schema"))
        if p.response_format == "json_schema":
            try:
                if not isinstance(json.loads(p.response_schema_json), dict):
                    raise ValueError
            except ValueError:
                bad.append((f"{f}.response_schema_json", "must be a JSON object with json_schema"))
        elif p.response_schema_json:
            bad.append((f"{f}.response_schema_json", "only with response_format json_schema"))
        if bad:
            raise InvalidArgument(f"{bad[0][0]}: {bad[0][1]}", bad)

    async def publish(
        self,
        template_id: str,
        content: Content,
        author: str,
        change_note: str,
        example: Mapping[str, Any] | None = None,
    ) -> Published:
        """Publishes a version, or returns the one with identical content.

        Raises:
            InvalidArgument: See PublishVersion: parse errors (message, line, column), unsafe or
                undeclared names, a bad schema, example variables that do not fit, limits.
            NotFound: No such template.
        """
        _check_id(template_id, "template_id", "template id")
        _check_text(author, "author", MAX_ACTOR_CHARS, required=True)
        _check_text(change_note, "change_note")
        schema, checked = self._check_content(content)
        digest = content_hash(content)
        if example:
            filled = check_variables(schema, example, self.cfg.max_variables_chars, field="example_variables")
            token_count = self.renderer.render(content, filled, checked.static_prefix_count).token_count
        else:
            token_count = self._count(self.renderer.static_text(content))
        draft = Version(
            template_id=template_id,
            number=0,
            content=content,
            author=author,
            created_ms=self.clock(),
            change_note=change_note,
            content_hash=digest,
            token_count=token_count,
            token_encoding=self.cfg.token_encoding,
            static_prefix_count=checked.static_prefix_count,
            example_variables=dict(example or {}),
        )
        result = await self.store.publish(template_id, digest, _version_body(draft))
        if result.outcome == "missing":
            raise self._no_template(template_id)
        number = int(result.values[0])
        created = result.outcome == "new"
        metrics.PUBLISHES.labels("created" if created else "existing").inc()
        version = (await self._prepared(template_id, number)).version
        return Published(version, created, checked.warnings)

    def _count(self, messages: Sequence[tuple[str, str]]) -> int:
        return count_prompt_tokens(messages, self.cfg.token_encoding)

    async def _prepared(self, template_id: str, number: int) -> _Prepared:
        key = f"{template_id}\x00{number}"
        found = self._versions.get(key)
        if found is not None:
            return found
        body = await self.store.version(template_id, number)
        if body is None:
            latest = await self.store.latest(template_id)
            if latest is None:
                raise self._no_template(template_id)
            raise self._no_version(template_id, number, latest)
        version = _version_from_body(template_id, number, body)
        schema = json.loads(version.content.schema_json) if version.content.schema_json.strip() else None
        prepared = _Prepared(version, schema)
        self._versions.put(key, prepared)
        return prepared

    async def get_version(self, template_id: str, number: int) -> Version:
        """A version with its evaluation summaries.

        Raises:
            NotFound: No such template or version.
        """
        _check_id(template_id, "template_id", "template id")
        _check_version_number(number)
        version = (await self._prepared(template_id, number)).version
        return dataclasses.replace(version, evaluations=await self._evaluations(template_id, number))

    async def _evaluations(self, template_id: str, number: int) -> dict[str, tuple[int, float]]:
        fields = await self.store.evaluations(template_id, number)
        out: dict[str, tuple[int, float]] = {}
        for key, value in fields.items():
            metric, _, part = key.rpartition("|")
            if part == "n":
                count = int(value)
                out[metric] = (count, float(fields.get(f"{metric}|sum", "0")) / count if count else 0.0)
        return dict(sorted(out.items()))

    async def list_versions(self, template_id: str, size: int, token: str) -> Page[Version]:
        """A page of versions, newest first (AIP-158).

        Raises:
            NotFound: No such template.
        """
        _check_id(template_id, "template_id", "template id")
        size = page_size(size)
        latest = await self.store.latest(template_id)
        if latest is None:
            raise self._no_template(template_id)
        top = latest
        if token:
            raw = _untoken("v", token)
            if not raw.isdigit():
                raise InvalidArgument("page_token is malformed", [("page_token", "malformed")])
            top = min(int(raw), latest)
        numbers = list(range(top, max(top - size - 1, 0), -1))
        out = [
            _version_from_body(template_id, n, body)
            for n, body in zip(numbers, await self.store.versions(template_id, numbers), strict=True)
            if body is not None
        ]
        return Page.of(out, size, lambda v: _token("v", str(v.number - 1)))

    # -- labels -----------------------------------------------------------------------------

    async def set_label(
        self,
        template_id: str,
        label: str,
        number: int,
        *,
        actor: str,
        reason: str = "",
        expected: int | None = None,
        only_if_absent: bool = False,
    ) -> tuple[Label, LabelChange | None]:
        """Points ``label`` at version ``number`` and records the move.

        Returns:
            The label, and the recorded move (None when it already pointed there, or when
            ``only_if_absent`` and the label exists).

        Raises:
            InvalidArgument: Malformed label, missing actor.
            NotFound: No such template, or no such version (the label is not moved).
            FailedPrecondition: ``expected`` is set and the label points elsewhere.
        """
        _check_id(template_id, "template_id", "template id")
        _check_id(label, "label", "label")
        _check_version_number(number)
        _check_text(actor, "actor", MAX_ACTOR_CHARS, required=True)
        _check_text(reason, "reason")
        if expected is not None and expected < 0:
            raise InvalidArgument("expected_version is negative", [("expected_version", "must be 0 or more")])
        now = self.clock()
        result = await self.store.set_label(
            template_id, label, number, expected=expected, actor=actor, at_ms=now, reason=reason,
            only_if_absent=only_if_absent,
        )  # fmt: skip
        self._raise_for(result, template_id, number)
        if result.outcome == "conflict":
            raise FailedPrecondition(
                f"label {label!r} points at version {result.values[0]}, not {expected}; "
                "someone moved it: read it again and retry",
                reason="LABEL_MOVED",
                metadata={"label": label, "current_version": result.values[0]},
            )
        change = None
        if result.outcome == "moved":
            metrics.LABEL_MOVES.labels("set").inc()
            change = LabelChange(label, int(result.values[0]), number, actor, now, ChangeKind.SET, reason)
        template = await self.get_template(template_id)
        return next(lb for lb in template.labels if lb.name == label), change

    def _raise_for(self, result: ScriptResult, template_id: str, number: int) -> None:
        if result.outcome == "missing":
            raise self._no_template(template_id)
        if result.outcome == "noversion":
            raise self._no_version(template_id, number, int(result.values[0]))

    async def rollback_label(
        self, template_id: str, label: str, *, actor: str, reason: str = ""
    ) -> tuple[Label, LabelChange]:
        """Moves ``label`` back to the version before its last move.

        Raises:
            NotFound: No such template or label.
            FailedPrecondition: The label has no earlier version.
        """
        _check_id(template_id, "template_id", "template id")
        _check_id(label, "label", "label")
        _check_text(actor, "actor", MAX_ACTOR_CHARS, required=True)
        _check_text(reason, "reason")
        now = self.clock()
        result = await self.store.rollback_label(template_id, label, actor=actor, at_ms=now, reason=reason)
        if result.outcome == "missing":
            raise self._no_template(template_id)
        if result.outcome == "nolabel":
            raise self._no_label(template_id, label)
        if result.outcome == "noprev":
            raise FailedPrecondition(
                f"label {label!r} of {template_id!r} has no earlier version to roll back to "
                f"(it has pointed at {result.values[0]} since it was made); use SetLabel",
                reason="NOTHING_TO_ROLL_BACK",
                metadata={"label": label, "current_version": result.values[0]},
            )
        metrics.LABEL_MOVES.labels("rollback").inc()
        frm, to = int(result.values[0]), int(result.values[1])
        template = await self.get_template(template_id)
        lb = next(x for x in template.labels if x.name == label)
        return lb, LabelChange(label, frm, to, actor, now, ChangeKind.ROLLBACK, reason)

    @staticmethod
    def _no_label(template_id: str, label: str) -> NotFound:
        return NotFound(
            f"template {template_id!r} has no label {label!r}; point it at a version first (SetLabel, "
            "or `tollway prompts promote`)",
            reason="LABEL_NOT_FOUND",
            metadata={"template_id": template_id, "label": label},
        )

    async def label_history(self, template_id: str, label: str, size: int, token: str) -> Page[LabelChange]:
        """A page of label moves, newest first (AIP-158); ``label`` "" means every label.

        Raises:
            NotFound: No such template.
        """
        _check_id(template_id, "template_id", "template id")
        if label:
            _check_id(label, "label", "label")
        size = page_size(size)
        before = _untoken("h", token) if token else ""
        if not await self.store.exists(template_id):
            raise self._no_template(template_id)
        out: list[LabelChange] = []
        while len(out) <= size:
            rows = await self.store.history(template_id, before, max(size + 1, 64))
            if not rows:
                break
            out += [c for c in map(_change, rows) if not label or c.label == label]
            before = rows[-1].entry_id
        # The token resumes after the last entry shown, whichever entries were skipped.
        return Page.of(out[: size + 1], size, lambda c: _token("h", c.cursor))

    async def set_variants(self, template_id: str, label: str, variants: Sequence[Variant], actor: str) -> Label:
        """Sets (or, empty, ends) a label's A/B split.

        Raises:
            InvalidArgument: Too many arms, a negative weight, all weights zero, a version twice.
            NotFound: No such template, label or version.
        """
        _check_id(template_id, "template_id", "template id")
        _check_id(label, "label", "label")
        _check_text(actor, "actor", MAX_ACTOR_CHARS, required=True)
        bad: list[tuple[str, str]] = []
        if len(variants) > MAX_VARIANTS:
            bad.append(("variants", f"{len(variants)} arms; at most {MAX_VARIANTS}"))
        seen: set[int] = set()
        for i, v in enumerate(variants):
            if v.version < 1:
                bad.append((f"variants[{i}].version", "must be 1 or more"))
            if v.weight < 0:
                bad.append((f"variants[{i}].weight", f"{v.weight} is negative"))
            if v.version in seen:
                bad.append((f"variants[{i}].version", f"version {v.version} is listed twice"))
            seen.add(v.version)
        if variants and sum(max(v.weight, 0) for v in variants) == 0:
            bad.append(("variants", "every weight is 0; at least one must be positive"))
        if bad:
            raise InvalidArgument(f"{bad[0][0]}: {bad[0][1]}", bad)
        result = await self.store.set_variants(template_id, label, [(v.version, v.weight) for v in variants])
        if result.outcome == "missing":
            raise self._no_template(template_id)
        if result.outcome == "nolabel":
            raise self._no_label(template_id, label)
        if result.outcome == "noversion":
            latest = await self.store.latest(template_id) or 0
            raise self._no_version(template_id, int(result.values[0]), latest)
        log.info(
            "variants set",
            extra={
                "template_id": template_id,
                "label": label,
                "actor": actor,
                "variants": [dataclasses.astuple(v) for v in variants],
            },
        )
        return Label(label, int(result.values[0]), tuple(variants))

    async def set_pin(self, template_id: str, tenant: str, number: int, actor: str) -> None:
        """Pins ``tenant`` to version ``number``.

        Raises:
            InvalidArgument: Missing tenant or actor.
            NotFound: No such template or version.
        """
        _check_id(template_id, "template_id", "template id")
        _check_text(tenant, "tenant_id", MAX_ACTOR_CHARS, required=True)
        _check_text(actor, "actor", MAX_ACTOR_CHARS, required=True)
        _check_version_number(number)
        self._raise_for(await self.store.set_pin(template_id, tenant, number), template_id, number)
        log.info(
            "tenant pinned", extra={"template_id": template_id, "tenant": tenant, "version": number, "actor": actor}
        )

    async def delete_pin(self, template_id: str, tenant: str, actor: str) -> bool:
        """Removes ``tenant``'s pin; whether there was one.

        Raises:
            NotFound: No such template.
        """
        _check_id(template_id, "template_id", "template id")
        _check_text(tenant, "tenant_id", MAX_ACTOR_CHARS, required=True)
        if not await self.store.exists(template_id):
            raise self._no_template(template_id)
        deleted = await self.store.delete_pin(template_id, tenant)
        log.info("tenant pin removed", extra={"template_id": template_id, "tenant": tenant, "actor": actor})
        return deleted

    # -- resolution -------------------------------------------------------------------------

    async def resolve(
        self,
        template_id: str,
        *,
        label: str = "",
        version: int = 0,
        variables: Mapping[str, Any],
        tenant: str = "",
        user: str = "",
    ) -> Resolved:
        """Chooses the version for a request and renders it.

        Args:
            template_id: The template.
            label: The label to follow ("" and no ``version``: ``production``).
            version: The exact version (0: follow the label).
            variables: Plain JSON values.
            tenant: The caller's tenant (pins; the variant when no user is named).
            user: The caller's end user (the variant).

        Raises:
            NotFound: No such template, label or version.
            InvalidArgument: Every missing variable at once, a violation per wrong one, an
                unsafe template, a limit passed.
        """
        _check_id(template_id, "template_id", "template id")
        if version and label:
            raise InvalidArgument("name a label or a version, not both", [("version", "set together with label")])
        if version:
            _check_version_number(version)
            choice_version, resolution, index, followed = version, Resolution.VERSION, 0, ""
        else:
            followed = label or DEFAULT_LABEL
            _check_id(followed, "label", "label")
            route = await self.store.route(template_id, followed, tenant)
            if route.pin is not None:
                choice_version, resolution, index = route.pin, Resolution.TENANT_PIN, 0
            elif route.label_version is None:
                if not await self.store.exists(template_id):
                    raise self._no_template(template_id)
                raise self._no_label(template_id, followed)
            else:
                lb = Label(followed, route.label_version, _parse_split(route.variants_json))
                choice = choose(template_id, lb, pins={}, tenant=tenant, user=user)
                choice_version, resolution, index = choice.version, choice.resolution, choice.variant_index
        prepared = await self._prepared(template_id, choice_version)
        rendered = self._render(prepared, variables)
        metrics.RESOLVES.labels(resolution.value).inc()
        return Resolved(prepared.version, resolution, followed, rendered, index)

    def _render(self, prepared: _Prepared, variables: Mapping[str, Any]) -> Rendered:
        try:
            filled = check_variables(prepared.schema, variables, self.cfg.max_variables_chars)
            return self.renderer.render(prepared.version.content, filled, prepared.version.static_prefix_count)
        except InvalidArgument as exc:
            metrics.REFUSALS.labels(exc.reason).inc()
            raise

    async def render_draft(
        self, content: Content, variables: Mapping[str, Any]
    ) -> tuple[Rendered, str, tuple[str, ...]]:
        """Renders unpublished content with the publish and resolve checks.

        Returns:
            The rendering, the content hash it would have, and the publish warnings.
        """
        schema, checked = self._check_content(content)
        draft = Version("", 0, content, "", 0, "", "", 0, "", checked.static_prefix_count)
        return self._render(_Prepared(draft, schema), variables), content_hash(content), checked.warnings

    # -- evaluations ------------------------------------------------------------------------

    async def record_evaluation(
        self, template_id: str, number: int, metric: str, score: float, request_id: str = ""
    ) -> tuple[int, float, bool]:
        """Adds a score; returns the metric's count and mean, and whether this call counted.

        Raises:
            InvalidArgument: Malformed metric or request id, a score that is not finite.
            NotFound: No such template or version.
        """
        _check_id(template_id, "template_id", "template id")
        _check_id(metric, "metric", "metric name")
        _check_version_number(number)
        if not math.isfinite(score):
            raise InvalidArgument(f"score {score} is not a finite number", [("score", "not finite")])
        if request_id and (len(request_id) > 128 or any(c in request_id for c in "{} ")):
            raise InvalidArgument(
                "request_id must be at most 128 characters, without braces or spaces", [("request_id", "malformed")]
            )
        result = await self.store.record_evaluation(
            template_id, number, metric, score, request_id, self.cfg.evaluation_dedup_s * 1000
        )
        self._raise_for(result, template_id, number)
        count, total = int(result.values[0]), float(result.values[1])
        return count, total / count if count else 0.0, result.outcome == "ok"

    # -- seeding ----------------------------------------------------------------------------

    async def seed(self, files: Sequence[Any], actor: str) -> list[str]:
        """Publishes prompt files (see :mod:`tollway.prompts.files`) and sets their labels
        where those do not exist yet; returns one line per file saying what happened.

        Idempotent: a second run publishes nothing and moves no label.
        """
        lines = []
        for f in files:
            # A changed description does not make it another template.
            with contextlib.suppress(AlreadyExists):
                await self.create_template(f.template_id, f.description, actor)
            published = await self.publish(f.template_id, f.content, f.author or actor, f.change_note, f.example)
            set_labels = []
            for label in f.labels:
                _, change = await self.set_label(
                    f.template_id, label, published.version.number, actor=actor, reason="seed", only_if_absent=True
                )
                if change is not None:
                    set_labels.append(label)
            state = "published" if published.created else "unchanged"
            lines.append(
                f"{f.template_id}: version {published.version.number} {state}"
                + (f", labels set: {', '.join(set_labels)}" if set_labels else "")
            )
        return lines
