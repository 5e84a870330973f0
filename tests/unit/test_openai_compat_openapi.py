"""The OpenAPI document: valid, and it lists every public route there is."""

from __future__ import annotations

import schemathesis
from google.api import annotations_pb2
from starlette.routing import Route

from tollway.gateway import validation
from tollway.gateway.v1 import gateway_pb2
from tollway.openai_compat import openapi
from tollway.openai_compat.service import OpenAICompatApp


def test_the_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(openapi.document())
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert ("POST", "/v1/chat/completions") in operations and ("POST", "/v1/generate") in operations


def test_every_rpc_with_an_http_rule_is_described() -> None:
    paths = openapi.document()["paths"]
    for method in gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb in paths[getattr(rule, verb)], method.full_name


def test_every_route_of_the_app_but_health_is_described() -> None:
    paths = openapi.document()["paths"]
    app = OpenAICompatApp("127.0.0.1:1", 1024).app
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path != "/healthz":
            assert {m.lower() for m in route.methods or ()} - {"head"} <= set(paths[route.path]), route.path


def test_native_bodies_follow_the_transcoder() -> None:
    schemas = openapi.document()["components"]["schemas"]
    request = schemas["tollway.gateway.v1.CompleteRequest.Input"]["properties"]
    assert request["max_tokens"]["format"] == "int32" and request["max_tokens"]["nullable"]
    assert {"type": "string", "pattern": "^-?[0-9]+$"} in request["seed"]["anyOf"]  # int64: a string too
    reply = schemas["tollway.gateway.v1.CompleteResponse"]
    assert reply["properties"]["latency_ms"] == {"type": "string", "pattern": "^-?[0-9]+$"}
    assert "usage" not in reply["required"] and "text" in reply["required"]


def test_value_rules_are_the_gateways() -> None:
    rules, limits = openapi.VALUE_RULES, validation.Limits()
    assert openapi.ROLES == validation.ROLES
    assert rules["max_tokens"]["maximum"] == validation.MAX_TOKENS_LIMIT
    assert rules["messages"]["maxItems"] == limits.max_messages
    assert rules["request_id"]["pattern"] == validation._REQUEST_ID.pattern
    edges = {
        "model": ("x" * 128, "x" * 129),
        "temperature": (2.0, 2.01),
        "top_p": (1.0, 0.0),
        "stop": (["x" * 64] * 4, ["x" * 65]),
        "user": ("u" * 128, "u" * 129),
        "feature": ("f" * 64, "f" * 65),
    }
    for name, (ok, bad) in edges.items():
        base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert not validation.validate(gateway_pb2.GenerateRequest(**{**base, name: ok}), limits), name
        assert validation.validate(gateway_pb2.GenerateRequest(**{**base, name: bad}), limits), name
