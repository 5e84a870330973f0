"""Checking and rendering message templates: Jinja2's immutable sandbox, strict about undefined.

Two lines of defence, because a template is code that runs on every request:

* at publish, :meth:`Renderer.check` parses every message and refuses what a prompt never
  needs: includes and imports (there is no loader, and a template must be self-contained so
  its hash means what it renders), names starting with ``_`` (``''.__class__``,
  ``x['__globals__']``), and variables the schema does not declare. A parse error names the
  message, line and column.
* at render, the sandbox refuses whatever reaches Python internals dynamically
  (``x|attr('__class__')``, ``x[name]``), and the environment bounds what could exhaust the
  process: ``range()``, string and list repetition, powers, and the rendered size.

Nothing is evaluated with ``eval``; a refused render reports what rule it broke, never an
object's repr. Compiled templates are kept in a bounded LRU keyed by their source, so a
version is compiled once per process, whichever request renders it first.
"""

from __future__ import annotations

import collections
import numbers
import operator
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.lexer import TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tollway.common.tokens import count_prompt_tokens
from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen
from tollway.prompts.types import Content, Rendered

# Names a template may use without declaring them: Jinja's harmless globals. `lipsum` is
# left out because its output is random, which would break "same version, same prompt".
_GLOBALS = frozenset({"range", "loop", "dict", "cycler", "joiner", "namespace", "self", "varargs", "kwargs"})
_POWER_EXPONENT_MAX = 64
_FORBIDDEN_NODES = (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


class LimitExceeded(SecurityError):
    """A render went past one of the configured limits (named in the message)."""


@frozen
class Checked:
    """What publishing needs to know about a version's messages.

    Attributes:
        variables: Per message, the variables it uses.
        static_prefix_count: Leading messages that use no variable.
        warnings: Advice that does not refuse the publish.
    """

    variables: tuple[frozenset[str], ...]
    static_prefix_count: int
    warnings: tuple[str, ...]


class LRU:
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with limits on what could exhaust memory or CPU, and token positions
    recorded so that a syntax error can name its column."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_range: int, max_chars: int) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.max_range = max_range
        self.max_chars = max_chars
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        self._last_token = threading.local()

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > self.max_range:
            raise LimitExceeded(
                f"range() of {len(rng)} items is above the limit of {self.max_range} (TOLLWAY_PROMPTS_MAX_RANGE)"
            )
        return rng

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > self.max_chars:
                    raise LimitExceeded(
                        f"repeating a value {times} times would pass the rendered size limit of {self.max_chars} "
                        "characters (TOLLWAY_PROMPTS_MAX_RENDERED_CHARS)"
                    )
            return operator.mul(left, right)
        if (
            isinstance(right, numbers.Number)
            and isinstance(left, numbers.Number)
            and abs(right) > _POWER_EXPONENT_MAX  # type: ignore[arg-type]
            and abs(left) > 1  # type: ignore[arg-type]
        ):
            raise LimitExceeded(f"a power with an exponent above {_POWER_EXPONENT_MAX} is not allowed in a template")
        return operator.pow(left, right)

    def _tokenize(
        self, source: str, name: str | None, filename: str | None = None, state: str | None = None
    ) -> TokenStream:
        # Jinja's tokens carry a line but no column: follow the raw tokens' offsets so that a
        # syntax error can say where on its line it is (the parse stops at the last one read).
        source = self.preprocess(source, name, filename)
        raw = self.lexer.tokeniter(source, name, filename, state)
        record = self._last_token

        def tracked() -> Iterator[tuple[int, str, str]]:
            offset = 0
            try:
                for lineno, token, value in raw:
                    record.offset = offset
                    offset += len(value)
                    yield lineno, token, value
            except TemplateSyntaxError:
                record.offset = offset  # the lexer stopped right after the last token it read
                raise
            record.offset = offset

        return TokenStream(self.lexer.wrap(tracked(), name, filename), name, filename)

    def error_column(self, source: str, lineno: int) -> int:
        """The 1-based column of the last token read, on line ``lineno``, for a syntax error."""
        offset = min(getattr(self._last_token, "offset", 0), len(source))
        start = 0
        for _ in range(max(lineno - 1, 0)):
            nl = source.find("\n", start)
            if nl < 0:
                break
            start = nl + 1
        end = source.find("\n", start)
        end = len(source) if end < 0 else end
        if start <= offset <= end:
            return offset - start + 1
        line = source[start:end]
        return len(line) - len(line.lstrip()) + 1


def _field(index: int) -> str:
    return f"content.messages[{index}].content"


def _internal_names(tree: nodes.Template) -> Iterator[tuple[int, str]]:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = ""
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        if name.startswith("_"):
            yield node.lineno, name


class Renderer:
    """Checks message templates at publish and renders them per request.

    Args:
        cache_size: Compiled templates kept (LRU).
        max_range: Largest ``range()`` a template may use.
        max_rendered_chars: Most characters a rendered prompt may have.
        encoding: The tokenizer token counts use.
    """

    def __init__(self, *, cache_size: int, max_range: int, max_rendered_chars: int, encoding: str) -> None:
        self._env = _Environment(max_range, max_rendered_chars)
        self._compiled = LRU(cache_size)
        self._max_chars = max_rendered_chars
        self.encoding = encoding

    @property
    def compiled_count(self) -> int:
        """How many compiled templates the cache holds."""
        return len(self._compiled)

    def check(self, content: Content, declared: frozenset[str] | None) -> Checked:
        """Parses every message and applies the publish rules.

        Args:
            content: The version's content.
            declared: The variables the schema declares; None when there is no schema (then
                no variable may be used).

        Raises:
            InvalidArgument: One violation per bad message: a syntax error (with line and
                column), an include, a name starting with ``_``, an undeclared variable.
        """
        violations: list[tuple[str, str]] = []
        used: list[frozenset[str]] = []
        for i, message in enumerate(content.messages):
            try:
                tree = self._env.parse(message.content)
            except TemplateSyntaxError as exc:
                col = self._env.error_column(message.content, exc.lineno)
                violations.append((_field(i), f"does not parse: line {exc.lineno}, column {col}: {exc.message}"))
                used.append(frozenset())
                continue
            for node in tree.find_all(_FORBIDDEN_NODES):
                kind = type(node).__name__.lower()
                violations.append(
                    (_field(i), f"line {node.lineno}: {kind} is not allowed; a template must be self-contained")
                )
            for lineno, name in _internal_names(tree):
                violations.append(
                    (_field(i), f"line {lineno}: {name!r} starts with '_'; templates may not reach Python internals")
                )
            names = frozenset(meta.find_undeclared_variables(tree) - _GLOBALS)
            undeclared = sorted(names - (declared or frozenset()))
            if undeclared:
                violations.append(
                    (
                        _field(i),
                        f"uses {', '.join(undeclared)}, not declared in variables_schema_json "
                        "(add them to its properties)",
                    )
                )
            used.append(names)
        if violations:
            raise InvalidArgument(
                f"the template was refused: {violations[0][0]} {violations[0][1]}"
                + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""),
                violations,
                reason="TEMPLATE_INVALID",
            )
        prefix = 0
        while prefix < len(used) and not used[prefix]:
            prefix += 1
        warnings = tuple(
            f"messages[{i}] uses no variable but follows messages[{prefix}], which does: "
            "move it up to make it part of the cacheable prefix"
            for i in range(prefix + 1, len(used))
            if not used[i]
        )
        return Checked(tuple(used), prefix, warnings)

    def _compile(self, source: str) -> Template:
        template = self._compiled.get(source)
        if template is None:
            template = self._env.from_string(source)
            self._compiled.put(source, template)
        return template

    def render(self, content: Content, variables: Mapping[str, Any], static_prefix_count: int) -> Rendered:
        """Renders every message with ``variables`` (already checked against the schema).

        Args:
            content: The version's content (checked at publish).
            variables: The variables, with schema defaults filled in.
            static_prefix_count: Leading messages without variables (from :meth:`check`).

        Raises:
            InvalidArgument: A variable the template uses is undefined (``VARIABLE_UNDEFINED``),
                the template reached for Python internals (``TEMPLATE_UNSAFE``), a limit was
                passed (``TEMPLATE_LIMIT``, the limit named), or the template failed
                (``TEMPLATE_RENDER_FAILED``).
        """
        out: list[tuple[str, str]] = []
        total = 0
        for i, message in enumerate(content.messages):
            text = self._render_one(i, message.content, variables, self._max_chars - total)
            total += len(text)
            out.append((message.role, text))
        return Rendered(
            messages=tuple(out),
            cacheable_prefix_count=static_prefix_count,
            token_count=count_prompt_tokens(out, self.encoding),
        )

    def _render_one(self, index: int, source: str, variables: Mapping[str, Any], room: int) -> str:
        field = _field(index)
        try:
            template = self._compile(source)
            parts: list[str] = []
            size = 0
            # Stream the output so a runaway loop stops at the limit instead of filling memory.
            for chunk in template.generate(dict(variables)):
                size += len(chunk)
                if size > room:
                    raise LimitExceeded(
                        f"the rendered prompt passes the limit of {self._max_chars} characters "
                        "(TOLLWAY_PROMPTS_MAX_RENDERED_CHARS)"
                    )
                parts.append(chunk)
            return "".join(parts)
        except LimitExceeded as exc:
            raise InvalidArgument(
                f"{field}: {exc.message}", [(field, exc.message or "limit")], reason="TEMPLATE_LIMIT"
            ) from None
        except SecurityError:
            # The sandbox's own text names types; the caller needs only the rule it broke.
            raise InvalidArgument(
                f"{field} tried to reach Python internals, which templates may not do; nothing was rendered",
                [(field, "reaches Python internals")],
                reason="TEMPLATE_UNSAFE",
            ) from None
        except UndefinedError as exc:
            raise InvalidArgument(
                f"{field}: {exc.message}; pass it in variables (or give it a default in the schema)",
                [(field, exc.message or "undefined")],
                reason="VARIABLE_UNDEFINED",
            ) from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            text = str(exc)[:200]
            raise InvalidArgument(
                f"{field} failed to render: {type(exc).__name__}: {text}",
                [(field, f"{type(exc).__name__}: {text}")],
                reason="TEMPLATE_RENDER_FAILED",
            ) from None

    def static_text(self, content: Content) -> Sequence[tuple[str, str]]:
        """The messages with every tag removed: what is counted when there is no example."""
        out = []
        for message in content.messages:
            tree = self._env.parse(message.content)
            text = "".join(n.data for n in tree.find_all(nodes.TemplateData))
            out.append((message.role, text))
        return out
