"""``tollway budget set/show/reconcile`` and ``tollway usage``: through a running budget service.

Wiring into a CLI (the whole of it)::

    tollway.budget.admin.add_commands(subparsers)   # adds `budget` and `usage`

Every command calls the service (never Redis directly), so the plans file, the overrides
and the checks are the service's own.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.mesh import clients
from tollway.mesh.errors import TollwayError, from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50054"
T = TypeVar("T")
_UNITS = {
    "tokens": budget_pb2.QUOTA_UNIT_TOKENS,
    "usd": budget_pb2.QUOTA_UNIT_USD_NANOS,
    "requests": budget_pb2.QUOTA_UNIT_REQUESTS,
}
_UNIT_NAMES = {v: k for k, v in _UNITS.items()}
_WINDOWS = {n: getattr(budget_pb2, f"WINDOW_{n.upper()}") for n in ("minute", "hour", "day", "month", "conversation")}
_WINDOW_NAMES = {v: k for k, v in _WINDOWS.items()}
_SCOPES = {n: getattr(budget_pb2, f"QUOTA_SCOPE_{n.upper()}") for n in ("tenant", "key", "feature", "conversation")}
_SCOPE_NAMES = {v: k for k, v in _SCOPES.items()}
_GROUPS = {
    "day": budget_pb2.USAGE_GROUP_UNSPECIFIED,
    "key": budget_pb2.USAGE_GROUP_KEY,
    "feature": budget_pb2.USAGE_GROUP_FEATURE,
    "model": budget_pb2.USAGE_GROUP_MODEL,
}


def _call(target: str, work: Callable[[budget_pb2_grpc.BudgetServiceStub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with clients.channel(target) as channel:
            try:
                return await work(budget_pb2_grpc.BudgetServiceStub(channel))
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None

    return asyncio.run(run())


def parse_quota(text: str) -> budget_pb2.Quota:
    """``[scope[:subject]/]window:unit=limit`` (``day:tokens=100000``, ``key:k1/minute:requests=60``,
    ``month:usd=5.5``) as a Quota.

    Raises:
        ValueError: The text is not one; the message quotes it.
    """
    try:
        who, _, rest = text.rpartition("/")
        scope, _, subject = (who or "tenant").partition(":")
        window_unit, _, limit = rest.partition("=")
        window, _, unit = window_unit.partition(":")
        amount = round(float(limit) * 1e9) if unit == "usd" else int(limit)
        return budget_pb2.Quota(
            scope=_SCOPES[scope], subject=subject, window=_WINDOWS[window], unit=_UNITS[unit], limit=amount
        )
    except (KeyError, ValueError):
        raise ValueError(
            f"{text!r} is not a quota; write [scope[:subject]/]window:unit=limit, e.g. day:tokens=100000, "
            "key:k1/minute:requests=60, month:usd=5 (scopes tenant|key|feature|conversation, "
            "windows minute|hour|day|month|conversation, units tokens|usd|requests)"
        ) from None


def _amount(unit: int, value: int) -> str:
    return f"${value / 1e9:,.6f}" if unit == budget_pb2.QUOTA_UNIT_USD_NANOS else f"{value:,}"


def _print_budget(resp: Any) -> None:
    b = resp.budget
    cap = b.max_tokens_per_request or "none"
    print(f"tenant {b.tenant_id}: plan {b.plan}{' (overridden)' if b.overridden else ''}; max tokens/request {cap}")
    print(
        f"  thresholds: normal {b.normal_threshold:g}, batch {b.batch_threshold:g}; "
        f"plans {b.plans_version}, prices {b.pricing_version}"
    )
    used = {(s.quota.window, s.quota.unit): s for s in getattr(resp, "statuses", [])}
    for q in b.quotas:
        who = _SCOPE_NAMES[q.scope] + (f":{q.subject}" if q.subject else "")
        line = f"  {who:<20} {_WINDOW_NAMES[q.window]:<12} {_UNIT_NAMES[q.unit]:<9} limit {_amount(q.unit, q.limit)}"
        s = used.get((q.window, q.unit)) if q.scope == budget_pb2.QUOTA_SCOPE_TENANT else None
        if s is not None:
            line += f"  used {_amount(q.unit, s.used)}  left {_amount(q.unit, s.remaining)}"
        print(line)


def cmd_show(args: argparse.Namespace) -> int:
    resp = _call(args.target, lambda s: s.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=args.tenant)))
    _print_budget(resp)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    try:
        quotas = [parse_quota(q) for q in args.quota]
    except ValueError as exc:
        print(f"tollway budget set: {exc}", file=sys.stderr)
        return 2
    req = budget_pb2.SetBudgetRequest(tenant_id=args.tenant, plan=args.plan, quotas=quotas, clear_overrides=args.clear)
    if args.max_tokens is not None:
        req.max_tokens_per_request = args.max_tokens
    _print_budget(_call(args.target, lambda s: s.SetBudget(req)))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    r = _call(args.target, lambda s: s.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=args.tenant)))
    for d in r.differences:
        print(f"DIFFERENCE {d.tenant_id} {d.counter}: counter {d.counter_value}, ledger {d.ledger_sum}")
    verdict = "balanced" if r.balanced else f"{len(r.differences)} difference(s)"
    print(
        f"{verdict}: {r.tenant_count} tenant(s), {r.counter_count} counters, {r.ledger_entry_count} ledger entries, "
        f"{r.open_reservation_count} reservation(s) open"
    )
    return 0 if r.balanced else 1


def cmd_usage(args: argparse.Namespace) -> int:
    async def pages(stub: budget_pb2_grpc.BudgetServiceStub) -> list[budget_pb2.UsageRow]:
        rows: list[budget_pb2.UsageRow] = []
        token = ""
        while True:
            resp = await stub.GetUsage(
                budget_pb2.GetUsageRequest(
                    tenant_id=args.tenant,
                    group_by=_GROUPS[args.by],
                    start_date=args.start,
                    end_date=args.end,
                    page_size=1000,
                    page_token=token,
                )
            )
            rows += resp.rows
            token = resp.next_page_token
            if not token:
                return rows

    rows = _call(args.target, pages)
    header = [
        "date",
        "" if args.by == "day" else args.by,
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cost_usd",
        "expired",
        "cache_hits",
        "saved_usd",
    ]
    header = [h for h in header if h]
    table = [
        [
            r.date,
            *([r.group] if args.by != "day" else []),
            r.request_count,
            r.input_tokens,
            r.output_tokens,
            r.cached_input_tokens,
            f"{r.cost_usd_nanos / 1e9:.9f}",
            r.expired_count,
            r.cache_hit_count,
            f"{r.saved_cost_usd_nanos / 1e9:.9f}",
        ]
        for r in rows
    ]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(table)
        return 0
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in [header, *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    return 0


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except TollwayError as exc:
            print(f"tollway: {exc.reason}: {exc.message}", file=sys.stderr)
            return 1

    return run


def add_commands(subparsers: Any) -> None:
    """Adds ``budget {set,show,reconcile}`` and ``usage`` to an argparse subparsers object."""
    budget = subparsers.add_parser("budget", help="show and set tenants' budgets; reconcile counters with the ledger")
    sub = budget.add_subparsers(dest="budget_command", required=True)
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", default=DEFAULT_TARGET, help=f"budget service host:port (default {DEFAULT_TARGET})")

    show = sub.add_parser("show", parents=[target], help="a tenant's budget and this window's use")
    show.add_argument("--tenant", required=True)
    show.set_defaults(func=_guard(cmd_show))

    set_ = sub.add_parser("set", parents=[target], help="put a tenant on a plan and/or override quotas")
    set_.add_argument("--tenant", required=True)
    set_.add_argument("--plan", default="", help="the plan (required for a tenant the plans file does not know)")
    set_.add_argument(
        "--quota", action="append", default=[], metavar="[SCOPE[:SUBJECT]/]WINDOW:UNIT=LIMIT",
        help="e.g. day:tokens=100000, month:usd=5, key:k1/minute:requests=60 (repeatable)",
    )  # fmt: skip
    set_.add_argument("--max-tokens", type=int, help="per-request output token cap (0: none)")
    set_.add_argument("--clear", action="store_true", help="drop earlier overrides first")
    set_.set_defaults(func=_guard(cmd_set))

    rec = sub.add_parser("reconcile", parents=[target], help="prove counters equal the ledger; exit 1 on a difference")
    rec.add_argument("--tenant", default="", help="one tenant (default: all)")
    rec.set_defaults(func=_guard(cmd_reconcile))

    usage = subparsers.add_parser("usage", parents=[target], help="a tenant's committed usage per day")
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--by", choices=sorted(_GROUPS), default="day", help="group rows by (default: day)")
    usage.add_argument("--start", default="", help="first day YYYY-MM-DD (default: 30 days before --end)")
    usage.add_argument("--end", default="", help="last day YYYY-MM-DD (default: today)")
    usage.add_argument("--csv", action="store_true", help="CSV instead of a table")
    usage.set_defaults(func=_guard(cmd_usage))
