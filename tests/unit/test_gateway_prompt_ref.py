"""prompt_ref on the gateway's request path: checks before any call, the proto -> domain
translation, the lifecycle's order (resolve, apply, then cache, budget and router), and the
cache key holding the resolved version number, never the label. No servers: the prompt
store, cache and router are fakes with the clients' interfaces."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from tollway.cache.cache import Cache
from tollway.cache.keys import exact_key
from tollway.cache.namespaces import NamespaceRegistry
from tollway.cache.service import lookup_from_proto
from tollway.common.caching import CacheMode, CachePolicy
from tollway.common.catalog import Catalog
from tollway.common.chat import ChatMessage, ChatRequest, TextDelta, Usage
from tollway.common.route import RouteCompleted, RouteStarted
from tollway.common.v1 import common_pb2
from tollway.gateway.auth import Tenant
from tollway.gateway.cache_client import CacheRequest, Lookup, lookup_request
from tollway.gateway.callrecord import CallRecord
from tollway.gateway.lifecycle import Gateway, Started
from tollway.gateway.prompts_client import PromptRef, ResolvedPrompt
from tollway.gateway.request import GatewayRequest
from tollway.gateway.service import request_from_proto
from tollway.gateway.v1 import gateway_pb2
from tollway.gateway.validation import Limits, check, check_resolved, validate
from tollway.mesh.errors import FailedPrecondition, InvalidArgument, NotFound

LIMITS = Limits(max_input_chars=1000, max_messages=8, default_max_tokens=256)
TENANT = Tenant("acme", "k1")


def ref(**kw: Any) -> gateway_pb2.PromptRef:
    return gateway_pb2.PromptRef(**{"template": "triage", **kw})


def fields(r: gateway_pb2.GenerateRequest) -> list[str]:
    return [f for f, _ in validate(r, LIMITS)]


# --- checks before any call ----------------------------------------------------------------


def test_a_prompt_ref_stands_in_for_messages_and_model() -> None:
    assert fields(gateway_pb2.GenerateRequest(prompt_ref=ref())) == []
    assert fields(gateway_pb2.GenerateRequest(model="m", prompt_ref=ref(label="staging"))) == []
    # Without one, both are still required.
    assert fields(gateway_pb2.GenerateRequest()) == ["model", "messages"]


@pytest.mark.parametrize(
    ("prompt", "field"),
    [
        (gateway_pb2.PromptRef(), "prompt_ref.template"),
        (gateway_pb2.PromptRef(template="  "), "prompt_ref.template"),
        (ref(template="t" * 65), "prompt_ref.template"),
        (ref(version=0), "prompt_ref.version"),
        (ref(version=-3), "prompt_ref.version"),
        (ref(label="l" * 65), "prompt_ref.label"),
    ],
)
def test_a_bad_prompt_ref_is_refused_before_any_call(prompt: gateway_pb2.PromptRef, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check(gateway_pb2.CompleteRequest(prompt_ref=prompt), LIMITS)
    assert [f for f, _ in err.value.violations] == [field]


def test_the_request_and_prompt_together_are_checked_once_resolved() -> None:
    ok = ChatRequest(model="m", messages=(ChatMessage("user", "hi"),), max_tokens=10)
    check_resolved(ok, LIMITS, "triage")
    with pytest.raises(InvalidArgument) as err:
        check_resolved(
            dataclasses.replace(ok, model="", messages=(ChatMessage("user", "x" * 1001),), max_tokens=40_000),
            LIMITS,
            "triage",
        )
    assert [f for f, _ in err.value.violations] == ["model", "messages", "max_tokens"]
    assert "'triage' names no model" in err.value.message


# --- translation ---------------------------------------------------------------------------


def test_prompt_ref_reaches_the_domain_with_plain_variables() -> None:
    variables = struct_pb2.Struct()
    variables.update({"ticket": "down", "n": 3, "tags": ["a"], "meta": {"vip": True}})
    proto = gateway_pb2.GenerateRequest(prompt_ref=ref(label="staging", variables=variables), user="u1")
    req = request_from_proto(proto, TENANT, default_max_tokens=256)
    assert req.prompt_ref == PromptRef(
        "triage", label="staging", variables={"ticket": "down", "n": 3.0, "tags": ["a"], "meta": {"vip": True}}
    )
    assert req.prompt is None and req.chat.messages == ()
    # max_tokens waits for the prompt's own default; the gateway's comes after it.
    assert req.chat.max_tokens == 0
    versioned = request_from_proto(gateway_pb2.CompleteRequest(prompt_ref=ref(version=4)), TENANT, 256)
    assert versioned.prompt_ref == PromptRef("triage", version=4)


def test_without_prompt_ref_nothing_changes() -> None:
    proto = gateway_pb2.GenerateRequest(model="m", messages=[common_pb2.Message(role="user", content="hi")])
    req = request_from_proto(proto, TENANT, default_max_tokens=256)
    assert req.prompt_ref is None and req.chat.max_tokens == 256


# --- the lifecycle -------------------------------------------------------------------------


def resolved(version: int = 2, *, label: str = "production", **kw: Any) -> ResolvedPrompt:
    return ResolvedPrompt(
        template="triage",
        version=version,
        resolution="label" if label else "version",
        label=label,
        variant_index=0,
        messages=(ChatMessage("system", "sort tickets", cache_breakpoint=True), ChatMessage("user", "Ticket: down")),
        cacheable_prefix_count=1,
        content_hash="c0ffee",
        input_tokens=9,
        **kw,
    )


class FakePrompts:
    def __init__(self, answer: ResolvedPrompt | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[PromptRef, str, str]] = []

    async def resolve(self, ref: PromptRef, *, tenant: str, user: str = "") -> ResolvedPrompt:
        self.calls.append((ref, tenant, user))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeCache:
    def __init__(self) -> None:
        self.lookups: list[CacheRequest] = []
        self.stored: list[CacheRequest] = []

    async def lookup(self, req: CacheRequest, vector: list[float] | None = None) -> Lookup:
        self.lookups.append(req)
        return Lookup()

    async def store(self, req: CacheRequest, *args: Any) -> None:
        self.stored.append(req)


class FakeRouter:
    def __init__(self) -> None:
        self.asked: list[ChatRequest] = []

    async def generate(self, chat: ChatRequest, timeout_s: float, *, prompt_tokens: int = 0) -> AsyncIterator[Any]:
        self.asked.append(chat)
        yield RouteStarted("fake-ok", "fakeai", 1)
        yield TextDelta("queue: technical")
        yield RouteCompleted("stop", Usage(12, 3), True, 5)


class FakeStore:
    def __init__(self) -> None:
        self.records: list[dict[str, str]] = []

    async def append_calls(self, records: list[dict[str, str]], **totals: Any) -> None:
        self.records.extend(records)


def gateway(prompts: FakePrompts | None, cache: FakeCache, router: FakeRouter, store: FakeStore) -> Gateway:
    return Gateway(
        keys=None,  # type: ignore[arg-type]  # authentication happens in service.py
        router=router,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        limits=LIMITS,
        request_timeout_s=5,
        catalog=Catalog({}),
        cache=cache,  # type: ignore[arg-type]
        prompts=prompts,  # type: ignore[arg-type]
    )


def request(
    prompt_ref: PromptRef | None, *, messages: tuple[ChatMessage, ...] = (), max_tokens: int = 0
) -> GatewayRequest:
    chat = ChatRequest(model="fake-ok", messages=messages, max_tokens=max_tokens, tenant="acme", request_id="r1")
    return GatewayRequest(chat, "u1", "f", CachePolicy("default", CacheMode.NORMAL), prompt_ref=prompt_ref)


async def run(gw: Gateway, req: GatewayRequest) -> list[Any]:
    events = [e async for e in gw.generate(req)]
    await gw.drain()
    return events


async def test_the_prompt_is_resolved_for_the_user_then_drives_cache_router_and_record() -> None:
    prompts, cache, router, store = (
        FakePrompts(resolved(temperature=0.0, max_tokens=120)),
        FakeCache(),
        FakeRouter(),
        FakeStore(),
    )
    own = (ChatMessage("user", "and quickly"),)
    events = await run(gateway(prompts, cache, router, store), request(PromptRef("triage"), messages=own))

    assert prompts.calls == [(PromptRef("triage"), "acme", "u1")]
    asked = router.asked[0]
    assert [m.content for m in asked.messages] == ["sort tickets", "Ticket: down", "and quickly"]
    assert (asked.max_tokens, asked.temperature) == (120, 0.0)  # the version's defaults fill the gaps
    looked = cache.lookups[0]
    assert (looked.prompt_template, looked.prompt_version) == ("triage", "2") and looked.chat == asked
    assert cache.stored[0].prompt_version == "2"
    started = events[0]
    assert isinstance(started, Started) and started.prompt is not None and started.prompt.version == 2
    record = store.records[0]
    assert (record["prompt_template"], record["prompt_version"], record["prompt_hash"]) == ("triage", "2", "c0ffee")


async def test_the_gateway_default_max_tokens_comes_after_the_prompts() -> None:
    router = FakeRouter()
    await run(gateway(FakePrompts(resolved()), FakeCache(), router, FakeStore()), request(PromptRef("triage")))
    assert router.asked[0].max_tokens == LIMITS.default_max_tokens
    router = FakeRouter()
    await run(
        gateway(FakePrompts(resolved(max_tokens=90)), FakeCache(), router, FakeStore()),
        request(PromptRef("triage"), max_tokens=7),
    )
    assert router.asked[0].max_tokens == 7  # the request's own value wins


async def test_a_refusal_passes_through_before_anything_is_spent() -> None:
    cache, router, store = FakeCache(), FakeRouter(), FakeStore()
    gw = gateway(
        FakePrompts(NotFound("template 'triage' has no label 'nope'", reason="LABEL_NOT_FOUND")), cache, router, store
    )
    with pytest.raises(NotFound) as err:
        await run(gw, request(PromptRef("triage", label="nope")))
    assert err.value.reason == "LABEL_NOT_FOUND"
    assert (cache.lookups, router.asked, store.records) == ([], [], [])


async def test_a_prompt_without_a_model_and_a_request_without_one_is_refused() -> None:
    router = FakeRouter()
    req = request(PromptRef("triage"))
    req = dataclasses.replace(req, chat=dataclasses.replace(req.chat, model=""))
    with pytest.raises(InvalidArgument) as err:
        await run(gateway(FakePrompts(resolved()), FakeCache(), router, FakeStore()), req)
    assert [f for f, _ in err.value.violations] == ["model"] and router.asked == []


async def test_without_a_prompt_store_prompt_ref_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition) as err:
        await run(gateway(None, FakeCache(), FakeRouter(), FakeStore()), request(PromptRef("triage")))
    assert err.value.reason == "PROMPTS_NOT_CONFIGURED"


async def test_a_request_without_prompt_ref_never_asks_the_prompt_store() -> None:
    prompts, cache = FakePrompts(resolved()), FakeCache()
    events = await run(
        gateway(prompts, cache, FakeRouter(), FakeStore()),
        request(None, messages=(ChatMessage("user", "hi"),), max_tokens=5),
    )
    assert prompts.calls == [] and cache.lookups[0].prompt_version == ""
    assert isinstance(events[0], Started) and events[0].prompt is None


def test_a_record_without_a_prompt_names_none() -> None:
    record = CallRecord.begin("r", "t", "f", "u", "m", "h")
    assert (record.prompt_template, record.prompt_version) == ("", "")


# --- the cache key: the version number, never the label ------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    path = Path(tmp_path_factory.mktemp("ns")) / "namespaces.yaml"
    path.write_text("namespaces:\n  default: {threshold: 0.9, scope: tenant}\n")
    return Cache(store=None, namespaces=NamespaceRegistry(path, presets={}), sync=None)  # type: ignore[arg-type]


def key(cache: Cache, prompt: ResolvedPrompt) -> str:
    req = request(PromptRef("triage", label=prompt.label))
    req = dataclasses.replace(req, chat=prompt.apply(req.chat), prompt=prompt)
    query = lookup_from_proto(lookup_request(CacheRequest.of(req), None, ""))
    return exact_key(cache._resolve(query.requester, query.fingerprint, query.embedding, query.embedding_model)[2])


def test_a_new_version_with_the_same_rendering_is_a_new_key(cache: Cache) -> None:
    assert key(cache, resolved(1)) != key(cache, resolved(2))


def test_the_label_followed_is_not_in_the_key(cache: Cache) -> None:
    # production and staging both at version 2 share answers; moving production to 3 does not.
    assert key(cache, resolved(2, label="production")) == key(cache, resolved(2, label="staging"))
    assert key(cache, resolved(2, label="")) == key(cache, resolved(2, label="production"))
    assert key(cache, resolved(3, label="production")) != key(cache, resolved(2, label="production"))


def test_a_prompt_rendering_and_the_same_messages_sent_by_hand_do_not_share_a_key(cache: Cache) -> None:
    # An answer cached for a template version is invalidated with it, so it is kept apart.
    prompt = resolved(2)
    by_hand = request(None, messages=tuple(dataclasses.replace(m, cache_breakpoint=False) for m in prompt.messages))
    query = lookup_from_proto(lookup_request(CacheRequest.of(by_hand), None, ""))
    plain = exact_key(cache._resolve(query.requester, query.fingerprint, query.embedding, query.embedding_model)[2])
    assert plain != key(cache, prompt)
