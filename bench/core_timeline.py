"""Where a chat completion's time goes inside the core process: the median moment (µs after the
request's bytes reached the process) at which each stage began and ended, for a stack with budgets
and one without, measured in alternating blocks (issues 12 and 13).

    .venv/bin/python bench/core_timeline.py [--blocks 6] [-n 2000] [--budget on|off|both]
        [--env NAME=VALUE ...] [--prompt-words N]

Starts the fake OpenAI upstream (no delay) and the budget_overhead.py stacks (co-located, Envoy in
front), their Python processes loading bench/timeline/sitecustomize.py, which wraps the functions a
request passes through in the process that serves the OpenAI surface and writes the medians of every
1,000 requests to a file. Sends blocks of sequential ``POST /v1/chat/completions`` (response cache
bypassed) through Envoy, alternating the stacks block by block, then prints per stack the medians of
its blocks: each stage's start and end, and the time between the end of one and the start of the
next (the glue: translations, in-process calls, generators). ``--env`` adds settings to the budget-on
stack (``--budget on --env X=1`` against ``--budget on``: what a setting moves). ``provider call`` includes the
upstream's own time and the hop to it; the rest is the core's.

The wrappers cost ~1 µs a stage; compare stacks within one run, not with other benches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget_overhead import endpoint, stack_options, uptime  # noqa: E402
from bench.httpload import sequential  # noqa: E402
from bench.overhead import start_upstream  # noqa: E402
from tollway.launcher.stack import Stack  # noqa: E402

PROBE_DIR = Path(__file__).resolve().parent / "timeline"


def read_medians(path: Path, skip: int) -> list[dict[str, float]]:
    """The probe's lines after the first ``skip`` (one per 1,000 requests)."""
    if not path.exists():
        return []
    return [json.loads(line)["us"] for line in path.read_text().splitlines()[skip:]]


def combine(lines: list[dict[str, float]]) -> dict[str, float]:
    """The median of each mark over the probe's lines."""
    names = {k for line in lines for k in line}
    return {k: statistics.median(line[k] for line in lines if k in line) for k in names}


def table(medians: dict[str, float]) -> str:
    rows = ["| mark | µs after arrival | since the previous mark |", "|---|---:|---:|"]
    last = 0.0
    for name, at in sorted(medians.items(), key=lambda kv: kv[1]):
        if at < 0:  # before the arrival: the previous answer's write
            rows.append(f"| {name} | {at:.0f} | |")
            continue
        rows.append(f"| {name} | {at:.0f} | {at - last:.0f} |")
        last = at
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=6, help="blocks per stack")
    parser.add_argument("-n", type=int, default=2000, help="requests per block (a multiple of 1,000)")
    parser.add_argument("--budget", choices=("on", "off", "both"), default="both")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings of the budget-on stack")
    parser.add_argument("--prompt-words", type=int, default=0, help="words added to the prompt")
    args = parser.parse_args()
    extra = dict(word.split("=", 1) for word in args.env)
    if args.n % 1000:
        parser.error("-n must be a multiple of 1000 (the probe writes its medians every 1,000 requests)")
    run = Path(tempfile.mkdtemp(prefix="tollway-timeline-"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROBE_DIR), os.environ.get("PYTHONPATH")) if p)
    budgets = {"on": [True], "off": [False], "both": [False, True]}[args.budget]
    upstream, port = start_upstream(run)
    stacks: dict[bool, tuple[Stack, Path]] = {}
    print(f"start: {uptime()}")
    try:
        for budget in budgets:
            out = run / f"timeline-{'on' if budget else 'off'}.jsonl"
            os.environ["TOLLWAY_BENCH_TIMELINE"] = str(out)
            options = stack_options(run / ("on" if budget else "off"), port, budget, "colocated")
            if budget and extra:
                options = dataclasses.replace(options, env={**options.env, **extra})
            stack = Stack(options)
            stack.start()
            stacks[budget] = (stack, out)
        os.environ.pop("TOLLWAY_BENCH_TIMELINE")
        words = args.prompt_words
        targets = {b: endpoint("on" if b else "off", s, "openai", words) for b, (s, _) in stacks.items()}
        for target in targets.values():  # warm-up, and the probe's install (it waits for imports)
            uvloop.run(sequential(target, 500, 0))
        skip = {b: len(read_medians(out, 0)) for b, (_, out) in stacks.items()}
        p50s: dict[bool, list[float]] = {b: [] for b in stacks}
        for block in range(args.blocks):
            order = budgets if block % 2 == 0 else list(reversed(budgets))
            for budget in order:
                p50s[budget].append(uvloop.run(sequential(targets[budget], args.n, 0))["p50_ms"])
        for budget, (_, out) in stacks.items():
            lines = read_medians(out, skip[budget])
            label = "budget on" if budget else "budget off"
            if budget and extra:
                label += " (" + " ".join(args.env) + ")"
            print(f"\n## {label}: {len(lines) * 1000} requests; client p50 {statistics.median(p50s[budget]):.3f} ms\n")
            print(table(combine(lines)))
        print(f"\nend: {uptime()}")
    finally:
        for stack, _ in stacks.values():
            stack.stop()
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
