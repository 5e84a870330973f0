"""Prompt files, the content hash, and the service config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tollway.mesh.config import ConfigError, load_config
from tollway.prompts.config import PromptsConfig
from tollway.prompts.files import PromptFileError, load_prompt_dir
from tollway.prompts.prompts import content_hash
from tollway.prompts.render import Renderer
from tollway.prompts.types import Content, MessageTemplate, ModelDefaults
from tollway.prompts.variables import check_variables, declared_names, parse_schema

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
id: greet
description: Greets.
labels: [production]
parameters: {model: auto, tier: small, temperature: 0.2}
variables:
  type: object
  required: [name]
  properties: {name: {type: string}}
messages:
  - {role: system, content: Be kind.}
  - {role: user, content: "Hi {{ name }}"}
example: {name: Ada}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_the_shipped_examples_load_publish_and_render_their_examples() -> None:
    files = load_prompt_dir(ROOT / "deploy" / "prompts")
    assert {f.template_id for f in files} >= {"support-triage", "release-notes"}
    renderer = Renderer(cache_size=8, max_range=1000, max_rendered_chars=100_000, encoding="o200k_base")
    for f in files:
        schema = parse_schema(f.content.schema_json, 65536)
        checked = renderer.check(f.content, declared_names(schema))
        assert not checked.warnings, (f.template_id, checked.warnings)
        assert checked.static_prefix_count >= 1  # the examples put static parts first
        out = renderer.render(f.content, check_variables(schema, f.example, 65536), checked.static_prefix_count)
        assert out.token_count > 20
        assert "production" in f.labels


def test_a_file_becomes_content(tmp_path: Path) -> None:
    [f] = load_prompt_dir(write(tmp_path, "greet.yaml", GOOD))
    assert f.template_id == "greet" and f.labels == ("production",)
    assert f.content.messages[1] == MessageTemplate("user", "Hi {{ name }}")
    assert f.content.parameters.temperature == 0.2 and f.content.parameters.tier == "small"
    assert f.example == {"name": "Ada"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("description:", "descripton:"), "descripton: unknown key"),
        (GOOD.replace("role: system", "role: boss"), "messages[0].role: 'boss' is not a role"),
        (GOOD.replace("id: greet", "id: Greet!"), "id: 'Greet!' is not a template id"),
        (GOOD.replace("temperature: 0.2", "temperature: 3"), "parameters.temperature: 3"),
        (GOOD.replace("labels: [production]", "labels: [Prod]"), "labels[0]: 'Prod' is not a label"),
        ("id: x\n", "messages: required key is missing"),
    ],
)
def test_bad_files_name_the_file_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "p.yaml", text)
    with pytest.raises(PromptFileError, match=re.escape(message)) as info:
        load_prompt_dir(tmp_path)
    assert str(tmp_path / "p.yaml") in str(info.value)


def test_two_files_with_one_id_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yml", GOOD)
    with pytest.raises(PromptFileError, match="already used by"):
        load_prompt_dir(tmp_path)


def test_the_content_hash_covers_content_only() -> None:
    base = Content((MessageTemplate("user", "Hi {{ name }}"),), '{"type": "object", "properties": {"name": {}}}')
    same = Content((MessageTemplate("user", "Hi {{ name }}"),), '{"properties":{"name":{}},  "type":"object"}')
    assert content_hash(base) == content_hash(same)  # schema spacing and key order do not count
    changed = [
        dataclasses.replace(base, messages=(MessageTemplate("system", "Hi {{ name }}"),)),
        dataclasses.replace(base, messages=(MessageTemplate("user", "Hi {{ name }}!"),)),
        dataclasses.replace(base, schema_json='{"type": "object", "properties": {"name": {"type": "string"}}}'),
        dataclasses.replace(base, parameters=ModelDefaults(temperature=0.0)),
        dataclasses.replace(base, parameters=ModelDefaults(stop=("\n",))),
    ]
    hashes = {content_hash(c) for c in changed}
    assert content_hash(base) not in hashes and len(hashes) == len(changed)


def test_config_names_key_and_value() -> None:
    cfg = load_config(PromptsConfig, "prompts", env={"TOLLWAY_PROMPTS_PORT": "6000", "TOLLWAY_PROMPTS_SEED_DIR": ""})
    assert cfg.port == 6000 and cfg.seed_dir == ""
    with pytest.raises(ConfigError, match="TOLLWAY_PROMPTS_MAX_RANGE' has value 0"):
        load_config(PromptsConfig, "prompts", env={"TOLLWAY_PROMPTS_MAX_RANGE": "0"})
    with pytest.raises(ConfigError, match="TOLLWAY_PROMPTS_SEED_DIR' has value '/nonexistent'"):
        load_config(PromptsConfig, "prompts", env={"TOLLWAY_PROMPTS_SEED_DIR": "/nonexistent"})
    with pytest.raises(ConfigError, match="Unknown config TOLLWAY_PROMPTS_SEEDDIR"):
        load_config(PromptsConfig, "prompts", env={"TOLLWAY_PROMPTS_SEEDDIR": "x"})
