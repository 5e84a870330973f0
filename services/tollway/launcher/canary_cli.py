"""`tollway canary`: start, weight, watch, promote and roll back a canary of one service.

Each command checks everything it can before it changes anything, and says what to fix:
a missing `tollway up`, a service not started canary-ready, a bad version, weight, ref or
directory, a canary already running. The work itself is the controller's
(`tollway.launcher.canary_controller`); a command leaves it an instruction and waits until the
record shows it done.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tollway.launcher import runfile
from tollway.launcher.canary import (
    VERSION_PATTERN,
    CanaryError,
    CanaryPolicy,
    CanaryRecord,
    Phase,
    canary_dir,
    command_path,
    format_status,
    read_history,
    read_record,
    write_record,
)
from tollway.launcher.processes import spawn
from tollway.launcher.stack import ROOT, StackOptions

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def add_commands(sub: Any) -> None:
    """Adds `tollway canary ...` to the CLI's subcommands."""
    canary = sub.add_parser("canary", help="run a second version of one service beside the first, weighted in Envoy")
    commands = canary.add_subparsers(dest="canary_command", required=True)

    start = commands.add_parser("start", help="start a canary and give it a share of the service's requests")
    start.add_argument("service", help="the service (its tollway up must have --canary-ready SERVICE)")
    start.add_argument("--version", required=True, help="the canary's label, a DNS label such as v2")
    start.add_argument("--weight", type=int, default=10, help="percent of requests it gets, 0..100 (default 10)")
    source = start.add_mutually_exclusive_group()
    source.add_argument("--ref", help="run this git ref's code (checked out with git worktree under the run dir)")
    source.add_argument("--dir", help="run the code in this directory (a Tollway checkout with protos generated)")
    start.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the canary only"
    )
    start.add_argument("--min-requests", type=int, default=50, help="judge it only after this many (default 50)")
    start.add_argument(
        "--max-error-rate-increase", type=float, default=0.05,
        help="roll back when its error rate exceeds the stable one's by more than this (default 0.05)",
    )
    start.add_argument(
        "--max-latency-ratio", type=float, default=0.0,
        help="roll back when its mean request time exceeds the stable one's this many times (default 0: off)",
    )
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until it serves")
    start.set_defaults(func=run, canary_func=cmd_start)

    status = commands.add_parser("status", help="canary and stable error rate and latency side by side")
    status.add_argument("service", nargs="?", help="one service (default: every canary on record)")
    status.add_argument("--json", action="store_true", help="print the record as JSON")
    status.set_defaults(func=run, canary_func=cmd_status)

    weight = commands.add_parser("weight", help="change a running canary's share of requests")
    weight.add_argument("service")
    weight.add_argument("percent", type=int, help="0..100")
    weight.set_defaults(func=run, canary_func=cmd_weight)

    promote = commands.add_parser("promote", help="move the stable instances to the canary's code, then stop it")
    promote.add_argument("service")
    promote.add_argument("--timeout", type=float, default=180.0)
    promote.set_defaults(func=run, canary_func=cmd_promote)

    rollback = commands.add_parser("rollback", help="send every request back to the stable version and stop it")
    rollback.add_argument("service")
    rollback.add_argument("--reason", default="rolled back by the operator", help="recorded with the rollback")
    rollback.add_argument("--timeout", type=float, default=60.0)
    rollback.set_defaults(func=run, canary_func=cmd_rollback)

    history = commands.add_parser("history", help="finished canaries, oldest first, one JSON object a line")
    history.set_defaults(func=run, canary_func=cmd_history)

    for p in (start, status, weight, promote, rollback, history):
        p.add_argument("--run-dir", help="the run dir of that `tollway up` (default .run/)")


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir).resolve() if args.run_dir else StackOptions().run_dir


def _stack(run_dir: Path, service: str) -> dict[str, Any]:
    if runfile.live_launcher(run_dir) is None:
        raise CanaryError(
            f"no tollway up is running with the run dir {run_dir}; start one with "
            f"`tollway up --canary-ready {service}`"
        )
    description = runfile.read_stack(run_dir)
    if description is None:
        raise CanaryError(f"the tollway up running with {run_dir} predates canaries (no stack.json); restart it")
    return description


def _running(run_dir: Path, service: str) -> CanaryRecord:
    record = read_record(run_dir, service)
    if record is None or record.phase.final:
        raise CanaryError(f"no canary of {service} is running; see `tollway canary status`")
    if record.phase is not Phase.RUNNING:
        raise CanaryError(f"the canary of {service} is {record.phase.value}; wait until it is running or over")
    return record


def cmd_start(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    service: str = args.service
    description = _stack(run_dir, service)
    if service not in description.get("canary_ready", []):
        ready = ", ".join(description.get("canary_ready", [])) or "none"
        raise CanaryError(
            f"{service} was not started canary-ready (canary-ready: {ready}); restart with "
            f"`tollway up --canary-ready {service}` so that it runs alone and its callers reach it through Envoy"
        )
    if not VERSION_PATTERN.match(args.version) or args.version == "stable":
        raise CanaryError(f"--version has value {args.version!r}; use a DNS label other than 'stable', such as v2")
    if not 0 <= args.weight <= 100:
        raise CanaryError(f"--weight has value {args.weight}; it must be 0..100 (percent of requests)")
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise CanaryError(f"--env has value {item!r}; use NAME=VALUE with NAME in capitals, digits and '_'")
        env[name] = value
    policy = CanaryPolicy(args.min_requests, args.max_error_rate_increase, args.max_latency_ratio)
    existing = read_record(run_dir, service)
    if existing is not None and not existing.phase.final:
        raise CanaryError(
            f"a canary of {service} ({existing.version}) is already {existing.phase.value}; "
            f"promote or roll it back first"
        )
    code_dir: str | None = None
    if args.ref:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.ref}^{{commit}}"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if found.returncode != 0:
            raise CanaryError(f"--ref has value {args.ref!r}, which is no commit of {ROOT}; see `git log`")
        code_dir = str(canary_dir(run_dir) / "src" / f"{service}-{args.version}-{found.stdout.strip()[:10]}")
        source = f"ref:{args.ref}"
    elif args.dir:
        path = Path(args.dir).resolve()
        if not (path / "services" / "tollway" / service / "__main__.py").is_file():
            raise CanaryError(
                f"--dir has value {args.dir!r}, which has no services/tollway/{service}/__main__.py; "
                "give a Tollway checkout (with ./scripts/gen_protos.sh run in it)"
            )
        if not (path / "services" / "tollway" / service / "v1").is_dir():
            raise CanaryError(f"--dir {args.dir!r} has no generated protos; run ./scripts/gen_protos.sh there")
        code_dir, source = str(path), f"dir:{path}"
    else:
        source = "checkout"

    record = CanaryRecord(
        service=service, version=args.version, source=source, code_dir=code_dir, env=env,
        weight_percent=args.weight, policy=policy,
    )
    write_record(run_dir, record)
    command_path(run_dir, service).unlink(missing_ok=True)
    spawn(
        f"canary-controller-{service}",
        [sys.executable, "-m", "tollway.launcher.canary_controller", str(run_dir), service],
        run_dir / "logs",
        {},
        cwd=ROOT,
    )
    final = _wait(run_dir, service, lambda r: r.phase is not Phase.STARTING, args.timeout)
    print(format_status(final))
    return 0 if final.phase is Phase.RUNNING else 1


def _wait(run_dir: Path, service: str, done: Any, timeout_s: float) -> CanaryRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        record = read_record(run_dir, service)
        if record is not None and done(record):
            return record
        if time.monotonic() > deadline:
            raise CanaryError(
                f"the canary of {service} did not get there within {timeout_s:.0f}s; "
                f"see `tollway canary status {service}` and {run_dir / 'logs'}"
            )
        time.sleep(0.1)


def _command(run_dir: Path, service: str, command: dict[str, Any]) -> None:
    path = command_path(run_dir, service)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(command))
    tmp.replace(path)


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    services = [args.service] if args.service else sorted(p.stem for p in canary_dir(run_dir).glob("*.json"))
    records = [r for s in services if (r := read_record(run_dir, s)) is not None]
    if not records:
        print(f"tollway: no canary on record in {run_dir}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=1))
    else:
        print("\n\n".join(format_status(r) for r in records))
    return 0


def cmd_weight(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    if not 0 <= args.percent <= 100:
        raise CanaryError(f"the weight has value {args.percent}; it must be 0..100 (percent of requests)")
    _stack(run_dir, args.service)
    _running(run_dir, args.service)
    _command(run_dir, args.service, {"command": "weight", "weight_percent": args.percent})
    record = _wait(run_dir, args.service, lambda r: r.weight_percent == args.percent or r.phase.final, 30)
    print(format_status(record))
    return 0 if record.phase is Phase.RUNNING else 1


def cmd_promote(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    _stack(run_dir, args.service)
    _running(run_dir, args.service)
    _command(run_dir, args.service, {"command": "promote"})
    record = _wait(run_dir, args.service, lambda r: r.phase.final, args.timeout)
    print(format_status(record))
    return 0 if record.phase is Phase.PROMOTED else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    _stack(run_dir, args.service)
    _running(run_dir, args.service)
    _command(run_dir, args.service, {"command": "rollback", "reason": args.reason})
    record = _wait(run_dir, args.service, lambda r: r.phase.final, args.timeout)
    print(format_status(record))
    return 0 if record.phase is Phase.ROLLED_BACK else 1


def cmd_history(args: argparse.Namespace) -> int:
    for entry in read_history(_run_dir(args)):
        print(json.dumps(entry))
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs a parsed `tollway canary` command; a CanaryError is printed as what to fix (exit 2)."""
    try:
        return int(args.canary_func(args))
    except CanaryError as exc:
        print(f"tollway canary: {exc}", file=sys.stderr)
        return 2
