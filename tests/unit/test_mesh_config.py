from __future__ import annotations

import dataclasses

import pytest

from tollway.mesh.config import ConfigError, MeshConfig, load_config


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    port: int = 1
    ratio: float = 0.5
    enabled: bool = False
    name: str = "x"
    tags: tuple[str, ...] = ()
    limit: int | None = None


def test_defaults_without_environment() -> None:
    assert load_config(DemoConfig, "demo", env={}) == DemoConfig()


def test_values_are_parsed_by_type() -> None:
    env = {
        "TOLLWAY_DEMO_PORT": "9",
        "TOLLWAY_DEMO_RATIO": "0.25",
        "TOLLWAY_DEMO_ENABLED": "yes",
        "TOLLWAY_DEMO_TAGS": "a, b",
        "TOLLWAY_DEMO_LIMIT": "3",
    }
    assert load_config(DemoConfig, "demo", env=env) == DemoConfig(9, 0.25, True, "x", ("a", "b"), 3)


def test_a_bad_value_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"'TOLLWAY_DEMO_ENABLED' has value 'maybe'. Not a valid bool"):
        load_config(DemoConfig, "demo", env={"TOLLWAY_DEMO_ENABLED": "maybe"})
    with pytest.raises(ConfigError, match=r"'TOLLWAY_DEMO_PORT' has value 'eighty'"):
        load_config(DemoConfig, "demo", env={"TOLLWAY_DEMO_PORT": "eighty"})


def test_unknown_keys_are_rejected_with_the_known_ones_listed() -> None:
    with pytest.raises(ConfigError, match=r"Unknown config TOLLWAY_DEMO_PROT.*TOLLWAY_DEMO_PORT"):
        load_config(DemoConfig, "demo", env={"TOLLWAY_DEMO_PROT": "1"})


def test_overrides_win_and_mesh_config_reads_shared_keys() -> None:
    assert load_config(DemoConfig, "demo", env={"TOLLWAY_DEMO_PORT": "9"}, port=5).port == 5
    mesh = load_config(MeshConfig, env={"TOLLWAY_REDIS_URL": "redis://h:1/0", "TOLLWAY_GATEWAY_PORT": "1"})
    assert mesh.redis_url == "redis://h:1/0"


def test_a_collector_threshold_below_100_is_refused_with_its_variable_named() -> None:
    assert load_config(MeshConfig, env={}).gc_young_threshold == 10_000
    assert load_config(MeshConfig, env={"TOLLWAY_GC_YOUNG_THRESHOLD": "2000"}).gc_young_threshold == 2000
    with pytest.raises(ConfigError, match=r"TOLLWAY_GC_YOUNG_THRESHOLD.*'?50'?.*at least 100"):
        load_config(MeshConfig, env={"TOLLWAY_GC_YOUNG_THRESHOLD": "50"})
