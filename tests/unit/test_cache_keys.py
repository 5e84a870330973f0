"""The tier-1 key is exhaustive by construction: every request field is classified, and
every INCLUDE field changes the key while every EXCLUDE field does not."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tollway.cache import keys
from tollway.cache.cache import Cache
from tollway.cache.keys import CacheKeyInput, Fingerprint, canonical_json, context_key, exact_key
from tollway.cache.namespaces import NamespaceRegistry
from tollway.cache.scope import Scope
from tollway.cache.service import lookup_from_proto, store_from_proto
from tollway.cache.v1 import cache_pb2
from tollway.common.chat import ChatMessage
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.cache_client import CacheRequest, lookup_request
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2

DIM = 384


def leaf_paths(descriptor: Descriptor, classified: set[str], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every field, descending into sub-messages not classified as a whole."""
    for field in descriptor.fields:
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_MESSAGE and path not in classified:
            yield from leaf_paths(field.message_type, classified, path + ".")
        else:
            yield path


CASES: list[tuple[type[Message], frozenset[str], Mapping[str, str]]] = [
    (cache_pb2.LookupRequest, keys.LOOKUP_INCLUDE, keys.LOOKUP_EXCLUDE),
    (cache_pb2.StoreRequest, keys.STORE_INCLUDE, keys.STORE_EXCLUDE),
    (gateway_pb2.GenerateRequest, keys.GENERATE_INCLUDE, keys.GENERATE_EXCLUDE),
    (gateway_pb2.CompleteRequest, keys.GENERATE_INCLUDE, keys.GENERATE_EXCLUDE),
]


@pytest.mark.parametrize(("message", "include", "exclude"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_every_request_field_is_included_or_excluded(
    message: type[Message], include: frozenset[str], exclude: Mapping[str, str]
) -> None:
    assert not include & set(exclude), "a field cannot be both included and excluded"
    classified = set(include) | set(exclude)
    paths = set(leaf_paths(message.DESCRIPTOR, classified))
    unclassified = paths - classified
    assert not unclassified, (
        f"{message.DESCRIPTOR.full_name} has fields in neither tollway.cache.keys INCLUDE nor EXCLUDE: "
        f"{sorted(unclassified)}. Decide whether each changes the answer."
    )
    stale = classified - paths
    assert not stale, f"INCLUDE/EXCLUDE name fields {message.DESCRIPTOR.full_name} does not have: {sorted(stale)}"


def test_domain_fingerprint_mirrors_the_proto() -> None:
    proto_fields = {f.name for f in cache_pb2.RequestFingerprint.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(Fingerprint)} == proto_fields
    assert set(keys.MESSAGE_KEY_FIELDS) == {f.name for f in common_pb2.Message.DESCRIPTOR.fields}
    assert set(keys.MESSAGE_KEY_FIELDS) <= {f.name for f in dataclasses.fields(ChatMessage)}


def test_generate_parameters_all_reach_the_fingerprint() -> None:
    fingerprint = {f.name for f in cache_pb2.RequestFingerprint.DESCRIPTOR.fields}
    tops = {p.split(".")[0] for p in keys.GENERATE_INCLUDE} - {"user", "cache_policy"}
    assert tops <= fingerprint, f"answer-changing gateway fields missing from RequestFingerprint: {tops - fingerprint}"


# --- mutation: every INCLUDE path changes the key, every EXCLUDE path does not ----------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    path = Path(tmp_path_factory.mktemp("ns")) / "namespaces.yaml"
    path.write_text("namespaces:\n  a: {threshold: 0.9, scope: global}\n  ax: {threshold: 0.9, scope: global}\n")
    return Cache(store=None, namespaces=NamespaceRegistry(path, presets={}), sync=None)  # type: ignore[arg-type]


def _fingerprint() -> cache_pb2.RequestFingerprint:
    return cache_pb2.RequestFingerprint(
        model="m",
        messages=[
            common_pb2.Message(role="system", content="be brief", name="s"),
            common_pb2.Message(role="user", content="hi", name="u"),
        ],
        max_tokens=10,
        stop=["\n"],
        prompt_template="tpl",
        prompt_version="3",
    )


def _lookup() -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(
        namespace="a",
        tenant_id="t",
        user_id="u",
        scope=cache_pb2.SCOPE_USER,
        fingerprint=_fingerprint(),
        embedding=[1.0] * DIM,
        embedding_model="e",
    )


def _store() -> cache_pb2.StoreRequest:
    fields = {f.name: getattr(_lookup(), f.name) for f in cache_pb2.LookupRequest.DESCRIPTOR.fields}
    fields.pop("allow_stale")
    fields.pop("semantic_only")
    return cache_pb2.StoreRequest(
        **fields, text="answer", usage=common_pb2.Usage(input_tokens=1), model="m", document_ids=["d"]
    )


def _generate(cls: type[Message]) -> Message:
    return cls(
        model="m",
        messages=[common_pb2.Message(role="user", content="hi", name="u")],
        max_tokens=10,
        stop=["\n"],
        cache_policy=common_pb2.CachePolicy(namespace="a"),
        user="u",
        feature="f",
        request_id="r",
    )


def _mutate_leaf(msg: Message, field: FieldDescriptor) -> None:
    name = field.name
    if field.is_repeated:
        values = getattr(msg, name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            values.add()
        elif field.type == FieldDescriptor.TYPE_STRING:
            values.append("x")
        elif values:
            values[0] = values[0] + 0.5
        else:
            values.append(1)
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        sub = getattr(msg, name)
        _mutate_leaf(sub, sub.DESCRIPTOR.fields[0])
    elif field.type == FieldDescriptor.TYPE_STRING:
        setattr(msg, name, getattr(msg, name) + "x")
    elif field.type == FieldDescriptor.TYPE_BOOL:
        setattr(msg, name, not getattr(msg, name))
    elif field.type == FieldDescriptor.TYPE_ENUM:
        current = getattr(msg, name)
        setattr(msg, name, next(v.number for v in field.enum_type.values if v.number not in (current, 0)))
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        setattr(msg, name, getattr(msg, name) + 0.5)
    else:
        setattr(msg, name, getattr(msg, name) + 1)


def mutated(base: Message, path: str) -> Message:
    out = type(base)()
    out.CopyFrom(base)
    msg: Message = out
    parts = path.split(".")
    for part in parts[:-1]:
        field = msg.DESCRIPTOR.fields_by_name[part]
        value = getattr(msg, part)
        msg = value[-1] if field.is_repeated else value
    _mutate_leaf(msg, msg.DESCRIPTOR.fields_by_name[parts[-1]])
    return out


def _key(cache: Cache, request: Message) -> str:
    if isinstance(request, cache_pb2.StoreRequest):
        command = store_from_proto(request)
        requester, fp, emb, model = command.requester, command.fingerprint, command.embedding, command.embedding_model
    else:
        if not isinstance(request, cache_pb2.LookupRequest):
            # The gateway's own path: the proto becomes domain values, which become the lookup.
            admitted = request_from_proto(request, Tenant("t", "k"), default_max_tokens=256)  # type: ignore[arg-type]
            request = lookup_request(CacheRequest.of(admitted), [1.0] * DIM, "e")
            request.scope = cache_pb2.SCOPE_USER
        query = lookup_from_proto(request)
        requester, fp, emb, model = query.requester, query.fingerprint, query.embedding, query.embedding_model
    return exact_key(cache._resolve(requester, fp, emb, model)[2])


MUTATION_CASES = [
    ("LookupRequest", _lookup, keys.LOOKUP_INCLUDE, keys.LOOKUP_EXCLUDE),
    ("StoreRequest", _store, keys.STORE_INCLUDE, keys.STORE_EXCLUDE),
    ("GenerateRequest", lambda: _generate(gateway_pb2.GenerateRequest), keys.GENERATE_INCLUDE, keys.GENERATE_EXCLUDE),
    ("CompleteRequest", lambda: _generate(gateway_pb2.CompleteRequest), keys.GENERATE_INCLUDE, keys.GENERATE_EXCLUDE),
]


@pytest.mark.parametrize(("name", "make", "include", "exclude"), MUTATION_CASES, ids=[c[0] for c in MUTATION_CASES])
def test_included_fields_change_the_key_and_excluded_ones_do_not(
    cache: Cache, name: str, make: object, include: frozenset[str], exclude: Mapping[str, str]
) -> None:
    base = make()  # type: ignore[operator]
    base_key = _key(cache, base)
    unchanged = [p for p in sorted(include) if _key(cache, mutated(base, p)) == base_key]
    assert not unchanged, f"{name}: INCLUDE fields that do not reach the key: {unchanged}"
    changed = [p for p in sorted(exclude) if _key(cache, mutated(base, p)) != base_key]
    assert not changed, f"{name}: EXCLUDE fields that change the key: {changed}"


# --- key properties ------------------------------------------------------------------


def _input(scope: Scope = Scope.TENANT, tenant: str = "t", user: str = "u", **fp: object) -> CacheKeyInput:
    fingerprint = Fingerprint(model="m", messages=(ChatMessage("user", "hello"),), **fp)  # type: ignore[arg-type]
    return CacheKeyInput.build(namespace="n", scope=scope, tenant_id=tenant, user_id=user, fingerprint=fingerprint)


def test_key_is_a_stable_sha256() -> None:
    key = exact_key(_input())
    assert key == exact_key(_input())
    assert len(key) == 64 and int(key, 16) >= 0


def test_scope_decides_which_ids_are_in_the_key() -> None:
    assert exact_key(_input(Scope.GLOBAL, tenant="a")) == exact_key(_input(Scope.GLOBAL, tenant="b"))
    assert exact_key(_input(Scope.TENANT, tenant="a")) != exact_key(_input(Scope.TENANT, tenant="b"))
    assert exact_key(_input(Scope.TENANT, user="x")) == exact_key(_input(Scope.TENANT, user="y"))
    assert exact_key(_input(Scope.USER, user="x")) != exact_key(_input(Scope.USER, user="y"))
    assert exact_key(_input(Scope.GLOBAL)) != exact_key(_input(Scope.TENANT))


def test_unset_and_zero_parameters_differ() -> None:
    assert exact_key(_input(temperature=None)) != exact_key(_input(temperature=0.0))
    assert exact_key(_input(temperature=0.0)) == exact_key(_input(temperature=-0.0))
    assert exact_key(_input(seed=None)) != exact_key(_input(seed=0))


def test_new_prompt_version_or_model_is_a_new_key() -> None:
    assert exact_key(_input(prompt_version="1")) != exact_key(_input(prompt_version="2"))
    a, b = _input(), _input()
    b = dataclasses.replace(b, fingerprint=dataclasses.replace(b.fingerprint, model="other"))
    assert exact_key(a) != exact_key(b)


def test_message_boundaries_cannot_be_forged() -> None:
    one = Fingerprint(model="m", messages=(ChatMessage("user", "a b"),))
    two = Fingerprint(model="m", messages=(ChatMessage("user", "a"), ChatMessage("user", "b")))
    build = CacheKeyInput.build
    assert exact_key(build(namespace="n", scope=Scope.GLOBAL, tenant_id="", user_id="", fingerprint=one)) != exact_key(
        build(namespace="n", scope=Scope.GLOBAL, tenant_id="", user_id="", fingerprint=two)
    )


def test_context_key_ignores_the_last_text_and_the_scope_ids_only() -> None:
    def ctx(text: str, tenant: str = "t", model: str = "m", emb: str = "e", history: str = "sys") -> str:
        fp = Fingerprint(model=model, messages=(ChatMessage("system", history), ChatMessage("user", text)))
        key_input = CacheKeyInput.build(namespace="n", scope=Scope.TENANT, tenant_id=tenant, user_id="", fingerprint=fp)
        return context_key(key_input, emb)

    assert ctx("what is x") == ctx("tell me x")
    assert ctx("q", tenant="a") == ctx("q", tenant="b")
    assert ctx("q", model="m1") != ctx("q", model="m2")
    assert ctx("q", emb="e1") != ctx("q", emb="e2")
    assert ctx("q", history="one") != ctx("q", history="two")


def test_canonical_json_rejects_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"t": float("nan")})
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()


def test_nondeterministic_means_temperature_above_zero() -> None:
    fp = Fingerprint(model="m", messages=(ChatMessage("user", "x"),))
    assert not fp.nondeterministic
    assert not dataclasses.replace(fp, temperature=0.0).nondeterministic
    assert dataclasses.replace(fp, temperature=0.7).nondeterministic


def test_a_message_with_router_only_fields_cannot_be_keyed() -> None:
    # Only role, content and name are hashed: a tool call would otherwise be silently ignored.
    fingerprint = Fingerprint(model="m", messages=(ChatMessage("tool", "21", tool_call_id="c"),))
    key_input = CacheKeyInput.build(
        namespace="n", scope=Scope.GLOBAL, tenant_id="", user_id="", fingerprint=fingerprint
    )
    with pytest.raises(ValueError, match="cannot key"):
        exact_key(key_input)
