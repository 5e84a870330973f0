"""Two bench stacks that differ only in their environment, compared request by request.

    .venv/bin/python bench/stack_ab.py --a TOLLWAY_GATEWAY_BUDGET_SETTLE_DELAY_S=0 --b '' \
        [--pairs 1500] [--warmup 200] [--surface native|openai] [--layout colocated|split] [--runs 2]

Starts the fake OpenAI upstream (no delay) and two stacks as bench/budget_overhead.py's
budget-on stack (Envoy, the co-located core with the budget's six-quota plan, embedding, Redis),
the second environment's settings added to each. Sends pairs of requests, one to each stack,
one at a time, the order alternating within pairs, so that the machine's drift (on this kind of
machine its speed moves by 2x within minutes) favours neither: what compares is the difference
in one run, not either figure alone. Prints, per run, the p50 of each, their difference and the
median per-pair difference, with the machine's load.

Use it for a setting that changes the request path (``--a NAME=VALUE ...``; ``--b ''`` is the
default configuration). Never run it on a machine that serves anything else: it measures the
machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget_overhead import endpoint, stack_options, uptime  # noqa: E402
from bench.httpload import alternating_pairs, percentile  # noqa: E402
from bench.overhead import start_upstream  # noqa: E402
from tollway.launcher.stack import Stack  # noqa: E402


def settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` words as an environment."""
    out: dict[str, str] = {}
    for word in (w for p in pairs for w in p.split()):
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise SystemExit(f"{word!r} is not NAME=VALUE")
        out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", nargs="*", default=[], help="NAME=VALUE settings of stack a")
    parser.add_argument("--b", nargs="*", default=[], help="NAME=VALUE settings of stack b")
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2, help="runs of --pairs pairs on the same two stacks")
    parser.add_argument("--surface", choices=("native", "openai"), default="native")
    parser.add_argument("--layout", choices=("colocated", "split"), default="colocated")
    args = parser.parse_args()
    envs = {"a": settings(args.a), "b": settings(args.b)}

    run = Path(tempfile.mkdtemp(prefix="bench-stack-ab-"))
    upstream, port = start_upstream(run)
    try:
        options = {}
        for label, env in envs.items():
            base = stack_options(run / label, port, True, args.layout)
            options[label] = dataclasses.replace(base, env={**base.env, **env})
        with Stack(options["a"]) as a, Stack(options["b"]) as b:
            ends = endpoint("a", a, args.surface), endpoint("b", b, args.surface)
            print(
                f"surface {args.surface}, layout {args.layout}; a: {envs['a'] or 'defaults'}; "
                f"b: {envs['b'] or 'defaults'}; {os.cpu_count()} CPUs"
            )
            for n in range(args.runs):
                before = uptime()
                pairs = uvloop.run(alternating_pairs(*ends, args.pairs, args.warmup))
                ta = [p[0][0] for p in pairs]
                tb = [p[1][0] for p in pairs]
                pa, pb = percentile(ta, 50) * 1e3, percentile(tb, 50) * 1e3
                pair = statistics.median(x - y for x, y in zip(ta, tb, strict=True)) * 1e3
                print(
                    f"run {n + 1}: p50 a {pa:.3f} ms, b {pb:.3f} ms; a - b {pa - pb:+.3f} ms "
                    f"(median per pair {pair:+.3f} ms)\n  {before}"
                )
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
