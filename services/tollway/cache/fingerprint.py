"""Builds the cache's request fields from a gateway request (for the gateway to call).

``key_fields(generate_request)`` returns the keyword arguments every LookupRequest and
StoreRequest needs besides the tenant, the embedding and (for a store) the answer::

    fields = key_fields(request, prompt_template=t, prompt_version=v)
    lookup = cache_pb2.LookupRequest(tenant_id=tenant, embedding=vec, embedding_model=mid, **fields)
    store = cache_pb2.StoreRequest(tenant_id=tenant, embedding=vec, embedding_model=mid, text=..., **fields)

The fingerprint is filled by copying every field whose name the gateway request and
RequestFingerprint share, so a parameter added to both is hashed without a code change;
``tests/unit/test_cache_keys.py`` checks that each field listed in
``tollway.cache.keys.GENERATE_INCLUDE`` changes the key and each in GENERATE_EXCLUDE does not.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tollway.cache.v1 import cache_pb2

_FINGERPRINT_FIELDS = cache_pb2.RequestFingerprint.DESCRIPTOR.fields_by_name


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def fingerprint_from(
    request: Message, *, prompt_template: str = "", prompt_version: str = ""
) -> cache_pb2.RequestFingerprint:
    """The RequestFingerprint of a GenerateRequest or CompleteRequest (any message, in fact).

    Args:
        request: The request, after prompt resolution (its messages are what the model sees).
        prompt_template: The template the messages were rendered from, if any.
        prompt_version: The exact template version used (never a label).
    """
    fp = cache_pb2.RequestFingerprint(prompt_template=prompt_template, prompt_version=prompt_version)
    for field in request.DESCRIPTOR.fields:
        target = _FINGERPRINT_FIELDS.get(field.name)
        if target is None or target.type != field.type or _is_repeated(target) != _is_repeated(field):
            continue
        value = getattr(request, field.name)
        if _is_repeated(field):
            getattr(fp, field.name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if request.HasField(field.name):
                getattr(fp, field.name).CopyFrom(value)
        elif field.has_presence:
            if request.HasField(field.name):
                setattr(fp, field.name, value)
        else:
            setattr(fp, field.name, value)
    return fp


def key_fields(request: Message, *, prompt_template: str = "", prompt_version: str = "") -> dict[str, Any]:
    """namespace, user_id, mode and fingerprint for a LookupRequest or StoreRequest.

    Args:
        request: A tollway.gateway.v1.GenerateRequest or CompleteRequest.
        prompt_template: The template the messages were rendered from, if any.
        prompt_version: The exact template version used.
    """
    policy = request.cache_policy  # type: ignore[attr-defined]
    return {
        "namespace": policy.namespace,
        "user_id": request.user,  # type: ignore[attr-defined]
        "mode": policy.mode,
        "fingerprint": fingerprint_from(request, prompt_template=prompt_template, prompt_version=prompt_version),
    }
