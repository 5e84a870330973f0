"""The Prometheus scrape config generated from deploy/mesh.yaml, and mesh.yaml's `observability`."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.edge.prometheus import (
    RULES_DIR,
    build_prometheus_config,
    render_prometheus_yaml,
    scrape_targets,
    write_prometheus_dir,
)
from tollway.mesh.topology import Endpoint, MeshError, load_mesh, parse_mesh

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "deploy" / "mesh.yaml"


@pytest.fixture()
def doc() -> dict[str, Any]:
    return yaml.safe_load(MESH_FILE.read_text())


def _svc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["services"] if s["name"] == name)


def test_colocated_layout_scrapes_each_group_once_on_its_first_grpc_member() -> None:
    mesh = load_mesh(MESH_FILE)
    targets = {t.process: t for t in scrape_targets(mesh, "colocated")}
    core_members = {"gateway", "router", "cache", "budget", "openai_compat"}
    assert set(targets) == {"core"} | {s.name for s in mesh.enabled_services} - core_members
    core = targets["core"]
    assert set(core.services) == {"gateway", "router", "cache", "budget", "openai_compat"}
    assert core.metrics_owner == "gateway"
    assert core.metrics == Endpoint("127.0.0.1", 51051)
    assert targets["embedding"].metrics == Endpoint("127.0.0.1", 51056)


def test_split_layout_scrapes_every_service() -> None:
    mesh = load_mesh(MESH_FILE)
    targets = {t.process: t.metrics.port for t in scrape_targets(mesh, "split")}
    assert targets == {s.name: s.port + 1000 for s in mesh.enabled_services}
    assert {p: targets[p] for p in ("gateway", "embedding", "openai_compat")} == {
        "gateway": 51051, "embedding": 51056, "openai_compat": 9090,
    }


def test_each_instance_of_a_replicated_group_is_scraped(doc: dict[str, Any]) -> None:
    for name in ("gateway", "router", "cache", "budget", "openai_compat"):
        _svc(doc, name)["replicas"] = 2
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    targets = {t.process: t for t in scrape_targets(mesh, "colocated")}
    assert "core" not in targets
    assert (targets["core-0"].metrics.port, targets["core-1"].metrics.port) == (51051, 51151)
    assert targets["core-1"].metrics_owner == "gateway" and len(targets["core-1"].services) == 5


def test_replicas_and_canaries_are_scraped_one_by_one_and_leave_their_group(doc: dict[str, Any]) -> None:
    _svc(doc, "cache")["replicas"] = 3
    _svc(doc, "router")["canary"] = {"version": "v2", "port": 50065, "weight_percent": 10}
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    targets = {t.process: t for t in scrape_targets(mesh, "colocated")}
    assert {p: targets[p].metrics.port for p in ("cache-0", "cache-1", "cache-2")} == {
        "cache-0": 51052, "cache-1": 51152, "cache-2": 51252,
    }
    assert targets["router"].metrics.port == 51055
    assert targets["router-canary"].metrics.port == 51065
    assert "cache" not in targets["core"].services and "router" not in targets["core"].services


def test_only_the_services_that_run_are_scraped() -> None:
    mesh = load_mesh(MESH_FILE)
    running = ("gateway", "router", "cache", "embedding")
    colocated = {t.process: t.services for t in scrape_targets(mesh, "colocated", running)}
    assert colocated == {"core": ("gateway", "cache", "router"), "embedding": ("embedding",)}
    split = [t.process for t in scrape_targets(mesh, "split", running)]
    assert split == ["gateway", "cache", "router", "embedding"]


def test_ports_moved_by_overrides_move_the_metrics_ports() -> None:
    mesh = load_mesh(MESH_FILE, ports={"gateway": 41000, "prometheus": 41999})
    config = build_prometheus_config(mesh, "split")
    tollway = next(j for j in config["scrape_configs"] if j["job_name"] == "tollway")
    assert {"targets": ["127.0.0.1:42000"], "labels": {"process": "gateway", "services": "gateway",
                                                         "layout": "split"}} in tollway["static_configs"]
    own = next(j for j in config["scrape_configs"] if j["job_name"] == "prometheus")
    assert own["static_configs"][0]["targets"] == ["127.0.0.1:41999"]


def test_envoy_admin_stats_are_scraped_only_with_envoy() -> None:
    mesh = load_mesh(MESH_FILE)
    jobs = {j["job_name"]: j for j in build_prometheus_config(mesh, "colocated")["scrape_configs"]}
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["envoy"]["static_configs"][0]["targets"] == ["127.0.0.1:9901"]
    jobs = {j["job_name"] for j in build_prometheus_config(mesh, "colocated", with_envoy=False)["scrape_configs"]}
    assert "envoy" not in jobs


@pytest.mark.parametrize(("layout", "name"), [("colocated", "prometheus.yml"), ("split", "prometheus-split.yml")])
def test_committed_scrape_configs_are_up_to_date(layout: str, name: str) -> None:
    mesh = load_mesh(MESH_FILE)
    expected = render_prometheus_yaml(build_prometheus_config(mesh, layout), source="deploy/mesh.yaml")  # type: ignore[arg-type]
    assert (RULES_DIR / name).read_text() == expected, (
        f"deploy/prometheus/{name} is stale: python -m tollway.edge --mesh deploy/mesh.yaml "
        f"--prometheus-out deploy/prometheus --layout {layout}"
    )


def test_a_written_config_passes_promtool_with_its_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: ./scripts/install_system.sh (Debian package prometheus)"
    path = write_prometheus_dir(build_prometheus_config(load_mesh(MESH_FILE), "split"), tmp_path, "test")
    assert (tmp_path / "alerts.yml").read_bytes() == (RULES_DIR / "alerts.yml").read_bytes()
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout + result.stderr


def test_the_committed_mesh_observability() -> None:
    obs = load_mesh(MESH_FILE).observability
    assert obs.prometheus == Endpoint("127.0.0.1", 9095)
    assert obs.metrics_port_offset == 1000 and obs.scrape_interval_s == 5


def test_prometheus_must_listen_on_loopback(doc: dict[str, Any]) -> None:
    bad = copy.deepcopy(doc)
    bad["observability"]["prometheus"] = "0.0.0.0:9095"
    with pytest.raises(MeshError, match=r"observability\.prometheus.*'0\.0\.0\.0:9095'.*loopback"):
        parse_mesh(bad, base_dir=MESH_FILE.parent)


def test_unknown_observability_keys_and_bad_intervals_are_named(doc: dict[str, Any]) -> None:
    bad = copy.deepcopy(doc)
    bad["observability"]["scrape_every"] = 5
    with pytest.raises(MeshError, match="scrape_every"):
        parse_mesh(bad, base_dir=MESH_FILE.parent)
    bad = copy.deepcopy(doc)
    bad["observability"]["scrape_interval_s"] = 0
    with pytest.raises(MeshError, match=r"observability\.scrape_interval_s"):
        parse_mesh(bad, base_dir=MESH_FILE.parent)


def test_prometheus_port_collisions_are_refused() -> None:
    with pytest.raises(MeshError, match="9095"):
        load_mesh(MESH_FILE, ports={"gateway": 9095})
