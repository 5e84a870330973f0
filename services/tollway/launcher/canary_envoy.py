"""What a running Envoy learns about canaries from files, and what its admin port tells about them.

Writes (the config that reads them: `tollway.edge.envoy_config.DynamicCanaries`):
- `<run_dir>/envoy/eds/<service>_canary.yaml`: the canary's endpoints (EDS from the filesystem);
- `<run_dir>/envoy/runtime/current`: a symlink to a directory of runtime values, one file per key.

Both are replaced in one rename, which is what Envoy watches for: it never reads half a file, and
a weight change reaches the next request without a restart or a closed connection.

Reads (admin port, loopback): per cluster, requests completed and failed (a gRPC status that maps
to HTTP 5xx counts as failed, as Envoy's own host stats count it) and the request-time histogram.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

import yaml

from tollway.edge.envoy_config import DynamicCanaries, canary_runtime_keys, dynamic_canary_cluster
from tollway.mesh.topology import Endpoint

_EDS_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def dynamic_canaries(run_dir: Path, services: frozenset[str]) -> DynamicCanaries:
    """Where a stack in ``run_dir`` keeps the dynamic canary files."""
    base = run_dir / "envoy"
    return DynamicCanaries(services=services, eds_dir=base / "eds", runtime_root=base / "runtime" / "current")


def prepare(dynamic: DynamicCanaries) -> None:
    """Writes the files Envoy needs at start: no canary endpoints, every weight 0. Safe to repeat."""
    dynamic.eds_dir.mkdir(parents=True, exist_ok=True)
    for service in dynamic.services:
        write_endpoints(dynamic, service, ())
    write_runtime(dynamic, {})


def write_endpoints(dynamic: DynamicCanaries, service: str, endpoints: tuple[Endpoint, ...]) -> None:
    """Replaces the endpoints of ``service``'s canary cluster (empty: no canary)."""
    cluster = dynamic_canary_cluster(service)
    assignment = {
        "@type": _EDS_TYPE,
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}
            for e in endpoints
        ]}] if endpoints else [],
    }
    doc = {"version_info": uuid.uuid4().hex[:12], "resources": [assignment]}
    path = dynamic.eds_dir / f"{cluster}.yaml"
    tmp = dynamic.eds_dir / f".{cluster}.{os.getpid()}.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


def read_runtime(dynamic: DynamicCanaries) -> dict[str, str]:
    """The runtime values the current directory holds (key -> text)."""
    root = dynamic.runtime_root / "envoy"
    out: dict[str, str] = {}
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file():
                out[".".join(path.relative_to(root).parts)] = path.read_text().strip()
    return out


def write_runtime(dynamic: DynamicCanaries, values: Mapping[str, str]) -> None:
    """Replaces the whole runtime with ``values``: a fresh directory, then one rename of the symlink.

    Runtime keys map to paths (`tollway.canary.router.forced` -> `envoy/tollway/canary/router/forced`).
    Older directories are removed afterwards; Envoy has already read the new one or reads it now.
    """
    base = dynamic.runtime_root.parent
    base.mkdir(parents=True, exist_ok=True)
    fresh = base / f"v-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    for key, value in values.items():
        path = fresh / "envoy" / Path(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(value))
    (fresh / "envoy").mkdir(parents=True, exist_ok=True)
    link = base / f".current.{os.getpid()}.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(fresh.name)
    link.replace(dynamic.runtime_root)
    for old in base.glob("v-*"):
        if old.name != fresh.name:
            shutil.rmtree(old, ignore_errors=True)


def set_canary(dynamic: DynamicCanaries, service: str, weight_percent: int, forced: bool) -> None:
    """Sets one service's canary share and its `x-canary: 1` override, keeping the other services'."""
    if not 0 <= weight_percent <= 100:
        raise ValueError(f"weight_percent has value {weight_percent!r}; it must be 0..100")
    weight_key, forced_key = canary_runtime_keys(service)
    values = read_runtime(dynamic)
    values[weight_key] = str(weight_percent)
    values[forced_key] = "100" if forced else "0"
    write_runtime(dynamic, values)


# -- reading Envoy ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterSample:
    """Cumulative counters of one Envoy cluster at one moment; subtract two for a window.

    Attributes:
        requests: Requests that got an answer (or failed) at an upstream host.
        errors: Of those, the ones that failed: no answer, HTTP 5xx, or a gRPC status Envoy maps to
            5xx (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, ...). Client errors such as
            INVALID_ARGUMENT are not the version's fault and do not count.
        active: Requests in flight now (not cumulative).
        buckets: The request-time histogram: upper bound in ms -> requests at or below it.
        time_sum_ms: Total request time, for the mean.
    """

    requests: int = 0
    errors: int = 0
    active: int = 0
    buckets: tuple[tuple[float, int], ...] = ()
    time_sum_ms: float = 0.0

    def minus(self, earlier: ClusterSample) -> ClusterSample:
        """The window between ``earlier`` and this sample (``active`` stays this sample's)."""
        before = dict(earlier.buckets)
        return ClusterSample(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            active=self.active,
            buckets=tuple((le, n - before.get(le, 0)) for le, n in self.buckets),
            time_sum_ms=self.time_sum_ms - earlier.time_sum_ms,
        )

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (None without requests timed)."""
        if not self.buckets:
            return None
        total = self.buckets[-1][1]
        if total <= 0:
            return None
        for le, n in self.buckets:
            if n >= q * total:
                return le
        return None

    @property
    def timed(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> ClusterSample:
        buckets = tuple((float(le), int(n)) for le, n in raw.get("buckets", ()))  # type: ignore[union-attr]
        return cls(
            requests=int(raw.get("requests", 0)),  # type: ignore[call-overload]
            errors=int(raw.get("errors", 0)),  # type: ignore[call-overload]
            active=int(raw.get("active", 0)),  # type: ignore[call-overload]
            buckets=buckets,
            time_sum_ms=float(raw.get("time_sum_ms", 0.0)),  # type: ignore[arg-type]
        )


def _get(url: str, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


_BUCKET = re.compile(
    r'^envoy_cluster_upstream_rq_time_bucket\{envoy_cluster_name="(?P<c>[^"]+)",le="(?P<le>[^"]+)"\} (?P<n>\S+)$'
)
_SUM = re.compile(r'^envoy_cluster_upstream_rq_time_sum\{envoy_cluster_name="(?P<c>[^"]+)"\} (?P<v>\S+)$')


def sample_clusters(admin: str, clusters: tuple[str, ...]) -> dict[str, ClusterSample]:
    """Reads the counters of ``clusters`` from Envoy's admin at ``admin`` (host:port).

    Requests and errors are summed over the cluster's hosts (`/clusters?format=json`, host stats
    `rq_total`, `rq_error`, `rq_active`), so they are exact at once; the histogram comes from
    `/stats/prometheus` and lags by up to the stats flush interval (1 s).
    """
    wanted = set(clusters)
    out = {c: ClusterSample() for c in clusters}
    counts: dict[str, dict[str, int]] = {c: {"rq_total": 0, "rq_error": 0, "rq_active": 0} for c in clusters}
    status = json.loads(_get(f"http://{admin}/clusters?format=json"))
    for cluster in status.get("cluster_statuses", []):
        name = cluster.get("name")
        if name not in wanted:
            continue
        for host in cluster.get("host_statuses", []):
            for stat in host.get("stats", []):
                if stat.get("name") in counts[name]:
                    counts[name][stat["name"]] += int(stat.get("value", 0))
    buckets: dict[str, list[tuple[float, int]]] = {c: [] for c in clusters}
    sums: dict[str, float] = {}
    for line in _get(f"http://{admin}/stats/prometheus?filter=upstream_rq_time").splitlines():
        if m := _BUCKET.match(line):
            if m["c"] in wanted and m["le"] != "+Inf":
                buckets[m["c"]].append((float(m["le"]), int(float(m["n"]))))
        elif (m := _SUM.match(line)) and m["c"] in wanted:
            sums[m["c"]] = float(m["v"])
    for c in clusters:
        out[c] = ClusterSample(
            requests=counts[c]["rq_total"] - counts[c]["rq_active"],
            errors=counts[c]["rq_error"],
            active=counts[c]["rq_active"],
            buckets=tuple(sorted(buckets[c])),
            time_sum_ms=sums.get(c, 0.0),
        )
    return out
