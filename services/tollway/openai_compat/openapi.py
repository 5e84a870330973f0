"""The OpenAPI 3 description of Tollway's public HTTP API, served at ``/openapi.json``.

Two surfaces share the edge, and this module is the one place that describes both:

- the native JSON/SSE API is generated from ``GatewayService``'s descriptors: the paths and
  verbs from its ``google.api.http`` options, the bodies from its messages as Envoy's
  transcoder reads and prints them (proto field names, int64 as a string on the way out,
  enums by name, every primitive field present), so a new RPC or field appears here with no
  edit. Errors are ``google.rpc.Status`` JSON.
- the OpenAI API is written here: the part of Chat Completions and Models that
  ``tollway.openai_compat.translate`` reads and writes. Errors are OpenAI's error object.

Value rules (lengths, ranges, roles) are the gateway's; the schemas give types and the
limits of the proto fields, which is what the edge itself enforces.
"""

from __future__ import annotations

import copy
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor

from tollway.gateway.v1 import gateway_pb2

PATH = "/openapi.json"

_REF = "#/components/schemas/"
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_INT64 = {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}

# Scalar proto types -> JSON Schema, as the proto3 JSON mapping has them.
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
}
_64_BIT = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}


# The gateway's value checks (tollway.gateway.validation, with its default Limits) on the request
# fields both surfaces carry; tests/unit/test_openai_compat_openapi.py holds them to the gateway's.
ROLES = ("system", "user", "assistant", "tool")
VALUE_RULES: dict[str, dict[str, Any]] = {
    "model": {"minLength": 1, "maxLength": 128, "pattern": "\\S"},
    "messages": {"minItems": 1, "maxItems": 512},
    "max_tokens": {"minimum": 0, "maximum": 32768},
    "temperature": {"minimum": 0, "maximum": 2},
    "top_p": {"minimum": 0, "exclusiveMinimum": True, "maximum": 1},
    "stop": {"maxItems": 4, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
    "user": {"maxLength": 128},
    "feature": {"maxLength": 64},
    "request_id": {"pattern": "^[A-Za-z0-9._:-]{1,64}$"},
}
# Request messages whose `model` and `messages` must be set (proto3 cannot say so itself).
_CHAT_REQUESTS = ("tollway.gateway.v1.GenerateRequest", "tollway.gateway.v1.CompleteRequest")
# google.protobuf.Struct is any JSON object in the proto3 JSON mapping, not its message form.
_JSON_OBJECT = {"type": "object", "additionalProperties": True}


def _messages_or_prompt(prompt_ref: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat request holds at least one message, or a ``prompt_ref`` (non-null) that brings them."""
    return [
        {"required": ["messages"], "properties": {"messages": {"minItems": 1}}},
        {"required": ["prompt_ref"], "properties": {"prompt_ref": prompt_ref}},
    ]


def _chat_message(content: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A chat turn: content may be empty (or null) only in an assistant turn."""
    return {
        "type": "object",
        "properties": {"role": {"type": "string", "enum": list(ROLES)}, "content": content, **extra},
        "required": ["role"],
        "anyOf": [
            {"properties": {"role": {"enum": ["assistant"]}}},
            {
                "properties": {"role": {"enum": [r for r in ROLES if r != "assistant"]}, "content": {"minLength": 1}},
                "required": ["content"],
            },
        ],
    }


class _Schemas:
    """Component schemas of proto messages, one per message and direction.

    The transcoder reads more than it writes (an int64 as a number or a string, an enum by
    name or number, ``null`` for a default), so a message read from a client and one written
    to it get different schemas.
    """

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, message: Descriptor, output: bool) -> dict[str, str]:
        name = message.full_name if output else message.full_name + ".Input"
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = self._message(message, output)
        return {"$ref": _REF + name}

    def _message(self, message: Descriptor, output: bool) -> dict[str, Any]:
        properties = {f.name: self._field(f, output) for f in message.fields}
        if not output and message.full_name == "tollway.common.v1.Message":
            return _chat_message(properties.pop("content"), properties)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if not output and message.full_name in _CHAT_REQUESTS:
            for name, rules in VALUE_RULES.items():
                properties[name] = {**properties[name], **rules}
            for name in ("model", "messages"):
                properties[name].pop("nullable")
            # At least one message, unless a prompt_ref brings them.
            properties["messages"].pop("minItems")
            schema["required"] = ["model"]
            schema["anyOf"] = _messages_or_prompt(properties["prompt_ref"]["anyOf"][0])
        if output:
            # always_print_primitive_fields: every field but messages and oneof members is printed.
            required = [
                f.name
                for f in message.fields
                if f.containing_oneof is None and (f.type != FieldDescriptor.TYPE_MESSAGE or _repeated(f))
            ]
            if required:
                schema["required"] = required
        return schema

    def _field(self, field: FieldDescriptor, output: bool) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Struct":
            item: dict[str, Any] = dict(_JSON_OBJECT)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            item = self.ref(field.message_type, output)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            item = _enum(field.enum_type, output)
        elif field.type in _64_BIT:
            # 64-bit integers are JSON strings on the way out; either form is read.
            digits = {"type": "string", "pattern": "^-?[0-9]+$"}
            item = digits if output else {"anyOf": [_INT64, digits]}
        else:
            item = dict(_SCALARS[field.type])
        schema = {"type": "array", "items": item} if _repeated(field) else item
        if not output and _repeated(field) and field.type != FieldDescriptor.TYPE_MESSAGE:
            # The transcoder also reads one scalar as a list of one ("stop": "END").
            schema = {"anyOf": [schema, item]}
        if not output:
            # The proto3 JSON mapping reads null as "the default".
            schema = {"anyOf": [schema, {"type": "null"}]} if "$ref" in schema else {**schema, "nullable": True}
        return schema


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _enum(enum: EnumDescriptor, output: bool) -> dict[str, Any]:
    names = [v.name for v in enum.values]
    if output:
        return {"type": "string", "enum": names}
    return {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": [v.number for v in enum.values]}]}


# One Server-Sent Event of a stream; `data` is one JSON object (the method's response message).
_SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}

_STATUS = {
    "type": "object",
    "description": "A google.rpc.Status: the gRPC code, a message, and details such as BadRequest and ErrorInfo.",
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}}},
    },
    "required": ["code", "message"],
}


def _native_paths(service: ServiceDescriptor, schemas: _Schemas) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb in ("get", "post"), f"{method.full_name}: add {verb} to the OpenAPI generator"
        path = getattr(rule, verb)
        streams = method.server_streaming
        reply = schemas.ref(method.output_type, output=True)
        op: dict[str, Any] = {
            "operationId": f"{service.name}.{method.name}",
            "summary": f"{service.full_name}.{method.name} over HTTP (see protos/tollway/gateway/v1/gateway.proto).",
            "tags": ["native"],
            "responses": {
                "200": {
                    "description": f"Server-Sent Events, one {method.output_type.name} JSON object each."
                    if streams
                    else "The answer.",
                    "content": {"text/event-stream": {"schema": _SSE_EVENT}}
                    if streams
                    else {"application/json": {"schema": reply}},
                },
                "default": {"description": "An error.", "content": {"application/json": {"schema": _STATUS}}},
            },
        }
        if rule.body == "*":
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas.ref(method.input_type, output=False)}},
            }
        else:
            assert not method.input_type.fields, f"{method.full_name}: query parameters are not described yet"
        paths[path] = {verb: op}
    return paths


# -- The OpenAI surface (written by hand: what translate.py reads and writes) ------------------

_OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}

_CHAT_MESSAGE = _chat_message(
    # A list of parts is joined; an empty list is empty content.
    {"nullable": True, "anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": _REF + "openai.TextPart"}}]},
    {"name": {"type": "string", "nullable": True}},
)

_PROMPT_REF = {
    "type": "object",
    "description": "Tollway's extension (OpenAI SDKs: `extra_body`): a template of the prompt store, whose "
    "rendered messages go before `messages` and whose parameters fill in the ones the request leaves unset. "
    "Name a label or a version, not both; neither means the `production` label.",
    "properties": {
        "template": {"type": "string", "description": "The template's id."},
        "label": {"type": "string", "nullable": True},
        "version": {**_INT64, "minimum": 1, "nullable": True},
        "variables": {**_JSON_OBJECT, "nullable": True, "description": "Checked against the version's schema."},
    },
    "required": ["template"],
    "additionalProperties": False,
}

_CHAT_REQUEST = {
    "type": "object",
    "description": "OpenAI's chat-completions request; other OpenAI fields are not read.",
    "properties": {
        "model": {"type": "string", **VALUE_RULES["model"], "description": "A model from GET /v1/models, or 'auto'."},
        "messages": {
            "type": "array",
            **{k: v for k, v in VALUE_RULES["messages"].items() if k != "minItems"},
            "items": {"$ref": _REF + "openai.ChatMessage"},
            "description": "At least one message, unless `prompt_ref` brings them.",
        },
        "prompt_ref": {"anyOf": [{"$ref": _REF + "openai.PromptRef"}, {"type": "null"}]},
        "max_tokens": {**_INT32, **VALUE_RULES["max_tokens"], "nullable": True},
        "max_completion_tokens": {
            **_INT32,
            **VALUE_RULES["max_tokens"],
            "nullable": True,
            "description": "Wins over max_tokens.",
        },
        "temperature": {"type": "number", **VALUE_RULES["temperature"], "nullable": True},
        "top_p": {"type": "number", **VALUE_RULES["top_p"], "nullable": True},
        "stop": {
            "nullable": True,
            "anyOf": [VALUE_RULES["stop"]["items"], {"type": "array", **VALUE_RULES["stop"]}],
        },
        "seed": {**_INT64, "nullable": True},
        "user": {"type": "string", **VALUE_RULES["user"], "nullable": True},
        "metadata": {
            "type": "object",
            "nullable": True,
            "properties": {"feature": {"type": "string", **VALUE_RULES["feature"]}},
            "additionalProperties": {"type": "string"},
            "description": "`feature` is the cost-attribution label.",
        },
        "n": {"type": "integer", "enum": [1], "nullable": True},
        "stream": {"type": "boolean", "nullable": True},
        "stream_options": {
            "type": "object",
            "nullable": True,
            "properties": {"include_usage": {"type": "boolean", "nullable": True}},
        },
    },
    "required": ["model"],
    "anyOf": _messages_or_prompt({"$ref": _REF + "openai.PromptRef"}),
}

_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
    },
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}

_COMPLETION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {"role": {"type": "string"}, "content": {"type": "string", "nullable": True}},
                        "required": ["role", "content"],
                    },
                    "finish_reason": {"type": "string"},
                },
                "required": ["index", "message", "finish_reason"],
            },
        },
        "usage": {"$ref": _REF + "openai.Usage"},
    },
    "required": ["id", "object", "created", "model", "choices"],
}

_MODEL_LIST = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "object": {"type": "string", "enum": ["model"]},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                },
                "required": ["id", "object", "created", "owned_by"],
            },
        },
    },
    "required": ["object", "data"],
}


def _openai_error_response() -> dict[str, Any]:
    return {"description": "An error.", "content": {"application/json": {"schema": {"$ref": _REF + "openai.Error"}}}}


def _request_header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional request header of the OpenAI surface (Tollway's extensions to OpenAI's body)."""
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


_TOLLWAY_HEADERS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("x-tollway-request-id", "The gateway's id of the request."),
        ("x-tollway-provider", "The provider that answered."),
        ("x-tollway-cache-tier", "none, miss, exact, semantic or stale."),
        ("x-tollway-degraded", "true when a stale answer was served because every provider failed."),
        ("x-tollway-model", "The model that answered."),
        ("x-tollway-fallback", "The models tried and left before it, joined by ' > ', or 'none'."),
        ("x-tollway-prompt-template", "With prompt_ref: the template the messages were rendered from."),
        ("x-tollway-prompt-version", "With prompt_ref: the version used (a number, never a label)."),
        ("x-tollway-prompt-resolution", "With prompt_ref: why that version (version, tenant_pin, variant, label)."),
    )
}

_OPENAI_PATHS: dict[str, Any] = {
    "/v1/chat/completions": {
        "post": {
            "operationId": "openai.createChatCompletion",
            "summary": "OpenAI Chat Completions, answered by the gateway; `stream: true` answers Server-Sent Events.",
            "tags": ["openai"],
            "parameters": [
                _request_header(
                    "x-tollway-cache-mode",
                    {"type": "string", "enum": ["default", "bypass", "refresh"]},
                    "How this request uses the response cache.",
                ),
                _request_header("x-tollway-cache-namespace", {"type": "string"}, "The cache namespace."),
                _request_header(
                    "x-tollway-priority",
                    {"type": "string", "enum": ["interactive", "normal", "batch"]},
                    "The request's budget priority (default: the key's, else the plan's).",
                ),
                _request_header("x-tollway-conversation-id", {"type": "string"}, "The conversation, for budgets."),
                _request_header(
                    "x-tollway-allow-fallback",
                    {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
                    "Whether another model than the one asked for may answer.",
                ),
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF + "openai.ChatCompletionRequest"}}},
            },
            "responses": {
                "200": {
                    "description": "The answer, or its chunks as Server-Sent Events ending with `data: [DONE]`.",
                    "headers": _TOLLWAY_HEADERS,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF + "openai.ChatCompletion"}},
                        "text/event-stream": {"schema": _SSE_EVENT},
                    },
                },
                "default": _openai_error_response(),
            },
        }
    },
    "/v1/models": {
        "get": {
            "operationId": "openai.listModels",
            "summary": "The models a request may name, as OpenAI lists them.",
            "tags": ["openai"],
            "responses": {
                "200": {
                    "description": "The model list.",
                    "content": {"application/json": {"schema": {"$ref": _REF + "openai.ModelList"}}},
                },
                "default": _openai_error_response(),
            },
        }
    },
    PATH: {
        "get": {
            "operationId": "openapi",
            "summary": "This description.",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": {}}}},
                "default": _openai_error_response(),
            },
        }
    },
}


def _surface_route(operation: str, summary: str, *, body: bool = True, error: str = "openai.Error") -> dict[str, Any]:
    """A route of the other API surfaces (issue 16), described by its summary: its bodies are the
    API's own (OpenAI or Anthropic), documented by their vendors, and any JSON object is accepted
    for checking (a bad one gets a 400 naming the field)."""
    verb = "post" if body else "get"
    op: dict[str, Any] = {
        "operationId": operation,
        "summary": summary,
        "tags": ["anthropic" if error == "anthropic.Error" else "openai"],
        "responses": {
            "200": {
                "description": "The answer (or Server-Sent Events with `stream: true`).",
                "content": {"application/json": {"schema": {}}, "text/event-stream": {"schema": _SSE_EVENT}},
            },
            "default": {
                "description": "An error, in the API's own shape.",
                "content": {"application/json": {"schema": {"$ref": _REF + error}}},
            },
        },
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _JSON_OBJECT}}}
    return {verb: op}


_ANTHROPIC_ERROR = {
    "type": "object",
    "description": "Anthropic's error object.",
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}

_OPENAI_PATHS.update(
    {
        "/v1/models/{model_id}": {
            "get": {
                **_surface_route("openai.retrieveModel", "One model of the catalog, as OpenAI shows it.", body=False)[
                    "get"
                ],
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        },
        "/v1/embeddings": _surface_route(
            "openai.createEmbedding", "OpenAI embeddings (float or base64), made by the embedding service."
        ),
        "/v1/responses": _surface_route("openai.createResponse", "OpenAI Responses, stateless (store: false)."),
        "/v1/messages": _surface_route(
            "anthropic.createMessage", "Anthropic Messages, answered by the gateway.", error="anthropic.Error"
        ),
        "/v1/messages/count_tokens": _surface_route(
            "anthropic.countTokens", "Anthropic's token count of a Messages request.", error="anthropic.Error"
        ),
    }
)


def _with_path_params(route: dict[str, Any], *names: str) -> dict[str, Any]:
    """``route`` with its path parameters declared."""
    for op in route.values():
        op["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    return route


# OpenAI's Files and Batch APIs over the jobs service (issue 19, tollway.openai_compat.batches).
_FILE_UPLOAD = _surface_route("openai.createFile", "Stores a batch input file (JSONL, checked line by line).")
_FILE_UPLOAD["post"]["requestBody"] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
                "required": ["file", "purpose"],
            }
        }
    },
}
_FILE_CONTENT = _surface_route(
    "openai.retrieveFileContent", "A file's content (a batch's output as JSONL).", body=False
)
_FILE_CONTENT["get"]["responses"]["200"] = {
    "description": "The file's bytes: JSON Lines for batch files.",
    "content": {"application/jsonl": {"schema": {"type": "string"}}},
}
_OPENAI_PATHS.update(
    {
        "/v1/files": {
            **_FILE_UPLOAD,
            **_surface_route(
                "openai.listFiles", "The caller's uploaded files, newest first (purpose, limit, after).", body=False
            ),
        },
        "/v1/files/{file_id}": _with_path_params(
            {
                **_surface_route(
                    "openai.retrieveFile", "A stored file, or a batch's output or error file.", body=False
                ),
                "delete": _surface_route("openai.deleteFile", "Deletes an uploaded file now.", body=False)["get"],
            },
            "file_id",
        ),
        "/v1/files/{file_id}/content": _with_path_params(_FILE_CONTENT, "file_id"),
        "/v1/batches": {
            **_surface_route("openai.createBatch", "Runs every line of an input file as a job of one batch."),
            **_surface_route("openai.listBatches", "The caller's batches, newest first (limit, after).", body=False),
        },
        "/v1/batches/{batch_id}": _with_path_params(
            _surface_route("openai.retrieveBatch", "A batch, with its status and request counts.", body=False),
            "batch_id",
        ),
        "/v1/batches/{batch_id}/cancel": _with_path_params(
            _surface_route("openai.cancelBatch", "Cancels the requests of a batch that have not finished."),
            "batch_id",
        ),
    }
)

# The OpenAI routes, for the message of a 404 on the OpenAI surface.
SERVED = "Tollway's OpenAI API serves " + ", ".join(
    f"{verb.upper()} {path}" for path, ops in _OPENAI_PATHS.items() if path != PATH for verb in ops
)


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of every public HTTP route (a new dict on each call)."""
    schemas = _Schemas()
    paths = _native_paths(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], schemas)
    paths.update(_OPENAI_PATHS)
    schemas.components.update(
        {
            "google.rpc.Status": _STATUS,
            "openai.Error": _OPENAI_ERROR,
            "anthropic.Error": _ANTHROPIC_ERROR,
            "openai.TextPart": _TEXT_PART,
            "openai.ChatMessage": _CHAT_MESSAGE,
            "openai.ChatCompletionRequest": _CHAT_REQUEST,
            "openai.PromptRef": _PROMPT_REF,
            "openai.ChatCompletion": _COMPLETION,
            "openai.Usage": _USAGE,
            "openai.ModelList": _MODEL_LIST,
        }
    )
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "Tollway",
            "version": "1",
            "description": "Tollway's HTTP API at the Envoy edge: the native JSON/SSE API (tag `native`, "
            "transcoded to tollway.gateway.v1.GatewayService) and the OpenAI-compatible API (tag `openai`). "
            "Every call but this document needs `authorization: Bearer <key>`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearerKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerKey": []}],
    }
    # The parts written here are module constants: a caller may change its copy freely.
    return copy.deepcopy(document)
