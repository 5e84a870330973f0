"""``tollway ingest PATH --collection C``: a folder of text, Markdown and HTML into a collection.

Wiring into a CLI (the whole of it)::

    tollway.retrieval.admin.add_commands(subparsers)   # adds `ingest`

Every file goes through the running retrieval service (UpsertDocument), never to Redis
directly, so the checks, chunking and indexing are the service's own. A file that cannot be
read (not UTF-8, binary, empty) or that the service refuses (too large) is reported and
skipped; the rest are ingested. Unchanged files cost nothing (indexing is idempotent by
content hash), so re-running after editing a few files re-indexes those only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc

from tollway.mesh import clients
from tollway.mesh.errors import from_rpc_error
from tollway.retrieval.extract import FORMATS, Extracted, ExtractError, extract
from tollway.retrieval.v1 import retrieval_pb2 as pb
from tollway.retrieval.v1 import retrieval_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50057"


@dataclasses.dataclass
class Summary:
    """What one ingest did."""

    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    chunks: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def document_id(root: Path, path: Path) -> str:
    """The document id of a file: its path under the ingested folder, ``/`` as ``:``."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    return "".join("_" if c.isspace() else c for c in rel.as_posix().replace("/", ":"))[-128:]


def _files(root: Path) -> tuple[list[Path], Path]:
    """The files to ingest and the folder their ids are relative to."""
    if root.is_file():
        return [root], root.parent
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS), root


def _read(path: Path) -> tuple[Extracted, int]:
    return extract(path), path.stat().st_mtime_ns


class _Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out, self.tty = total, out, out.isatty()
        self._last = -1

    def show(self, done: int, label: str) -> None:
        if done == self._last:
            return
        self._last = done
        width = 30
        filled = width * done // max(1, self.total)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {label}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.out, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=self.out)


async def ingest(
    target: str, root: Path, collection: str, *, out: TextIO | None = None, timeout_s: float = 3600.0
) -> Summary:
    """Ingests ``root`` (a file or a folder, recursively) into ``collection``, creating it
    (recursive chunking, filterable ``format``) when it does not exist."""
    out = out or sys.stderr  # looked up per call: the caller may have redirected it
    started = time.monotonic()
    summary = Summary()
    files, base = await asyncio.to_thread(_files, root)
    summary.files = len(files)
    async with clients.channel(target) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        try:
            await stub.GetCollection(pb.GetCollectionRequest(name=f"collections/{collection}"))
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise from_rpc_error(err) from None
            await stub.CreateCollection(
                pb.CreateCollectionRequest(
                    collection_id=collection,
                    collection=pb.Collection(
                        description=f"ingested from {root}",
                        filterable_fields=[pb.FieldSchema(name="format", type=pb.FIELD_TYPE_STRING)],
                    ),
                )
            )
        progress = _Progress(len(files), out)
        pending: dict[str, str] = {}
        for i, path in enumerate(files, 1):
            rel = str(path.relative_to(base))
            progress.show(i, f"sending {rel}")
            try:
                got, mtime_ns = await asyncio.to_thread(_read, path)
            except (ExtractError, OSError) as exc:
                summary.failures.append((rel, str(exc)))
                continue
            doc = pb.Document(title=got.title, text=got.text, source_version=str(mtime_ns))
            doc.metadata.update({"path": rel, "format": got.format})
            try:
                reply = await stub.UpsertDocument(
                    pb.UpsertDocumentRequest(
                        parent=f"collections/{collection}", document_id=document_id(base, path), document=doc
                    )
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.INVALID_ARGUMENT,):
                    summary.failures.append((rel, err.details() or err.code().name))
                    continue
                raise from_rpc_error(err) from None
            if reply.operation.done:
                _finish(summary, rel, reply.operation)
            else:
                pending[reply.operation.name] = rel
        progress.end()
        progress = _Progress(len(pending), out)
        total = len(pending)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for name, rel in list(pending.items()):
                op = (await stub.GetOperation(pb.GetOperationRequest(name=name))).operation
                if op.done:
                    del pending[name]
                    _finish(summary, rel, op)
            progress.show(total - len(pending), "indexed")
            if pending:
                await asyncio.sleep(0.2)
        progress.end()
        for rel in pending.values():
            summary.failures.append((rel, f"not indexed within {timeout_s:.0f} s"))
    summary.seconds = time.monotonic() - started
    return summary


def _finish(summary: Summary, rel: str, op: pb.Operation) -> None:
    if op.HasField("error"):
        summary.failures.append((rel, f"{op.error.reason}: {op.error.message}"))
    elif op.metadata.unchanged:
        summary.unchanged += 1
        summary.chunks += op.response.chunk_count
    else:
        summary.indexed += 1
        summary.chunks += op.response.chunk_count


def cmd_ingest(args: argparse.Namespace) -> int:
    root = Path(args.path)
    if not root.exists():
        print(f"tollway ingest: {root} does not exist", file=sys.stderr)
        return 2
    s = asyncio.run(ingest(args.target, root, args.collection))
    print(
        f"ingested {s.indexed + s.unchanged} of {s.files} files into collections/{args.collection} "
        f"({s.indexed} indexed, {s.unchanged} unchanged): {s.chunks} chunks in {s.seconds:.1f} s; "
        f"{len(s.failures)} failed"
    )
    for rel, why in s.failures:
        print(f"  skipped {rel}: {why}")
    return 1 if s.failures else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``ingest`` to a ``tollway`` argument parser."""
    p = sub.add_parser("ingest", help="ingest a folder of text, Markdown and HTML files into a retrieval collection")
    p.add_argument("path", help="a file or a folder (read recursively: .txt, .md, .markdown, .html, .htm)")
    p.add_argument("--collection", required=True, help="the collection id (created when missing)")
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"the retrieval service (default {DEFAULT_TARGET})")
    p.set_defaults(func=cmd_ingest)
