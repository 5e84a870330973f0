"""Rendering: the sandbox, strict undefined, limits, the cacheable prefix and the compile cache."""

from __future__ import annotations

import pytest

from tollway.mesh.errors import InvalidArgument
from tollway.prompts.render import Renderer
from tollway.prompts.types import Content, MessageTemplate


def renderer(**kw: int) -> Renderer:
    opts = {"cache_size": 8, "max_range": 100, "max_rendered_chars": 10_000}
    opts.update(kw)
    return Renderer(encoding="o200k_base", **opts)


def content(*texts: str, roles: tuple[str, ...] = ()) -> Content:
    return Content(tuple(MessageTemplate(roles[i] if i < len(roles) else "user", t) for i, t in enumerate(texts)))


ALL = frozenset({"name", "items", "x", "n", "s"})


def render(text: str, **variables: object) -> str:
    r = renderer()
    c = content(text)
    checked = r.check(c, ALL)
    return r.render(c, variables, checked.static_prefix_count).messages[0][1]


def test_renders_variables_loops_and_conditions() -> None:
    text = "Hi {{ name }}.{% for i in items %} [{{ i }}]{% endfor %}{% if x is defined %} x={{ x }}{% endif %}"
    assert render(text, name="Ada", items=[1, 2]) == "Hi Ada. [1] [2]"
    assert render(text, name="Ada", items=[], x=3) == "Hi Ada. x=3"


def test_an_undefined_variable_is_refused_not_rendered_empty() -> None:
    with pytest.raises(InvalidArgument) as info:
        render("Hello {{ name }}")
    assert info.value.reason == "VARIABLE_UNDEFINED"
    assert "'name' is undefined" in info.value.message


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ name.__init__.__globals__ }}",
        "{{ x['__class__'] }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_literal_python_internals_are_refused_at_publish(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        renderer().check(content(text), ALL)
    assert info.value.reason == "TEMPLATE_INVALID"
    assert "Python internals" in info.value.violations[0][1]


@pytest.mark.parametrize(
    ("text", "variables"),
    [
        ("{{ name|attr('__class__') }}", {"name": "x"}),
        ("{{ (name|attr(s)).__name__ if false else name|attr(s) }}", {"name": "x", "s": "__class__"}),
        ("{{ name[s] }}", {"name": "x", "s": "__class__"}),
        ("{{ '{0.__class__}'|attr('format')(name) }}", {"name": "x"}),
        ("{{ (name|attr(s))() }}", {"name": "x", "s": "__reduce__"}),
        ("{{ '{0.__class__.__init__.__globals__}'.format(name) }}", {"name": "x"}),
        ("{{ items.append(1) }}", {"items": [1]}),
    ],
)
def test_dynamic_reaches_for_internals_are_refused_at_render_and_leak_nothing(text: str, variables: dict) -> None:
    r = renderer()
    c = content(text)
    try:
        checked = r.check(c, ALL)
    except InvalidArgument:
        return  # caught even earlier, at publish: also fine
    with pytest.raises(InvalidArgument) as info:
        r.render(c, variables, checked.static_prefix_count)
    err = info.value
    assert err.reason in {"TEMPLATE_UNSAFE", "TEMPLATE_RENDER_FAILED", "VARIABLE_UNDEFINED"}
    for leak in ("<class", "<function", "<built-in", "globals", "module", "0x"):
        assert leak not in err.message, err.message


def test_the_format_escape_is_refused_as_unsafe() -> None:
    r = renderer()
    c = content("{{ '{0.__class__}'.format(name) }}")
    checked = r.check(c, ALL)
    with pytest.raises(InvalidArgument) as info:
        r.render(c, {"name": "x"}, checked.static_prefix_count)
    assert info.value.reason == "TEMPLATE_UNSAFE"
    assert "str" not in info.value.message.split("content")[0]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("Hello {{ name }", (1, 15)),
        ("Hi {{ name ", (1, 12)),
        ("line one\n{% if name %}open forever", (2, None)),
        ("ok\nok\n  {{ name + }}", (3, None)),
        ("{% for %}", (1, None)),
    ],
)
def test_a_template_that_does_not_parse_names_message_line_and_column(text: str, expect: tuple) -> None:
    with pytest.raises(InvalidArgument) as info:
        renderer().check(content("static first", text), ALL)
    field, why = info.value.violations[0]
    assert field == "content.messages[1].content"
    line, column = expect
    assert f"line {line}, column " in why
    col = int(why.split("column ")[1].split(":")[0])
    assert col >= 1
    if column is not None:
        assert col == column, why


@pytest.mark.parametrize("text", ["{% include 'x' %}", "{% import 'x' as y %}", "{% extends 'base' %}"])
def test_includes_and_imports_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="not allowed"):
        renderer().check(content(text), ALL)


def test_undeclared_variables_are_refused_at_publish_with_their_names() -> None:
    with pytest.raises(InvalidArgument) as info:
        renderer().check(content("{{ who }} and {{ name }} and {{ what }}"), frozenset({"name"}))
    assert "uses what, who, not declared" in info.value.violations[0][1]
    with pytest.raises(InvalidArgument):
        renderer().check(content("{{ name }}"), None)  # no schema: no variables at all


def test_the_cacheable_prefix_is_the_leading_static_messages() -> None:
    r = renderer()
    c = content("You are terse.", "{% for i in range(3) %}ex{{ i }} {% endfor %}", "{{ name }}", "static after")
    checked = r.check(c, ALL)
    assert checked.static_prefix_count == 2
    assert len(checked.warnings) == 1 and "messages[3]" in checked.warnings[0]
    rendered = r.render(c, {"name": "q"}, checked.static_prefix_count)
    assert rendered.cacheable_prefix_count == 2
    assert rendered.messages[1] == ("user", "ex0 ex1 ex2 ")
    assert rendered.token_count > 0


def test_limits_name_themselves() -> None:
    r = renderer(max_range=10, max_rendered_chars=100)
    cases = {
        "{% for i in range(11) %}{% endfor %}": "TOLLWAY_PROMPTS_MAX_RANGE",
        "{{ 'a' * 1000 }}": "TOLLWAY_PROMPTS_MAX_RENDERED_CHARS",
        "{{ 9 ** 999999 }}": "exponent",
        "{% for i in range(10) %}{{ name }}{% endfor %}": "TOLLWAY_PROMPTS_MAX_RENDERED_CHARS",
    }
    for text, limit in cases.items():
        c = content(text)
        with pytest.raises(InvalidArgument) as info:
            r.render(c, {"name": "x" * 20}, r.check(c, ALL).static_prefix_count)
        assert info.value.reason == "TEMPLATE_LIMIT", text
        assert limit in info.value.message, text


def test_compiled_templates_are_cached_and_bounded() -> None:
    r = renderer(cache_size=2)
    for i in range(3):
        c = content(f"v{i} {{{{ name }}}}")
        assert r.render(c, {"name": "n"}, 0).messages[0][1] == f"v{i} n"
        assert r.render(c, {"name": "m"}, 0).messages[0][1] == f"v{i} m"
    assert r.compiled_count == 2


def test_lipsum_is_not_available_because_output_must_be_deterministic() -> None:
    with pytest.raises(InvalidArgument, match="lipsum"):
        renderer().check(content("{{ lipsum() }}"), ALL)
