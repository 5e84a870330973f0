"""The jobs service's values: a job, a batch, a stored file, as plain data.

A job's request and answer are kept as the serialised protos (GenerateRequest, CompleteResponse):
the domain never looks inside them, it only carries them from the submit to the worker and from the
worker to the reader.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time

from tollway.mesh.frozen import frozen


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


# google.rpc.Code numbers a job's error may carry without importing grpc here.
CODE_CANCELLED = 1


_last_id = [0, 0]  # the last (millisecond, sequence) this process handed out


def new_id() -> str:
    """A job, batch or file id that sorts by creation time: 12 hex digits of Unix milliseconds, 4 of
    a sequence within that millisecond in this process, then 6 random hex digits (listing newest
    first is then a reverse lexicographic range, and ids made in one millisecond keep their order)."""
    ms = int(time.time() * 1000)
    last_ms, seq = _last_id
    if ms <= last_ms:
        ms, seq = last_ms, seq + 1
        if seq > 0xFFFF:
            ms, seq = last_ms + 1, 0
    else:
        seq = 0
    _last_id[:] = [ms, seq]
    return f"{ms:012x}{seq:04x}{os.urandom(3).hex()}"


@frozen
class Owner:
    """Who submitted a job: the key's tenant and id, and the key's SHA-256 (never the key)."""

    tenant: str
    key_id: str
    key_sha256: str = ""
    default_priority: int = 0


@frozen
class JobError:
    """Why a job ended without an answer: a google.rpc code, a message and a stable reason."""

    code: int
    message: str
    reason: str


@frozen
class Delivery:
    """One webhook delivery attempt."""

    attempt_ms: int
    http_status: int
    error: str


@frozen
class Job:
    """A job as stored.

    Attributes:
        id: The id (the name is ``jobs/<id>``).
        owner: Who submitted it.
        state: Where it is in its life.
        request: The serialised GenerateRequest.
        model: The request's model, for listings.
        priority: The gateway Priority number it runs at.
        webhook_url: Where it is delivered when done ("" for nowhere).
        batch_id: Its batch ("" for none); ``batch_index`` its position there.
        custom_id: The client's label for a batch item.
        created_ms, started_ms, ended_ms, expire_ms: Unix milliseconds (0: not yet).
        attempts: Times a worker started it.
        response: The serialised CompleteResponse once it succeeded.
        error: Why it failed or that it was cancelled.
        webhook_state: "", "pending", "delivered" or "dead_lettered".
        deliveries: Webhook attempts, oldest first.
    """

    id: str
    owner: Owner
    state: State
    request: bytes
    model: str
    priority: int
    webhook_url: str = ""
    batch_id: str = ""
    batch_index: int = 0
    custom_id: str = ""
    created_ms: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    expire_ms: int = 0
    attempts: int = 0
    response: bytes = b""
    error: JobError | None = None
    webhook_state: str = ""
    deliveries: tuple[Delivery, ...] = ()


@frozen
class NewJob:
    """What a submit gives for one job (a batch gives one per item)."""

    request: bytes
    model: str
    priority: int
    custom_id: str = ""
    lane: str = "batch"  # the queue it waits in: "main" (interactive, normal) or "batch"
    # What the submit-time check reads of the request (the gateway checks the rest when the job runs).
    message_count: int = 0
    has_prompt_ref: bool = False


@frozen
class Batch:
    """A batch as stored; the counts are of items that reached each end."""

    id: str
    tenant: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    created_ms: int
    ended_ms: int = 0
    expire_ms: int = 0
    cancel_requested: bool = False
    input_file: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.succeeded + self.failed + self.cancelled >= self.total


@frozen
class StoredFile:
    """A stored file; ``content`` is empty unless it was asked for."""

    id: str
    tenant: str
    filename: str
    purpose: str
    size_bytes: int
    created_ms: int
    content: bytes = b""
