"""``tollway prompts push/promote/rollback/show/history``: prompts as files, through the service.

Wiring into a CLI (the whole of it)::

    tollway.prompts.admin.add_commands(subparsers)   # adds `prompts`

Every write goes through a running prompts service (never Redis directly), so its checks,
limits and history are the service's own. ``push --dry-run`` checks the files locally with
the service's rules at their default limits and shows what would change, writing nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import difflib
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tollway.mesh import clients
from tollway.mesh.errors import NotFound, TollwayError, from_rpc_error
from tollway.prompts.config import PromptsConfig
from tollway.prompts.files import PromptFile, PromptFileError, load_prompt_dir
from tollway.prompts.prompts import content_hash
from tollway.prompts.render import Renderer
from tollway.prompts.service import content_from_proto, content_to_proto, dict_to_struct
from tollway.prompts.types import Content
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc
from tollway.prompts.variables import check_variables, declared_names, parse_schema

DEFAULT_TARGET = "127.0.0.1:50053"
T = TypeVar("T")
Stub = prompts_pb2_grpc.PromptsServiceStub


def _call(target: str, work: Callable[[Stub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with clients.channel(target) as channel:
            try:
                return await work(Stub(channel))
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None

    return asyncio.run(run())


def _when(ts: Any) -> str:
    return dt.datetime.fromtimestamp(ts.ToMilliseconds() / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _as_text(c: Content) -> list[str]:
    """A content as lines, for diffs: each message, the schema and the parameters."""
    lines = []
    for i, m in enumerate(c.messages):
        lines.append(f"=== messages[{i}] ({m.role})")
        lines += m.content.splitlines()
    if c.schema_json:
        lines.append("=== variables")
        lines += json.dumps(json.loads(c.schema_json), indent=2, sort_keys=True).splitlines()
    lines.append("=== parameters")
    lines += json.dumps(c.parameters.canonical(), indent=2, sort_keys=True).splitlines()
    return lines


def _check_locally(f: PromptFile) -> None:
    """The publish checks, at the default limits, so a dry run fails where a push would."""
    cfg = PromptsConfig(seed_dir="")
    schema = parse_schema(f.content.schema_json, cfg.max_schema_chars)
    renderer = Renderer(
        cache_size=8, max_range=cfg.max_range, max_rendered_chars=cfg.max_rendered_chars, encoding=cfg.token_encoding
    )
    checked = renderer.check(f.content, declared_names(schema) if schema is not None else None)
    if f.example:
        filled = check_variables(schema, f.example, cfg.max_variables_chars, field="example")
        renderer.render(f.content, filled, checked.static_prefix_count)
    for w in checked.warnings:
        print(f"  warning: {w}")


async def _all_versions(stub: Stub, template_id: str) -> list[prompts_pb2.PromptVersion]:
    out: list[prompts_pb2.PromptVersion] = []
    token = ""
    while True:
        page = await stub.ListVersions(
            prompts_pb2.ListVersionsRequest(template_id=template_id, page_size=1000, page_token=token)
        )
        out += page.versions
        token = page.next_page_token
        if not token:
            return out


async def _push_one(stub: Stub, f: PromptFile, *, dry_run: bool, author: str) -> str:
    digest = content_hash(f.content)
    try:
        versions = await _all_versions(stub, f.template_id)
        exists = True
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        versions, exists = [], False
    same = next((v for v in versions if v.content_hash == digest), None)
    if same is not None:
        return f"{f.template_id}: unchanged (= version {same.version})"
    if dry_run:
        if versions:
            latest = versions[0]
            diff = difflib.unified_diff(
                _as_text(content_from_proto(latest.content)),
                _as_text(f.content),
                f"{f.template_id} version {latest.version}",
                str(f.path),
                lineterm="",
            )
            print("\n".join(diff))
            return f"{f.template_id}: would publish version {latest.version + 1}"
        return f"{f.template_id}: new template; would publish version 1" + (
            f" and set {', '.join(f.labels)}" if f.labels else ""
        )
    if not exists:
        await stub.CreateTemplate(
            prompts_pb2.CreateTemplateRequest(template_id=f.template_id, description=f.description, actor=author)
        )
    req = prompts_pb2.PublishVersionRequest(
        template_id=f.template_id,
        content=content_to_proto(f.content),
        author=f.author or author,
        change_note=f.change_note,
    )
    if f.example:
        req.example_variables.CopyFrom(dict_to_struct(f.example))
    resp = await stub.PublishVersion(req)
    for w in resp.warnings:
        print(f"  warning: {w}")
    line = f"{f.template_id}: published version {resp.version.version}"
    set_labels = []
    for label in f.labels:
        try:  # expected_version 0: only a label that does not exist yet (a new template's)
            await stub.SetLabel(
                prompts_pb2.SetLabelRequest(
                    template_id=f.template_id,
                    label=label,
                    version=resp.version.version,
                    actor=author,
                    reason="created by push",
                    expected_version=0,
                )
            )
            set_labels.append(label)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
    if set_labels:
        line += f", labels set: {', '.join(set_labels)}"
    elif f.labels:
        line += f" (labels not moved; promote with: tollway prompts promote {f.template_id} "
        line += f"--version {resp.version.version} --label {f.labels[0]})"
    return line


def cmd_push(args: argparse.Namespace) -> int:
    try:
        files = load_prompt_dir(args.dir)
    except PromptFileError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 1
    for f in files:
        _check_locally(f)

    async def work(stub: Stub) -> list[str]:
        return [await _push_one(stub, f, dry_run=args.dry_run, author=args.actor) for f in files]

    for line in _call(args.target, work):
        print(line)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    req = prompts_pb2.SetLabelRequest(
        template_id=args.id, label=args.label, version=args.version, actor=args.actor, reason=args.reason
    )
    resp = _call(args.target, lambda s: s.SetLabel(req))
    if resp.HasField("change"):
        c = resp.change
        print(f"{args.id}: {args.label} moved from version {c.from_version or '-'} to {c.to_version}")
    else:
        print(f"{args.id}: {args.label} already points at version {resp.label.version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    req = prompts_pb2.RollbackLabelRequest(template_id=args.id, label=args.label, actor=args.actor, reason=args.reason)
    c = _call(args.target, lambda s: s.RollbackLabel(req)).change
    print(f"{args.id}: {args.label} rolled back from version {c.from_version} to {c.to_version}")
    return 0


def _print_version(v: prompts_pb2.PromptVersion, full: bool) -> None:
    print(
        f"  version {v.version}  {_when(v.create_time)}  by {v.author}  {v.token_count} tokens  "
        f"hash {v.content_hash[:12]}  {v.change_note}"
    )
    for metric, s in sorted(v.evaluations.items()):
        print(f"    {metric}: mean {s.mean_score:.4g} over {s.score_count}")
    if full:
        print("\n".join("    " + line for line in _as_text(content_from_proto(v.content))))


def cmd_show(args: argparse.Namespace) -> int:
    async def work(stub: Stub) -> tuple[Any, list[Any]]:
        t = (await stub.GetTemplate(prompts_pb2.GetTemplateRequest(template_id=args.id))).template
        if args.version:
            v = await stub.GetVersion(prompts_pb2.GetVersionRequest(template_id=args.id, version=args.version))
            return t, [v.version]
        page = await stub.ListVersions(prompts_pb2.ListVersionsRequest(template_id=args.id, page_size=args.last))
        return t, list(page.versions)

    t, versions = _call(args.target, work)
    print(f"{t.template_id}: {t.description}")
    print(f"  created {_when(t.create_time)}, {t.latest_version} version(s)")
    for lb in t.labels:
        split = ", ".join(f"v{v.version} weight {v.weight}" for v in lb.variants)
        print(f"  label {lb.label} -> version {lb.version}" + (f"  (A/B: {split})" if split else ""))
    for pin in t.tenant_pins:
        print(f"  tenant {pin.tenant_id} pinned to version {pin.version}")
    for v in versions:
        _print_version(v, full=bool(args.version))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    async def work(stub: Stub) -> list[prompts_pb2.LabelChange]:
        out: list[prompts_pb2.LabelChange] = []
        token = ""
        while len(out) < args.limit:
            page = await stub.ListLabelHistory(
                prompts_pb2.ListLabelHistoryRequest(
                    template_id=args.id, label=args.label, page_size=min(1000, args.limit - len(out)), page_token=token
                )
            )
            out += page.changes
            token = page.next_page_token
            if not token:
                break
        return out

    kinds = {prompts_pb2.LABEL_CHANGE_KIND_SET: "set", prompts_pb2.LABEL_CHANGE_KIND_ROLLBACK: "rollback"}
    for c in _call(args.target, work):
        print(
            f"{_when(c.change_time)}  {c.label}: {c.from_version or '-'} -> {c.to_version}  "
            f"{kinds.get(c.kind, '?')} by {c.actor}" + (f"  ({c.reason})" if c.reason else "")
        )
    return 0


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except NotFound as exc:
            print(f"tollway: {exc.message}", file=sys.stderr)
            return 1
        except TollwayError as exc:
            print(f"tollway: {exc.reason}: {exc.message}", file=sys.stderr)
            for field, why in getattr(exc, "violations", []):
                print(f"  {field}: {why}", file=sys.stderr)
            return 1

    return run


def add_commands(subparsers: Any) -> None:
    """Adds ``prompts {push,promote,rollback,show,history}`` to an argparse subparsers object."""
    prompts = subparsers.add_parser("prompts", help="publish prompt files; promote, roll back and inspect versions")
    sub = prompts.add_subparsers(dest="prompts_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"prompts service host:port (default {DEFAULT_TARGET})"
    )
    common.add_argument("--actor", default=getpass.getuser(), help="who does it, for the history (default: $USER)")

    push = sub.add_parser("push", parents=[common], help="publish the prompt files of DIR whose content changed")
    push.add_argument("dir", help="a folder of prompt files (*.yaml)")
    push.add_argument("--dry-run", action="store_true", help="check the files and show the diff; publish nothing")
    push.set_defaults(func=_guard(cmd_push))

    promote = sub.add_parser("promote", parents=[common], help="point a label at a version")
    promote.add_argument("id", help="the template id")
    promote.add_argument("--version", type=int, required=True)
    promote.add_argument("--label", required=True, help="e.g. production")
    promote.add_argument("--reason", default="", help="why, for the history")
    promote.set_defaults(func=_guard(cmd_promote))

    rollback = sub.add_parser("rollback", parents=[common], help="move a label back to its previous version")
    rollback.add_argument("id", help="the template id")
    rollback.add_argument("--label", required=True)
    rollback.add_argument("--reason", default="", help="why, for the history")
    rollback.set_defaults(func=_guard(cmd_rollback))

    show = sub.add_parser("show", parents=[common], help="a template: labels, A/B splits, pins and versions")
    show.add_argument("id", help="the template id")
    show.add_argument("--version", type=int, default=0, help="print this version in full")
    show.add_argument("--last", type=int, default=10, help="how many recent versions to list (default 10)")
    show.set_defaults(func=_guard(cmd_show))

    history = sub.add_parser("history", parents=[common], help="label moves, newest first")
    history.add_argument("id", help="the template id")
    history.add_argument("--label", default="", help="only this label")
    history.add_argument("--limit", type=int, default=50, help="most moves to print (default 50)")
    history.set_defaults(func=_guard(cmd_history))
