"""Submitting, reading, listing and cancelling jobs and batches: the rules, over the store.

Every call names its caller (an :class:`Owner` the gateway vouched for); a job or batch of another
tenant is NOT_FOUND, exactly as one that does not exist, so ids cannot be probed across tenants.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tollway.common.paging import Page, page_size
from tollway.jobs.config import JobsConfig
from tollway.jobs.store import JobsStore
from tollway.jobs.types import CODE_CANCELLED, Batch, Job, JobError, NewJob, Owner, State, StoredFile, new_id
from tollway.jobs.webhooks import UrlPolicy
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

_ID = re.compile(r"^[0-9a-f]{22}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CUSTOM_ID_CHARS = 64
MAX_LABELS = 16
# tollway.gateway.v1.Priority.PRIORITY_BATCH: what a job runs at when nothing says otherwise (it is
# background work, refused first when a budget runs low).
PRIORITY_BATCH = 3
# A filtered page scans at most this many jobs, then returns what it found with a token to go on.
_SCAN_LIMIT = 2000
# Stands in for an item a listing filters out (it exists, so its id is not forgotten).
_SKIP: Any = object()


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """The id of ``<collection>/<id>``.

    Raises:
        InvalidArgument: ``name`` is not of that form.
    """
    prefix = collection + "/"
    ident = name.removeprefix(prefix)
    if not name.startswith(prefix) or not _ID.match(ident):
        raise InvalidArgument(
            f"{field} {name[:100]!r} is not a {collection[:-1]} name: use {prefix}<id> as the service returned it",
            [(field, f"must be {prefix}<22 hex digits>")],
            reason="BAD_NAME",
        )
    return ident


def resolve_priority(*choices: int) -> int:
    """The first priority set (non-zero) among ``choices``, else :data:`PRIORITY_BATCH`."""
    return next((c for c in choices if c), PRIORITY_BATCH)


def lane_of(priority: int) -> str:
    """The queue a job waits in: batch work in its own, read only when no other job waits."""
    return "batch" if priority == PRIORITY_BATCH else "main"


def request_violations(new: NewJob, field: str) -> list[tuple[str, str]]:
    """What makes a request unrunnable whatever the gateway's limits: no model and no prompt (whose
    version may name one), no message and no prompt to bring them. The gateway checks the rest (sizes,
    ranges, the catalog) when the job runs, and a job it refuses fails with its status."""
    bad = []
    if not new.model and not new.has_prompt_ref:
        bad.append((f"{field}.model", "required (or a prompt_ref whose version names one)"))
    if not new.message_count and not new.has_prompt_ref:
        bad.append((f"{field}.messages", "at least one message (or a prompt_ref)"))
    return bad


def _page_token(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def _read_token(token: str, kind: str) -> str:
    if not token:
        return ""
    try:
        got_kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        got_kind, value = "", ""
    if got_kind != kind or not value:
        raise InvalidArgument(
            "page_token is not one this list returned: pass next_page_token unchanged, with the same filters",
            [("page_token", "not a token of this list")],
        )
    return value


class Jobs:
    """The jobs service's domain object.

    Args:
        store: Where jobs live.
        cfg: Limits, retention and the webhook allow-list.
        clock: Unix milliseconds (tests pass their own).
    """

    def __init__(self, store: JobsStore, cfg: JobsConfig, clock: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.urls = UrlPolicy(cfg.webhook_allow_cidrs)

    @property
    def retention_ms(self) -> int:
        return self.cfg.retention_s * 1000

    async def _check_webhook(self, url: str) -> None:
        if not url:
            return
        await self.urls.check(url)
        if not self.cfg.webhook_secret:
            raise FailedPrecondition(
                "this jobs service cannot sign webhooks (TOLLWAY_JOBS_WEBHOOK_SECRET is not set); submit without "
                "webhook_url and poll GetJob",
                reason="WEBHOOKS_NOT_CONFIGURED",
            )

    async def submit(self, owner: Owner, new: NewJob, webhook_url: str = "", request_id: str = "") -> Job:
        """Queues one job.

        Raises:
            InvalidArgument: A request with no model or no messages (and no prompt_ref), a bad
                webhook URL or request id (nothing is stored).
            FailedPrecondition: A webhook was asked for and no signing secret is configured.
        """
        if request_id and not _REQUEST_ID.match(request_id):
            raise InvalidArgument(
                f"request_id {request_id[:80]!r} must be 1-64 letters, digits, '-' or '_'",
                [("request_id", "1-64 characters of [A-Za-z0-9_-]")],
            )
        bad = request_violations(new, "request")
        if bad:
            raise InvalidArgument(f"request cannot run: {bad[0][0]} is {bad[0][1]}", bad)
        await self._check_webhook(webhook_url)
        made, now = new_id(), self.clock()
        job_id = await self.store.submit(made, owner, new, webhook_url, now, request_id, self.retention_ms)
        if job_id == made:
            # As queued: read back, a worker may have started it already, and its submitter would
            # be told it is running before it was told it exists.
            return self.store.queued(job_id, owner, new, webhook_url, now)
        return await self.get(owner, job_id)  # an earlier submit under the request id: as it is now

    async def get(self, owner: Owner, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None or job.owner.tenant != owner.tenant:
            raise NotFound(
                f"job jobs/{job_id} does not exist (or was removed after the retention of {self.cfg.retention_s} s)",
                reason="JOB_NOT_FOUND",
                metadata={"name": f"jobs/{job_id}"},
            )
        return job

    async def list(
        self, owner: Owner, size: int, token: str, state: State | None = None, batch_id: str = ""
    ) -> Page[Job]:
        """A page of the owner's single jobs (newest first) or of one batch's items (in order)."""
        size = page_size(size)
        if batch_id:
            await self.get_batch(owner, batch_id)
            return await self._list_batch(batch_id, size, token, state)
        before = _read_token(token, "j")
        found: list[Job] = []
        scanned = 0
        while len(found) <= size and scanned < _SCAN_LIMIT:
            ids = await self.store.list_ids(owner.tenant, before, size + 1)
            if not ids:
                break
            scanned += len(ids)
            jobs = await self.store.get_many(ids)
            await self.store.forget(owner.tenant, [i for i, j in zip(ids, jobs, strict=True) if j is None])
            for j in jobs:
                if j is not None and (state is None or j.state == state):
                    found.append(j)
            before = ids[-1]
        if len(found) > size:
            return Page(found[:size], _page_token("j", found[size - 1].id))
        # A scan cut short by the limit still says where to go on.
        return Page(found, _page_token("j", before) if scanned >= _SCAN_LIMIT else "")

    async def _list_batch(self, batch_id: str, size: int, token: str, state: State | None) -> Page[Job]:
        raw = _read_token(token, "b")
        start = int(raw) if raw.isdigit() else 0
        found: list[Job] = []
        pos = start
        while len(found) < size and pos - start < _SCAN_LIMIT:
            ids = await self.store.batch_ids(batch_id, pos, size)
            if not ids:
                return Page(found, "")
            for j in await self.store.get_many(ids):
                pos += 1
                if j is not None and (state is None or j.state == state):
                    found.append(j)
                    if len(found) == size:
                        break
        more = await self.store.batch_ids(batch_id, pos, 1)
        return Page(found, _page_token("b", str(pos)) if more else "")

    async def cancel(self, owner: Owner, job_id: str) -> Job:
        """Cancels a job that has not ended; a cancelled one is returned as it is.

        Raises:
            NotFound: No such job for this tenant.
            FailedPrecondition: It already succeeded or failed.
        """
        job = await self.get(owner, job_id)
        outcome = await self._cancel_one(job_id)
        if outcome in (State.SUCCEEDED.value, State.FAILED.value):
            raise FailedPrecondition(
                f"job jobs/{job_id} already {outcome}; only a queued or running job can be cancelled",
                reason="JOB_ALREADY_DONE",
                metadata={"name": f"jobs/{job_id}", "state": outcome},
            )
        return await self.get(owner, job.id)

    async def _cancel_one(self, job_id: str) -> str:
        return await self.store.finish(
            job_id,
            State.CANCELLED,
            self.clock(),
            self.retention_ms,
            error=JobError(CODE_CANCELLED, "the job was cancelled before it finished", "JOB_CANCELLED"),
        )

    # -- batches --------------------------------------------------------------------------------

    async def submit_batch(
        self,
        owner: Owner,
        items: Sequence[NewJob],
        webhook_url: str = "",
        input_file: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Batch:
        """Queues every item as a job of one batch, all or nothing.

        Raises:
            InvalidArgument: No items, more than the limit, a custom_id or label out of bounds,
                or a bad webhook URL (each named; nothing is stored).
        """
        labels = dict(labels or {})
        if not items:
            raise InvalidArgument("a batch needs at least one item", [("items", "empty")], reason="BATCH_EMPTY")
        if len(items) > self.cfg.max_batch_items:
            raise InvalidArgument(
                f"a batch holds at most {self.cfg.max_batch_items} items; this one has {len(items)}: split it",
                [("items", f"more than {self.cfg.max_batch_items}")],
                reason="BATCH_TOO_LARGE",
                metadata={"limit": str(self.cfg.max_batch_items), "count": str(len(items))},
            )
        bad = [
            (f"items[{i}].custom_id", f"longer than {MAX_CUSTOM_ID_CHARS} characters")
            for i, it in enumerate(items)
            if len(it.custom_id) > MAX_CUSTOM_ID_CHARS
        ]
        for i, it in enumerate(items):
            bad += request_violations(it, f"items[{i}].request")
        if len(labels) > MAX_LABELS:
            bad.append(("labels", f"more than {MAX_LABELS}"))
        bad += [
            (f"labels[{k[:64]!r}]", "key over 64 or value over 512 characters")
            for k, v in labels.items()
            if len(k) > 64 or len(v) > 512
        ]
        if bad:
            raise InvalidArgument(f"the batch has {len(bad)} bad field(s): {bad[0][0]} {bad[0][1]}", bad)
        await self._check_webhook(webhook_url)
        batch_id = new_id()
        job_ids = [new_id() for _ in items]
        await self.store.submit_batch(batch_id, job_ids, owner, items, webhook_url, self.clock(), input_file, labels)
        return await self.get_batch(owner, batch_id)

    async def get_batch(self, owner: Owner, batch_id: str) -> Batch:
        batch = await self.store.get_batch(batch_id)
        if batch is None or batch.tenant != owner.tenant:
            raise NotFound(
                f"batch jobbatches/{batch_id} does not exist (or was removed after the retention)",
                reason="BATCH_NOT_FOUND",
                metadata={"name": f"jobbatches/{batch_id}"},
            )
        return batch

    async def list_batches(self, owner: Owner, size: int, token: str) -> Page[Batch]:
        """A page of the owner's batches, newest first. The page token is the id of the last batch
        shown (a batch's own id is therefore a valid token: the page starts after it).

        Raises:
            InvalidArgument: ``size`` out of range, or a token that is not a batch id.
        """

        async def batches(ids: list[str]) -> list[Batch | None]:
            return [await self.store.get_batch(i) for i in ids]

        return await _newest_first(
            owner.tenant, size, token, self.store.list_batch_ids, batches, self.store.forget_batches
        )

    async def list_files(self, owner: Owner, size: int, token: str, purpose: str = "") -> Page[StoredFile]:
        """A page of the owner's stored files, newest first, without their content (only those of
        ``purpose`` when given). The page token is the id of the last file shown.

        Raises:
            InvalidArgument: ``size`` out of range, or a token that is not a file id.
        """

        async def described(ids: list[str]) -> list[StoredFile | None]:
            got = await self.store.files_without_content(ids)
            # Another purpose's file is skipped, not forgotten: only a missing one is dropped.
            return [f if f is None or not purpose or f.purpose == purpose else _SKIP for f in got]

        page = await _newest_first(
            owner.tenant, size, token, self.store.list_file_ids, described, self.store.forget_files
        )
        return Page([f for f in page.items if f is not _SKIP], page.next_page_token)

    async def cancel_batch(self, owner: Owner, batch_id: str) -> Batch:
        """Cancels every item not yet ended.

        Raises:
            NotFound: No such batch for this tenant.
            FailedPrecondition: Every item had already ended.
        """
        batch = await self.get_batch(owner, batch_id)
        if batch.done:
            raise FailedPrecondition(
                f"batch jobbatches/{batch_id} already finished; there is nothing left to cancel",
                reason="BATCH_ALREADY_DONE",
            )
        await self.store.set_cancel_requested(batch_id)
        pos = 0
        while ids := await self.store.batch_ids(batch_id, pos, 500):
            pos += len(ids)
            for job_id in ids:
                await self._cancel_one(job_id)
        return await self.get_batch(owner, batch_id)

    # -- files ----------------------------------------------------------------------------------

    async def create_file(self, owner: Owner, filename: str, purpose: str, content: bytes) -> StoredFile:
        """Stores a file for the retention.

        Raises:
            InvalidArgument: Empty, over the size limit, or a filename over 256 characters.
        """
        if not content:
            raise InvalidArgument("the file is empty", [("content", "empty")])
        if len(content) > self.cfg.max_file_bytes:
            raise InvalidArgument(
                f"the file has {len(content)} bytes; the limit is {self.cfg.max_file_bytes}",
                [("content", f"more than {self.cfg.max_file_bytes} bytes")],
                reason="FILE_TOO_LARGE",
                metadata={"limit": str(self.cfg.max_file_bytes)},
            )
        if len(filename) > 256 or len(purpose) > 64:
            raise InvalidArgument("filename is at most 256 characters, purpose 64", [("filename", "too long")])
        f = StoredFile(new_id(), owner.tenant, filename, purpose, len(content), self.clock(), content)
        await self.store.put_file(f, self.retention_ms)
        return StoredFile(f.id, f.tenant, f.filename, f.purpose, f.size_bytes, f.created_ms)

    async def get_file(self, owner: Owner, file_id: str) -> StoredFile:
        """The owner's file with its content.

        Raises:
            NotFound: No such file of the owner's (another tenant's reads as missing).
        """
        f = await self.store.get_file(file_id)
        if f is None or f.tenant != owner.tenant:
            raise _file_not_found(file_id)
        return f

    async def delete_file(self, owner: Owner, file_id: str) -> None:
        """Deletes the owner's file now.

        Raises:
            NotFound: No such file of the owner's.
        """
        # Its description only: whose file it is, without reading its content back.
        (f,) = await self.store.files_without_content([file_id])
        if f is None or f.tenant != owner.tenant:
            raise _file_not_found(file_id)
        await self.store.delete_file(owner.tenant, file_id)


def _file_not_found(file_id: str) -> NotFound:
    message = f"file files/{file_id} does not exist (or was removed after the retention)"
    return NotFound(message, reason="FILE_NOT_FOUND")


async def _newest_first(
    tenant: str,
    size: int,
    token: str,
    ids_before: Callable[[str, str, int], Awaitable[list[str]]],
    fetch: Callable[[list[str]], Awaitable[list[Any]]],
    forget: Callable[[str, Sequence[str]], Awaitable[None]],
) -> Page[Any]:
    """A page of a tenant's time-ordered index (batches, files), newest first, whose token is the id
    of the last item shown. Ids whose item the retention removed (``fetch`` gives None) are dropped
    from the index as they are met; at most ``_SCAN_LIMIT`` ids are read per page.

    Raises:
        InvalidArgument: ``size`` out of range, or a token that is not an id.
    """
    size = page_size(size)
    if token and not _ID.match(token):
        raise InvalidArgument(
            "page_token is not one this list returned: pass next_page_token unchanged",
            [("page_token", "not a token of this list")],
        )
    found: list[tuple[str, Any]] = []
    before = token
    scanned = 0
    while len(found) <= size and scanned < _SCAN_LIMIT:
        ids = await ids_before(tenant, before, size + 1)
        if not ids:
            break
        scanned += len(ids)
        got = await fetch(ids)
        await forget(tenant, [i for i, item in zip(ids, got, strict=True) if item is None])
        found += [(i, item) for i, item in zip(ids, got, strict=True) if item is not None]
        before = ids[-1]
    if len(found) > size:
        return Page([item for _, item in found[:size]], found[size - 1][0])
    return Page([item for _, item in found], before if scanned >= _SCAN_LIMIT else "")
