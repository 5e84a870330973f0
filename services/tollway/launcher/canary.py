"""Canaries as an operation: the rules and the record, with no process, file or Envoy in sight.

A canary runs a second version of one service beside the stable one (`tollway canary start`),
takes a share of its requests through Envoy, and ends by `promote` (the stable instances move to
its code) or `rollback` (it stops; the stable version never changed). The controller process
(`tollway.launcher.canary_controller`) samples both versions' Envoy clusters every half second
and asks `judge` whether the canary is worse; if so it rolls back by itself and records why.

The record (`CanaryRecord`) is the state file `<run_dir>/canary/<service>.json` that `tollway
canary status` prints; finished canaries are appended to `<run_dir>/canary/history.jsonl`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.launcher.canary_envoy import ClusterSample

VERSION_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class CanaryError(Exception):
    """A canary command cannot be carried out; the message says why and what to do."""


class Phase(enum.StrEnum):
    """Where a canary is in its life. The last three are final."""

    STARTING = "starting"
    RUNNING = "running"
    PROMOTING = "promoting"
    ROLLING_BACK = "rolling_back"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED)


@dataclasses.dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is bad enough to roll back by itself.

    Attributes:
        min_requests: The canary must have answered at least this many requests first: a rate
            over 3 requests says nothing.
        max_error_rate_increase: Roll back when the canary's error rate exceeds the stable
            version's by more than this (0.05: five percentage points), over the same window.
        max_latency_ratio: Roll back when the canary's mean request time exceeds the stable
            version's this many times (0: not judged on latency).
    """

    min_requests: int = 50
    max_error_rate_increase: float = 0.05
    max_latency_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise CanaryError(f"--min-requests has value {self.min_requests}; it must be 1 or more")
        if not 0 <= self.max_error_rate_increase <= 1:
            raise CanaryError(
                f"--max-error-rate-increase has value {self.max_error_rate_increase}; it must be 0..1 (0.05 = 5 points)"
            )
        if self.max_latency_ratio != 0 and self.max_latency_ratio < 1:
            raise CanaryError(
                f"--max-latency-ratio has value {self.max_latency_ratio}; it must be 0 (off) or 1 or more"
            )


def error_rate(sample: ClusterSample) -> float | None:
    """Failed requests over answered ones, or None before the first request."""
    return sample.errors / sample.requests if sample.requests > 0 else None


def mean_ms(sample: ClusterSample) -> float | None:
    return sample.time_sum_ms / sample.timed if sample.timed > 0 else None


def judge(stable: ClusterSample, canary: ClusterSample, policy: CanaryPolicy) -> str | None:
    """Why the canary should be rolled back, or None while it is not (yet) worse.

    Both samples cover the same window (since the canary started). The reason names the figures,
    so that the record says what was seen, not only that something was.
    """
    if canary.requests < policy.min_requests:
        return None
    canary_rate = error_rate(canary) or 0.0
    stable_rate = error_rate(stable) or 0.0
    if canary_rate - stable_rate > policy.max_error_rate_increase:
        return (
            f"error rate {canary_rate:.1%} over {canary.requests} requests against the stable version's "
            f"{stable_rate:.1%} over {stable.requests}: more than {policy.max_error_rate_increase:.1%} worse"
        )
    if policy.max_latency_ratio:
        c, s = mean_ms(canary), mean_ms(stable)
        if c is not None and s is not None and s > 0 and c > policy.max_latency_ratio * s:
            return (
                f"mean request time {c:.1f} ms over {canary.timed} requests against the stable version's "
                f"{s:.1f} ms: more than {policy.max_latency_ratio:g} times slower"
            )
    return None


@dataclasses.dataclass
class CanaryRecord:
    """One canary, as the state file holds it.

    Attributes:
        service: The service it is a version of.
        version: Its label (DNS-safe, not `stable`).
        source: Where its code comes from: `ref:<gitref>`, `dir:<path>`, or `checkout`.
        code_dir: The directory whose `services/` it runs from (None: this checkout).
        env: Environment it runs with on top of the stable instance's.
        weight_percent: Its share of requests now.
        policy: Its automatic rollback policy.
        phase: Where it is.
        reason: Why it ended (promoted, rolled back by whom and why, failed how).
        automatic: Whether the controller ended it by itself.
        port: Where it listens.
        controller_pid: The process that runs and watches it.
        canary_pid: The canary service's process.
        started_time: When it started (Unix seconds).
        finished_time: When it ended.
        baseline: Envoy counters at its start, per cluster (`stable`, `canary`).
        window: Counters since its start, per cluster (updated every sample).
    """

    service: str
    version: str
    source: str
    code_dir: str | None
    env: dict[str, str]
    weight_percent: int
    policy: CanaryPolicy
    phase: Phase = Phase.STARTING
    reason: str = ""
    automatic: bool = False
    port: int = 0
    controller_pid: int = 0
    canary_pid: int = 0
    started_time: float = 0.0
    finished_time: float = 0.0
    baseline: dict[str, ClusterSample] = dataclasses.field(default_factory=dict)
    window: dict[str, ClusterSample] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["phase"] = self.phase.value
        out["baseline"] = {k: v.to_json() for k, v in self.baseline.items()}
        out["window"] = {k: v.to_json() for k, v in self.window.items()}
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CanaryRecord:
        data = dict(raw)
        data["policy"] = CanaryPolicy(**data["policy"])
        data["phase"] = Phase(data["phase"])
        data["baseline"] = {k: ClusterSample.from_json(v) for k, v in data.get("baseline", {}).items()}
        data["window"] = {k: ClusterSample.from_json(v) for k, v in data.get("window", {}).items()}
        return cls(**data)


def canary_dir(run_dir: Path) -> Path:
    return run_dir / "canary"


def record_path(run_dir: Path, service: str) -> Path:
    return canary_dir(run_dir) / f"{service}.json"


def command_path(run_dir: Path, service: str) -> Path:
    return canary_dir(run_dir) / f"{service}.command"


def write_record(run_dir: Path, record: CanaryRecord) -> None:
    """Replaces the state file in one rename: a reader never sees half of it."""
    path = record_path(run_dir, record.service)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1) + "\n")
    tmp.replace(path)


def read_record(run_dir: Path, service: str) -> CanaryRecord | None:
    try:
        return CanaryRecord.from_json(json.loads(record_path(run_dir, service).read_text()))
    except FileNotFoundError:
        return None


def append_history(run_dir: Path, record: CanaryRecord) -> None:
    """One line per finished canary: what it was, how it ended and why."""
    path = canary_dir(run_dir) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {k: v for k, v in record.to_json().items() if k not in ("baseline",)}
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = canary_dir(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_status(record: CanaryRecord) -> str:
    """The canary and the stable version side by side, over the window since the canary started."""
    lines = [
        f"{record.service} canary {record.version} ({record.source}): {record.phase.value}, "
        f"weight {record.weight_percent}%, port {record.port}",
    ]
    if record.reason:
        lines.append(f"  reason: {record.reason}{' (automatic)' if record.automatic else ''}")
    policy = record.policy
    lines.append(
        f"  auto-rollback: error rate > stable + {policy.max_error_rate_increase:.1%} after {policy.min_requests} "
        "requests" + (f", or mean time > {policy.max_latency_ratio:g}x stable" if policy.max_latency_ratio else "")
    )
    lines.append(f"  {'':8} {'requests':>9} {'errors':>7} {'error %':>8} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for label in ("stable", "canary"):
        w = record.window.get(label, ClusterSample())
        rate = error_rate(w)
        mean = mean_ms(w)
        p50, p99 = w.quantile_ms(0.5), w.quantile_ms(0.99)
        lines.append(
            f"  {label:8} {w.requests:>9} {w.errors:>7} {_fmt(rate, '{:.1%}'):>8} {_fmt(mean, '{:.1f}'):>8} "
            f"{_fmt(p50, '<={:g}'):>7} {_fmt(p99, '<={:g}'):>7}"
        )
    return "\n".join(lines)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
