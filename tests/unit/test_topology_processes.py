"""mesh.yaml `processes`: co-location groups, read strictly, and which members run together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.mesh.topology import MeshError, ProcessGroup, load_mesh, parse_mesh, parse_replica_overrides

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "deploy" / "mesh.yaml"


@pytest.fixture()
def doc() -> dict[str, Any]:
    return yaml.safe_load(MESH_FILE.read_text())


def _svc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["services"] if s["name"] == name)


def test_committed_mesh_co_locates_the_request_path() -> None:
    mesh = load_mesh(MESH_FILE)
    assert mesh.processes == (ProcessGroup("core", ("gateway", "cache", "budget", "router", "openai_compat")),)
    assert mesh.colocated() == mesh.processes
    assert mesh.split().processes == () and mesh.split().colocated() == ()


def test_members_are_kept_in_services_order(doc: dict[str, Any]) -> None:
    doc["processes"] = {"core": ["router", "gateway"]}
    assert parse_mesh(doc, base_dir=MESH_FILE.parent).processes == (ProcessGroup("core", ("gateway", "router")),)


def test_a_member_with_replicas_or_a_canary_runs_apart(doc: dict[str, Any]) -> None:
    doc["processes"] = {"core": ["gateway", "router", "cache"]}
    _svc(doc, "gateway")["canary"] = {"port": 50061, "weight_percent": 10}
    _svc(doc, "cache")["replicas"] = 2
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    assert mesh.processes[0].services == ("gateway", "cache", "router")  # as written
    assert mesh.colocated() == ()  # router alone: no group left


def test_members_sharing_a_replica_count_run_as_that_many_processes(doc: dict[str, Any]) -> None:
    doc["processes"] = {"core": ["gateway", "router", "cache"]}
    for name in ("gateway", "router", "cache"):
        _svc(doc, name)["replicas"] = 2
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    (core,) = mesh.colocated()
    assert core == ProcessGroup("core", ("gateway", "cache", "router"), replicas=2)
    assert core.instance_names() == ("core-0", "core-1")
    # Instance 1 serves each member on its replica-1 port (port + 100).
    assert [mesh.service(m).endpoints[1].port for m in core.services] == [50151, 50152, 50155]


def test_a_member_with_another_replica_count_runs_apart(doc: dict[str, Any]) -> None:
    doc["processes"] = {"core": ["gateway", "router", "cache"]}
    _svc(doc, "gateway")["replicas"] = 3  # most members have 1: the group is theirs
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    assert mesh.colocated() == (ProcessGroup("core", ("cache", "router")),)
    assert mesh.colocated()[0].instance_names() == ("core",)


def test_only_started_members_run_together(doc: dict[str, Any]) -> None:
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    assert mesh.colocated({"gateway", "router", "embedding"}) == (ProcessGroup("core", ("gateway", "router")),)
    assert mesh.colocated({"gateway", "embedding"}) == ()


def test_a_disabled_member_runs_apart(doc: dict[str, Any]) -> None:
    _svc(doc, "openai_compat")["enabled"] = False
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent)
    assert "openai_compat" not in mesh.colocated()[0].services


def test_port_overrides_keep_the_groups(doc: dict[str, Any]) -> None:
    mesh = parse_mesh(doc, base_dir=MESH_FILE.parent).with_ports({"gateway": 40000})
    assert mesh.processes[0].name == "core"


@pytest.mark.parametrize(
    ("processes", "message"),
    [
        ({"Core": ["gateway", "router"]}, r"processes: 'Core' must be lowercase"),
        ({"router": ["gateway", "cache"]}, r"processes: 'router' is a service's name"),
        ({"core": ["gateway"]}, r"processes.core: \['gateway'\] must list at least two services"),
        ({"core": "gateway"}, r"processes.core: 'gateway' must list at least two"),
        ({"core": ["gateway", "nope"]}, r"processes.core\[1\]: 'nope' is not a service of this mesh"),
        ({"core": ["gateway", "router", "gateway"]}, r"processes.core\[2\]: 'gateway' already runs in process 'core'"),
        ({"a": ["gateway", "router"], "b": ["cache", "router"]}, r"processes.b\[1\]: 'router' already runs in process"),
        (["gateway", "router"], r"processes: \['gateway', 'router'\] is not a mapping"),
    ],
)
def test_bad_groups_name_the_key_and_the_value(doc: dict[str, Any], processes: Any, message: str) -> None:
    doc["processes"] = processes
    with pytest.raises(MeshError, match=message):
        parse_mesh(doc, base_dir=MESH_FILE.parent)


def test_replicas_given_by_group_set_every_member(tmp_path: Path) -> None:
    mesh = load_mesh(MESH_FILE, replicas={"core": 2})
    (core,) = mesh.colocated()
    assert core.replicas == 2 and core.instance_names() == ("core-0", "core-1")
    assert mesh.service("embedding").replicas == 1  # not a member
    assert load_mesh(MESH_FILE, replicas={"router": 3}).service("router").replicas == 3
    assert load_mesh(MESH_FILE).service("gateway").replicas == 1  # the file itself is unchanged


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        ({"nope": 2}, "'nope' is neither a service nor a process group (budget, cache, core"),
        ({"core": 0}, "must be a whole number of at least 1"),
    ],
)
def test_bad_replica_overrides_name_what_is_wrong(replicas: dict[str, int], message: str) -> None:
    with pytest.raises(MeshError, match=re.escape(message)):
        load_mesh(MESH_FILE, replicas=replicas)


@pytest.mark.parametrize(
    ("items", "message"),
    [(["core"], "expected NAME=N"), (["core=two"], "'two' is not a whole number"), (["core=0"], "at least 1")],
)
def test_replica_flags_are_read_strictly(items: list[str], message: str) -> None:
    assert parse_replica_overrides(["core=2", "router=3"]) == {"core": 2, "router": 3}
    with pytest.raises(MeshError, match=message):
        parse_replica_overrides(items)
