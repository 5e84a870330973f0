"""Every public HTTP route, driven by schemathesis from the served ``/openapi.json`` through Envoy
against the real stack: generated valid and invalid requests never get a 5xx, and every answer
matches the document (status, content type, body schema).

Bounded: MAX_EXAMPLES generated cases per route and mode, on top of schemathesis's coverage
cases (boundaries, wrong types, missing fields), so the whole file runs in seconds.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tollway.launcher.stack import Stack
from tollway.openai_compat import openapi

MAX_EXAMPLES = 15
# Models of the test catalog that answer normally; valid requests name one, so they reach the
# cache, the router and a provider. (Others fail on purpose, and the local model is not started.)
ANSWERING_MODELS = ["fake-ok", "fake-words-20"]

pytestmark = pytest.mark.timeout(120)


def _answering_models_only(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document["components"]["schemas"]
    for name in ("tollway.gateway.v1.GenerateRequest.Input", "tollway.gateway.v1.CompleteRequest.Input"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": ANSWERING_MODELS}
    schemas["openai.ChatCompletionRequest"]["properties"]["model"] = {"type": "string", "enum": ANSWERING_MODELS}
    return document


# Built in-process, not fetched: pytest collects the routes before the stack starts. The test
# below checks that the stack serves this same document.
schema = schemathesis.openapi.from_dict(
    _answering_models_only(openapi.document()),
    config=SchemathesisConfig.from_dict(
        {"request-timeout": 30, "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"}}
    ),
)


def test_the_stack_serves_this_document(stack: Stack) -> None:
    assert httpx.get(stack.edge_url + openapi.PATH, timeout=10).json() == openapi.document()


@schema.parametrize()
def test_generated_requests_never_get_a_server_error(case: schemathesis.Case, stack: Stack, api_key: str) -> None:
    case.call_and_validate(
        base_url=stack.edge_url,
        headers={"authorization": f"Bearer {api_key}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )
