"""The canary's rules and records (tollway.launcher.canary), the files Envoy reads
(tollway.launcher.canary_envoy), and what `--canary-ready` changes in the launcher's plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tollway.edge.envoy_config import build_envoy_config, canary_runtime_keys
from tollway.launcher import canary_envoy
from tollway.launcher.canary import (
    CanaryError,
    CanaryPolicy,
    CanaryRecord,
    Phase,
    append_history,
    format_status,
    judge,
    read_history,
    read_record,
    write_record,
)
from tollway.launcher.canary_envoy import ClusterSample
from tollway.launcher.processes import LaunchError
from tollway.launcher.stack import Stack, StackOptions
from tollway.mesh.topology import Endpoint

POLICY = CanaryPolicy(min_requests=50, max_error_rate_increase=0.05)


def sample(requests: int, errors: int = 0, mean_ms: float = 10.0) -> ClusterSample:
    return ClusterSample(
        requests=requests, errors=errors, buckets=((5.0, 0), (10.0, requests), (20.0, requests)),
        time_sum_ms=mean_ms * requests,
    )


def test_no_verdict_before_the_minimum_number_of_requests() -> None:
    assert judge(sample(1000), sample(49, errors=49), POLICY) is None


def test_a_canary_worse_by_more_than_the_threshold_is_rolled_back_with_the_figures() -> None:
    reason = judge(sample(1000, errors=10), sample(100, errors=7), POLICY)
    assert reason is not None
    assert "7.0% over 100 requests" in reason and "1.0% over 1000" in reason and "5.0% worse" in reason


def test_a_canary_within_the_threshold_or_no_worse_carries_on() -> None:
    assert judge(sample(1000, errors=10), sample(100, errors=6), POLICY) is None  # +5.0 points: not more
    assert judge(sample(1000, errors=300), sample(100, errors=30), POLICY) is None  # both bad: not the canary's fault


def test_latency_is_judged_only_when_asked() -> None:
    slow = sample(100, mean_ms=50.0)
    assert judge(sample(1000, mean_ms=10.0), slow, POLICY) is None
    reason = judge(sample(1000, mean_ms=10.0), slow, CanaryPolicy(50, 0.05, max_latency_ratio=2.0))
    assert reason is not None and "50.0 ms" in reason and "2 times slower" in reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_requests": 0}, "--min-requests has value 0"),
        ({"max_error_rate_increase": 1.5}, "--max-error-rate-increase has value 1.5"),
        ({"max_latency_ratio": 0.5}, "--max-latency-ratio has value 0.5"),
    ],
)
def test_a_bad_policy_names_the_flag_and_the_value(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(CanaryError, match=message):
        CanaryPolicy(**kwargs)  # type: ignore[arg-type]


def test_samples_subtract_into_a_window_and_give_quantiles() -> None:
    before = ClusterSample(requests=10, errors=1, buckets=((5.0, 4), (10.0, 10)), time_sum_ms=60.0)
    after = ClusterSample(requests=110, errors=3, active=2, buckets=((5.0, 54), (10.0, 110)), time_sum_ms=660.0)
    window = after.minus(before)
    assert (window.requests, window.errors, window.active) == (100, 2, 2)
    assert window.buckets == ((5.0, 50), (10.0, 100))
    assert window.quantile_ms(0.5) == 5.0 and window.quantile_ms(0.99) == 10.0
    assert ClusterSample().quantile_ms(0.5) is None


def test_the_record_round_trips_and_the_history_keeps_every_ending(tmp_path: Path) -> None:
    record = CanaryRecord(
        service="router", version="v2", source="ref:main", code_dir="/x", env={"A": "1"}, weight_percent=10,
        policy=POLICY, window={"stable": sample(100), "canary": sample(10, errors=1)},
    )
    write_record(tmp_path, record)
    assert read_record(tmp_path, "router") == record
    assert read_record(tmp_path, "cache") is None
    record.phase, record.reason, record.automatic = Phase.ROLLED_BACK, "error rate ...", True
    append_history(tmp_path, record)
    [entry] = read_history(tmp_path)
    assert (entry["version"], entry["phase"], entry["automatic"]) == ("v2", "rolled_back", True)
    text = format_status(record)
    assert "reason: error rate ... (automatic)" in text
    assert [line.split()[0] for line in text.splitlines()[-2:]] == ["stable", "canary"]


def test_runtime_and_endpoint_files_are_replaced_whole(tmp_path: Path) -> None:
    dynamic = canary_envoy.dynamic_canaries(tmp_path, frozenset({"router", "cache"}))
    canary_envoy.prepare(dynamic)
    assert canary_envoy.read_runtime(dynamic) == {}
    canary_envoy.set_canary(dynamic, "router", 10, forced=True)
    canary_envoy.set_canary(dynamic, "cache", 30, forced=False)
    weight, forced = canary_runtime_keys("router")
    values = canary_envoy.read_runtime(dynamic)
    assert values[weight] == "10" and values[forced] == "100" and values[canary_runtime_keys("cache")[1]] == "0"
    assert dynamic.runtime_root.is_symlink()
    assert len(list(dynamic.runtime_root.parent.glob("v-*"))) == 1  # older directories removed
    canary_envoy.write_endpoints(dynamic, "router", (Endpoint("127.0.0.1", 40001),))
    doc = yaml.safe_load((dynamic.eds_dir / "router_canary.yaml").read_text())
    [assignment] = doc["resources"]
    address = assignment["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (assignment["cluster_name"], address["port_value"]) == ("router_canary", 40001)
    assert list(dynamic.eds_dir.glob(".*.tmp")) == []
    with pytest.raises(ValueError, match="weight_percent has value 101"):
        canary_envoy.set_canary(dynamic, "router", 101, forced=True)


def test_canary_ready_services_run_alone_are_called_through_envoy_and_get_runtime_routes(tmp_path: Path) -> None:
    stack = Stack(StackOptions(run_dir=tmp_path, layout="colocated", canary_ready=("router",), with_model=False))
    assert all("router" not in g.services for g in stack.groups())
    assert any("gateway" in g.services for g in stack.groups())  # the rest stay co-located
    env = stack.service_env(stack.mesh.service("gateway"), stack.mesh.service("gateway").port)
    assert env["TOLLWAY_GATEWAY_ROUTER_ADDR"] == stack.mesh.edge.mesh_listen.address
    dynamic = canary_envoy.dynamic_canaries(tmp_path, frozenset({"router"}))
    config = build_envoy_config(stack.mesh, dynamic)
    assert config["layered_runtime"]["layers"][0]["disk_layer"]["symlink_root"] == str(dynamic.runtime_root)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["router_canary"]["type"] == "EDS" and "cache_canary" not in clusters
    mesh_routes = next(x for x in config["static_resources"]["listeners"] if x["name"] == "mesh")
    routes = mesh_routes["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    router_routes = [r for r in routes["routes"] if r["name"].startswith("router:")]
    assert [r["name"] for r in router_routes] == [
        "router:/tollway.router.v1.RouterService/:canary-forced",
        "router:/tollway.router.v1.RouterService/:canary",
        "router:/tollway.router.v1.RouterService/",
    ]
    # A request the split sent to the canary goes on with x-canary: 1, so its path stays on canaries.
    [mark] = router_routes[1]["request_headers_to_add"]
    assert mark["header"] == {"key": "x-canary", "value": "1"}
    assert "request_headers_to_add" not in router_routes[2]


def test_canary_ready_must_name_an_enabled_service(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="canary_ready names 'nosuch', which is not an enabled service"):
        Stack(StackOptions(run_dir=tmp_path, canary_ready=("nosuch",)))
