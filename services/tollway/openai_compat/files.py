"""OpenAI's Files API, as much of it as batches need: upload (``purpose=batch``), get, content.

Files are kept by the jobs service (``tollway.jobs.v1`` CreateFile/GetFile) for its retention. A
batch's output and error files are not stored: their ids name the batch (``file-batchout-<id>``,
``file-batcherr-<id>``) and their JSONL is written from the batch's items when it is read.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from typing import Any

from tollway.jobs.v1 import jobs_pb2
from tollway.openai_compat.errors import ApiError

PURPOSES = ("batch", "batch_output")
OUTPUT_PREFIX = "file-batchout-"
# The jobs service's ids (time-ordered hex); anything else names nothing there.
ID = re.compile(r"[0-9a-f]{22}")
ERROR_PREFIX = "file-batcherr-"


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param)


def parse_upload(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    """(filename, purpose, content) of a ``multipart/form-data`` upload with fields ``file`` and
    ``purpose``, as OpenAI's SDKs send it.

    Raises:
        ApiError: 400 naming what is missing or wrong.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise _bad(f"upload a file as multipart/form-data with fields 'file' and 'purpose', not {content_type!r}")
    # The stdlib's MIME parser reads form data: prefix the header that names the boundary.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"content-type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise _bad("the multipart body could not be read: check its boundary")
    filename, purpose, content = "", "", None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "purpose":
            purpose = (part.get_payload(decode=True) or b"").decode("utf-8", "replace").strip()
        elif name == "file":
            content = part.get_payload(decode=True) or b""
            filename = part.get_filename() or "upload.jsonl"
    if content is None:
        raise _bad("the upload has no 'file' field", "file")
    if purpose not in PURPOSES:
        raise _bad(f"purpose {purpose!r} is not supported here; use 'batch'", "purpose")
    return filename, purpose, content


def file_id(name: str) -> str:
    """OpenAI's id of a stored file (``files/<id>`` -> ``file-<id>``)."""
    return "file-" + name.removeprefix("files/")


def file_name(openai_id: str) -> str:
    """The jobs service's name of a stored file's OpenAI id.

    Raises:
        ApiError: 404 for an id that names no stored file.
    """
    ident = openai_id.removeprefix("file-")
    if openai_id.startswith((OUTPUT_PREFIX, ERROR_PREFIX)) or not ID.fullmatch(ident):
        raise ApiError(404, f"no such file: {openai_id}", "invalid_request_error", param="file_id")
    return f"files/{ident}"


def file_json(f: jobs_pb2.File) -> dict[str, Any]:
    return {
        "id": file_id(f.name),
        "object": "file",
        "bytes": f.size_bytes,
        "created_at": f.create_time.seconds,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }


def derived_file_json(openai_id: str, created_at: int, size: int) -> dict[str, Any]:
    """The file object of a batch's output or error file."""
    return {
        "id": openai_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": ("batch_output.jsonl" if openai_id.startswith(OUTPUT_PREFIX) else "batch_errors.jsonl"),
        "purpose": "batch_output",
        "status": "processed",
        "status_details": None,
    }
