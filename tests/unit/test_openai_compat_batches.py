"""OpenAI's batch surface without servers: the JSONL input checks (each refusal names its line), the
multipart upload, and the batch and result objects."""

from __future__ import annotations

import json

import pytest

from tollway.gateway.v1 import gateway_pb2
from tollway.jobs.v1 import jobs_pb2
from tollway.openai_compat import batches, files
from tollway.openai_compat.errors import ApiError


def line(i: int, **over: object) -> bytes:
    doc = {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 7},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_a_good_file_becomes_requests_in_order() -> None:
    items = batches.parse_input(b"\n".join([line(0), b"", line(1)]) + b"\n")
    assert [cid for cid, _ in items] == ["r0", "r1"]
    req = items[1][1]
    assert (req.model, req.max_tokens, req.messages[0].content) == ("m", 7, "q1")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (line(0) + b"\n{oops", "line 2: not a JSON object"),
        (line(0) + b"\n[1, 2]", "line 2: not a JSON object"),
        (line(0, custom_id=""), "line 1: custom_id"),
        (line(0) + b"\n" + line(0), "line 2: custom_id 'r0' is used twice"),
        (line(0, method="GET"), "line 1: method"),
        (line(0, url="/v1/embeddings"), "line 1: url '/v1/embeddings' is not supported"),
        (line(0, body=[]), "line 1: body must be a JSON object"),
        (line(0, body={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}), "body.stream"),
        (line(0, body={"model": 5, "messages": []}), "line 1: 'model' must be a string"),
        (b"\n\n", "no requests"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(content: bytes, expected: str) -> None:
    with pytest.raises(ApiError) as err:
        batches.parse_input(content)
    assert err.value.status == 400
    assert expected in err.value.message
    assert err.value.param == "input_file_id"


def test_the_line_limit_is_named() -> None:
    content = b"\n".join(line(i) for i in range(4))
    with pytest.raises(ApiError) as err:
        batches.parse_input(content, max_lines=3)
    assert "line 4" in err.value.message
    assert "at most 3 requests" in err.value.message


def test_a_multipart_upload_is_read() -> None:
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "content-type: application/octet-stream\r\n\r\n"
        ).encode()
        + line(0)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    filename, purpose, content = files.parse_upload(f"multipart/form-data; boundary={boundary}", body)
    assert (filename, purpose, content) == ("in.jsonl", "batch", line(0))
    with pytest.raises(ApiError, match="multipart/form-data"):
        files.parse_upload("application/json", b"{}")
    no_file = f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{boundary}--\r\n'
    with pytest.raises(ApiError, match="no 'file' field"):
        files.parse_upload(f"multipart/form-data; boundary={boundary}", no_file.encode())


def test_ids_map_both_ways_and_derived_files_are_not_stored_ones() -> None:
    ident = "01a2496a7fc933dde4bc12"
    assert files.file_id(f"files/{ident}") == f"file-{ident}"
    assert files.file_name(f"file-{ident}") == f"files/{ident}"
    assert batches.batch_name(batches.batch_id(f"jobbatches/{ident}")) == f"jobbatches/{ident}"
    with pytest.raises(ApiError):
        batches.batch_name("batch_abc")
    for bad in ("abc", "file-", "file-abc", files.OUTPUT_PREFIX + ident):
        with pytest.raises(ApiError) as err:
            files.file_name(bad)
        assert err.value.status == 404


def test_batch_status_and_counts() -> None:
    b = jobs_pb2.Batch(name="jobbatches/abc", total_count=3, succeeded_count=1, failed_count=1)
    doc = batches.batch_json(b)
    assert (doc["id"], doc["object"], doc["status"]) == ("batch_abc", "batch", "in_progress")
    assert doc["request_counts"] == {"total": 3, "completed": 1, "failed": 1}
    assert doc["output_file_id"] is None
    b.done, b.cancelled_count, b.cancel_requested = True, 1, True
    b.end_time.FromSeconds(100)
    doc = batches.batch_json(b)
    assert doc["status"] == "cancelled"
    assert doc["cancelled_at"] == 100
    assert doc["output_file_id"] == files.OUTPUT_PREFIX + "abc"
    assert doc["error_file_id"] == files.ERROR_PREFIX + "abc"
    assert doc["request_counts"]["failed"] == 2


def test_result_lines() -> None:
    ok = jobs_pb2.Job(name="jobs/j1", metadata=jobs_pb2.JobMetadata(custom_id="c1"))
    ok.response.CopyFrom(gateway_pb2.CompleteResponse(request_id="job-j1", model="m", text="hi"))
    out = batches.result_line(ok)
    assert (out["id"], out["custom_id"], out["response"]["status_code"]) == ("batch_req_j1", "c1", 200)
    assert out["response"]["body"]["choices"][0]["message"]["content"] == "hi"
    failed = jobs_pb2.Job(
        name="jobs/j2", metadata=jobs_pb2.JobMetadata(custom_id="c2", state=jobs_pb2.JOB_STATE_FAILED)
    )
    failed.error.code, failed.error.message = 5, "model 'x' is not in the model catalog"
    out = batches.result_line(failed)
    assert out["response"]["status_code"] == 404
    assert "model 'x'" in out["response"]["body"]["error"]["message"]
    cancelled = jobs_pb2.Job(name="jobs/j3", metadata=jobs_pb2.JobMetadata(state=jobs_pb2.JOB_STATE_CANCELLED))
    assert batches.result_line(cancelled)["error"]["code"] == "batch_cancelled"
