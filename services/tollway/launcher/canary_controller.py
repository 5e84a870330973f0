"""The process that runs one canary: starts it, weights it in Envoy, watches it, ends it.

    python -m tollway.launcher.canary_controller RUN_DIR SERVICE

`tollway canary start` writes the record (`tollway.launcher.canary.CanaryRecord`, phase
`starting`) and starts this process detached; it then owns the canary's process. Every half second
it samples both versions' Envoy clusters into the record, carries out a command the CLI left
(`weight`, `promote`, `rollback`), and rolls back by itself when `judge` says the canary is worse,
when the canary's process exits, or when the `tollway up` it belongs to is gone.

Every end drains before it stops anything: the canary's share goes to 0 first, and its process is
stopped only once Envoy has no request in flight to it. Promotion sends every request to the
canary, restarts the stable instances on the canary's code (the supervisor of `tollway up` starts
them again, with `runfile.release_env`), and only when they serve again moves the traffic back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tollway.edge.envoy_config import DynamicCanaries, dynamic_canary_cluster
from tollway.launcher import canary_envoy, runfile
from tollway.launcher.canary import (
    Phase,
    append_history,
    command_path,
    judge,
    read_record,
    write_record,
)
from tollway.launcher.canary_envoy import ClusterSample, sample_clusters
from tollway.launcher.processes import Child, LaunchError, free_port, spawn, tail, wait_until
from tollway.launcher.stack import ROOT, Stack
from tollway.mesh.topology import Endpoint, Service

log = logging.getLogger("tollway.launcher.canary")

_TICK_S = 0.5
_DRAIN_TIMEOUT_S = 30.0


def _serving(address: str, service: Service) -> bool:
    if service.protocol != "grpc":
        import urllib.request

        with urllib.request.urlopen(f"http://{address}{service.health_path or '/healthz'}", timeout=1) as r:
            return 200 <= r.status < 300
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Controller:
    """Runs the canary of one service for the `tollway up` whose run dir is given."""

    def __init__(self, run_dir: Path, service: str) -> None:
        self.run_dir = run_dir
        record = read_record(run_dir, service)
        if record is None:
            raise LaunchError(f"no canary record for {service} in {run_dir}; start it with `tollway canary start`")
        self.record = record
        description = runfile.read_stack(run_dir)
        if description is None:
            raise LaunchError(f"{run_dir} has no stack.json: no `tollway up` runs there")
        self.stack = Stack.described(description)
        self.service = self.stack.mesh.service(service)
        self.dynamic: DynamicCanaries = canary_envoy.dynamic_canaries(
            run_dir, frozenset(self.stack.options.canary_ready)
        )
        self.admin = self.stack.mesh.edge.admin.address
        self.clusters = (self.service.name, dynamic_canary_cluster(self.service.name))
        self.child: Child | None = None

    # -- life ---------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
        except Exception as exc:  # any failure to start ends the canary, recorded
            self._finish(Phase.FAILED, f"did not start: {exc}", automatic=True)
            return 1
        while True:
            reason = self._tick()
            if self.record.phase.final:
                return 0
            if reason is not None:
                self._rollback(reason, automatic=True)
                return 0
            time.sleep(_TICK_S)

    def _start(self) -> None:
        r = self.record
        port = free_port()
        host = self.service.endpoints[0].host
        env = self.stack.service_env(self.service, port)
        env.update(r.env)
        if r.code_dir:
            self._prepare_code(Path(r.code_dir), r.source)
            env["PYTHONPATH"] = str(Path(r.code_dir) / "services")
        address = Endpoint(host, port).address
        self.child = spawn(
            f"{self.service.name}-canary-{r.version}",
            [sys.executable, "-m", f"tollway.{self.service.name}"],
            self.stack.log_dir,
            env,
            cwd=Path(r.code_dir) if r.code_dir else ROOT,
        )
        r.port, r.canary_pid, r.controller_pid = port, self.child.process.pid, os.getpid()
        write_record(self.run_dir, r)
        wait_until(
            self.child, lambda: _serving(address, self.service), self.stack.options.startup_timeout_s,
            f"serving on {address}",
        )
        canary_envoy.write_endpoints(self.dynamic, self.service.name, (Endpoint(host, port),))
        self._wait_for_host(port)
        r.baseline = sample_clusters(self.admin, self.clusters)
        r.baseline = {"stable": r.baseline[self.clusters[0]], "canary": r.baseline[self.clusters[1]]}
        canary_envoy.set_canary(self.dynamic, self.service.name, r.weight_percent, forced=True)
        r.phase, r.started_time = Phase.RUNNING, time.time()
        write_record(self.run_dir, r)
        log.info("%s canary %s serving on %s at %d%%", self.service.name, r.version, address, r.weight_percent)

    def _prepare_code(self, code_dir: Path, source: str) -> None:
        """A git ref becomes a worktree with its protos generated (generated code is not committed)."""
        if source.startswith("ref:") and not (code_dir / "services").exists():
            ref = source.removeprefix("ref:")
            code_dir.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(code_dir), ref],
                cwd=ROOT, check=True, capture_output=True, text=True,
            )
            subprocess.run(
                ["bash", str(code_dir / "scripts" / "gen_protos.sh")],
                cwd=code_dir, env={**os.environ, "PY": sys.executable}, check=True, capture_output=True, text=True,
            )
        if not (code_dir / "services" / "tollway" / self.service.name / "__main__.py").exists():
            raise LaunchError(f"{code_dir} has no services/tollway/{self.service.name}/__main__.py")

    def _wait_for_host(self, port: int, timeout_s: float = 10.0) -> None:
        """Until Envoy has read the new endpoint file (it reloads on the rename, asynchronously)."""
        deadline = time.monotonic() + timeout_s
        cluster = self.clusters[1]
        while time.monotonic() < deadline:
            status = json.loads(canary_envoy._get(f"http://{self.admin}/clusters?format=json"))
            for c in status.get("cluster_statuses", []):
                if c.get("name") == cluster and any(
                    h.get("address", {}).get("socket_address", {}).get("port_value") == port
                    for h in c.get("host_statuses", [])
                ):
                    return
            time.sleep(0.05)
        raise LaunchError(f"Envoy did not pick up the canary endpoint (port {port}) within {timeout_s:.0f}s")

    # -- each tick ----------------------------------------------------------------------------

    def _tick(self) -> str | None:
        """Samples, obeys a command, and says why to roll back (None: carry on)."""
        r = self.record
        if runfile.live_launcher(self.run_dir) is None or (runfile.read_status(self.run_dir) or {}).get("stopped"):
            # Gone, or stopped by a process that goes on (a stack run inside a test or a bench).
            return "the tollway up it belongs to stopped"
        if self.child is not None and not self.child.alive():
            return f"the canary's process exited with code {self.child.process.returncode}: {tail(self.child.log, 3)}"
        try:
            self._sample()
        except OSError as exc:  # Envoy restarting (its supervisor brings it back): judge on the next tick
            log.warning("cannot read Envoy's counters (%s); trying again", exc)
            return None
        command = self._take_command()
        if command is not None:
            kind = command.get("command")
            if kind == "weight":
                r.weight_percent = int(command["weight_percent"])
                canary_envoy.set_canary(self.dynamic, self.service.name, r.weight_percent, forced=True)
                write_record(self.run_dir, r)
            elif kind == "rollback":
                self._rollback(str(command.get("reason") or "rolled back by the operator"), automatic=False)
                return None
            elif kind == "promote":
                self._promote()
                return None
        return judge(r.window.get("stable", ClusterSample()), r.window.get("canary", ClusterSample()), r.policy)

    def _sample(self) -> dict[str, ClusterSample]:
        now = sample_clusters(self.admin, self.clusters)
        r = self.record
        stable, canary = now[self.clusters[0]], now[self.clusters[1]]
        r.window = {
            "stable": stable.minus(r.baseline.get("stable", ClusterSample())),
            "canary": canary.minus(r.baseline.get("canary", ClusterSample())),
        }
        write_record(self.run_dir, r)
        return {"stable": stable, "canary": canary}

    def _take_command(self) -> dict[str, object] | None:
        path = command_path(self.run_dir, self.service.name)
        try:
            command = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        path.unlink(missing_ok=True)
        return command if isinstance(command, dict) else None

    # -- endings ------------------------------------------------------------------------------

    def _drain(self, which: str) -> None:
        """Waits until Envoy has no request in flight to ``which`` (`stable` or `canary`), seen twice."""
        cluster = self.clusters[0] if which == "stable" else self.clusters[1]
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            try:
                active = sample_clusters(self.admin, (cluster,))[cluster].active
            except OSError:
                return  # Envoy is gone (the stack is stopping): nothing is in flight through it
            quiet = quiet + 1 if active == 0 else 0
            time.sleep(0.1)

    def _rollback(self, reason: str, automatic: bool) -> None:
        r = self.record
        r.phase = Phase.ROLLING_BACK
        write_record(self.run_dir, r)
        canary_envoy.set_canary(self.dynamic, self.service.name, 0, forced=False)
        self._drain("canary")
        self._stop_canary()
        self._remove_worktree()
        self._finish(Phase.ROLLED_BACK, reason, automatic)

    def _promote(self) -> None:
        r = self.record
        r.phase = Phase.PROMOTING
        write_record(self.run_dir, r)
        canary_envoy.set_canary(self.dynamic, self.service.name, 100, forced=True)
        self._drain("stable")
        runfile.write_release(self.run_dir, self.service.name, r.code_dir, r.env, r.version)
        restarted = self._restart_stable()
        canary_envoy.set_canary(self.dynamic, self.service.name, 0, forced=False)
        self._drain("canary")
        self._stop_canary()
        self._finish(Phase.PROMOTED, f"promoted: {restarted} stable instance(s) restarted on {r.version}'s code", False)

    def _restart_stable(self) -> int:
        """Stops each stable instance in turn; `tollway up`'s supervisor starts it again on the release."""
        status = runfile.read_status(self.run_dir) or {}
        names = {self.service.name, *(f"{self.service.name}-{i}" for i in range(self.service.replicas))}
        children = [c for c in status.get("children", []) if c.get("name") in names]
        if not children:
            raise LaunchError(f"tollway up runs no process named {self.service.name}; cannot promote")
        for child, endpoint in zip(sorted(children, key=lambda c: c["name"]), self.service.endpoints, strict=False):
            old = int(child["pid"])
            os.kill(old, signal.SIGTERM)
            deadline = time.monotonic() + self.stack.options.startup_timeout_s + _DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                now = {c["name"]: c for c in (runfile.read_status(self.run_dir) or {}).get("children", [])}
                current = now.get(child["name"], {})
                if current.get("pid") != old and current.get("state") == "running":
                    try:
                        if _serving(endpoint.address, self.service):
                            break
                    except Exception:  # not up yet
                        pass
                time.sleep(0.1)
            else:
                raise LaunchError(f"{child['name']} did not serve again on the promoted code")
        return len(children)

    def _stop_canary(self) -> None:
        canary_envoy.write_endpoints(self.dynamic, self.service.name, ())
        if self.child is not None:
            self.child.stop()

    def _remove_worktree(self) -> None:
        r = self.record
        if r.source.startswith("ref:") and r.code_dir:
            subprocess.run(
                ["git", "worktree", "remove", "--force", r.code_dir], cwd=ROOT, capture_output=True, check=False
            )

    def _finish(self, phase: Phase, reason: str, automatic: bool) -> None:
        r = self.record
        if self.child is not None and self.child.alive():
            canary_envoy.set_canary(self.dynamic, self.service.name, 0, forced=False)
            self._stop_canary()
        r.phase, r.reason, r.automatic, r.finished_time = phase, reason, automatic, time.time()
        write_record(self.run_dir, r)
        append_history(self.run_dir, r)
        log.info("%s canary %s %s: %s", self.service.name, r.version, phase.value, reason)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tollway.launcher.canary_controller RUN_DIR SERVICE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s canary: %(message)s")
    # Stopped by a signal (the test script's cleanup, a machine shutdown): roll back, not just die.
    controller = Controller(Path(args[0]), args[1])

    def on_signal(*_: object) -> None:
        raise SystemExit(3)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return controller.run()
    except SystemExit:
        if not controller.record.phase.final:
            controller._rollback("the controller was stopped (SIGTERM)", automatic=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
