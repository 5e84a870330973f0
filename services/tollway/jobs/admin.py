"""``tollway jobs list/show/cancel``: a tenant's jobs, through the running jobs service.

Wiring into a CLI (the whole of it)::

    tollway.jobs.admin.add_commands(subparsers)   # adds `jobs`

The commands act as an API key (``--key``, else ``TOLLWAY_API_KEY``): a caller sees and cancels only
its own tenant's jobs, exactly as over the API.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from tollway.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from tollway.mesh import clients
from tollway.mesh.errors import TollwayError, Unauthenticated, from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50058"
T = TypeVar("T")
Stub = jobs_pb2_grpc.JobsServiceStub
STATES = {s.removeprefix("JOB_STATE_").lower(): v for s, v in jobs_pb2.JobState.items() if v}


def _key(args: argparse.Namespace) -> str:
    key = args.key or os.environ.get("TOLLWAY_API_KEY", "")
    if not key:
        raise Unauthenticated("give the API key with --key or TOLLWAY_API_KEY", reason="API_KEY_MISSING")
    return key


def _call(args: argparse.Namespace, work: Callable[[Stub, tuple[tuple[str, str]]], Awaitable[T]]) -> T:
    metadata = (("authorization", f"Bearer {_key(args)}"),)

    async def run() -> T:
        async with clients.channel(args.target) as channel:
            try:
                return await work(Stub(channel), metadata)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None

    return asyncio.run(run())


def _when(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return dt.datetime.fromtimestamp(ts.ToMilliseconds() / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _name(value: str) -> str:
    """Accepts a job's id as well as its name."""
    return value if value.startswith("jobs/") else f"jobs/{value}"


def _line(job: jobs_pb2.Job) -> str:
    m = job.metadata
    state = jobs_pb2.JobState.Name(m.state).removeprefix("JOB_STATE_").lower()
    extra = f"  {m.batch}#{m.batch_index}" if m.batch else ""
    return (
        f"{job.name}  {state:9}  {m.model or '-':24}  attempts {m.attempt_count}  created {_when(m.create_time)}{extra}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    state = STATES.get(args.state, 0) if args.state else 0
    batch = args.batch if not args.batch or args.batch.startswith("jobbatches/") else f"jobbatches/{args.batch}"

    async def work(stub: Stub, md: tuple[tuple[str, str]]) -> list[jobs_pb2.Job]:
        out: list[jobs_pb2.Job] = []
        token = ""
        while len(out) < args.limit:
            req = jobs_pb2.ListJobsRequest(
                page_size=min(1000, args.limit - len(out)), page_token=token, state=state, batch=batch or ""
            )
            page = await stub.ListJobs(req, metadata=md)
            out += page.jobs
            token = page.next_page_token
            if not token:
                break
        return out

    for job in _call(args, work):
        print(_line(job))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    async def work(stub: Stub, md: tuple[tuple[str, str]]) -> jobs_pb2.Job:
        return (await stub.GetJob(jobs_pb2.GetJobRequest(name=_name(args.job)), metadata=md)).job

    print(json_format.MessageToJson(_call(args, work), indent=1))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    async def work(stub: Stub, md: tuple[tuple[str, str]]) -> jobs_pb2.Job:
        return (await stub.CancelJob(jobs_pb2.CancelJobRequest(name=_name(args.job)), metadata=md)).job

    print(_line(_call(args, work)))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``jobs`` with ``list``, ``show`` and ``cancel`` to a CLI's subparsers."""
    jobs = sub.add_parser("jobs", help="background jobs (issue 19): list, show, cancel")
    jobs.add_argument("--target", default=DEFAULT_TARGET, help=f"the jobs service (default {DEFAULT_TARGET})")
    jobs.add_argument("--key", default="", help="the API key (default: TOLLWAY_API_KEY)")
    cmds = jobs.add_subparsers(dest="jobs_command", required=True)
    ls = cmds.add_parser("list", help="the tenant's jobs, newest first (a batch's in order)")
    ls.add_argument("--state", choices=sorted(STATES), help="only jobs in this state")
    ls.add_argument("--batch", default="", help="only the items of this batch (jobbatches/<id> or <id>)")
    ls.add_argument("--limit", type=int, default=100, help="most jobs to print (default 100)")
    ls.set_defaults(func=cmd_list)
    show = cmds.add_parser("show", help="one job as JSON, with its answer or error and webhook attempts")
    show.add_argument("job", help="jobs/<id> or <id>")
    show.set_defaults(func=cmd_show)
    cancel = cmds.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job", help="jobs/<id> or <id>")
    cancel.set_defaults(func=cmd_cancel)


def main(argv: list[str] | None = None) -> int:
    """``python -m tollway.jobs.admin`` (what ``tollway jobs`` runs)."""
    parser = argparse.ArgumentParser(prog="tollway")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TollwayError as exc:
        print(f"tollway: {exc.message}", file=sys.stderr)
        return 2
