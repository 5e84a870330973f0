"""The prompts service over real gRPC (port 0, two replicas on one Redis) and a real redis-server.

Every refusal test snapshots every key the service owns before and after: bad input must leave
nothing changed. Time is a clock the tests set by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.redis_server import local_redis
from tollway.mesh.config import MeshConfig
from tollway.mesh.server import create_server
from tollway.prompts.__main__ import build
from tollway.prompts.config import PromptsConfig
from tollway.prompts.prompts import Prompts
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "tw:prompts:test"
START_MS = 1_767_225_600_000

SCHEMA = json.dumps(
    {
        "type": "object",
        "required": ["ticket", "lang"],
        "properties": {
            "ticket": {"type": "string", "minLength": 1, "maxLength": 200},
            "lang": {"type": "string", "enum": ["en", "fr"]},
            "count": {"type": "integer", "minimum": 1, "default": 1},
        },
    }
)


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        self.now_ms += 1000
        return self.now_ms


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with local_redis() as server:
        yield server.url


@contextlib.asynccontextmanager
async def replicas(
    redis_url: str, count: int = 2, **config: Any
) -> AsyncIterator[list[prompts_pb2_grpc.PromptsServiceStub]]:
    config.setdefault("seed_dir", "")
    config.setdefault("key_prefix", PREFIX)
    started = []
    clock = Clock()  # one clock for all replicas: history times are comparable
    try:
        for _ in range(count):
            spec, prompts = build(PromptsConfig(**config), MeshConfig(redis_url=redis_url), clock=clock)
            server, port, _ = await create_server(spec, "127.0.0.1:0")
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            started.append((spec, server, channel, prompts, prompts_pb2_grpc.PromptsServiceStub(channel)))
        yield [s for *_, s in started]
    finally:
        for spec, server, channel, _, _ in started:
            await channel.close()
            await server.stop(None)
            assert spec.on_stop is not None
            await spec.on_stop()


@pytest.fixture
async def stubs(redis_url: str) -> AsyncIterator[list[prompts_pb2_grpc.PromptsServiceStub]]:
    async with replicas(redis_url) as s:
        yield s


def content(*texts: str, schema: str = SCHEMA, **params: Any) -> prompts_pb2.PromptContent:
    roles = ["system"] + ["user"] * (len(texts) - 1)
    return prompts_pb2.PromptContent(
        messages=[prompts_pb2.MessageTemplate(role=r, content=t) for r, t in zip(roles, texts, strict=True)],
        variables_schema_json=schema,
        parameters=prompts_pb2.ModelParameters(**params),
    )


def variables(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def new_template(stub: prompts_pb2_grpc.PromptsServiceStub, tid: str, versions: int = 1) -> None:
    await stub.CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id=tid, description="test", actor="t"))
    for i in range(versions):
        await stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(
                template_id=tid,
                content=content("You sort tickets.", f"v{i + 1} [{{{{ lang }}}}] {{{{ ticket }}}} x{{{{ count }}}}"),
                author="alice",
                change_note=f"version {i + 1}",
            )
        )


def details(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    out: dict[str, Any] = {}
    status = rpc_status.from_call(err)
    assert status is not None
    for d in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out[cls.__name__] = msg
    return out


async def expect(code: grpc.StatusCode, call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


def snapshot(redis_url: str) -> dict[bytes, Any]:
    """Every key of the service with its type and full value."""
    client = redis.Redis.from_url(redis_url)
    try:
        out: dict[bytes, Any] = {}
        for key in client.scan_iter(match=f"{PREFIX}*"):
            kind = client.type(key)
            if kind == b"hash":
                out[key] = client.hgetall(key)
            elif kind == b"zset":
                out[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"stream":
                out[key] = client.xrange(key)
            else:
                out[key] = client.get(key)
        return out
    finally:
        client.close()


# --- publishing ---------------------------------------------------------------------------------


async def test_concurrent_publishes_get_distinct_gap_free_numbers(stubs: list[Any]) -> None:
    await new_template(stubs[0], "race", versions=0)
    distinct = 40

    async def publish(i: int) -> prompts_pb2.PublishVersionResponse:
        n = i % distinct  # every content twice: 80 publishes, 40 contents, from two replicas
        return await stubs[i % 2].PublishVersion(
            prompts_pb2.PublishVersionRequest(
                template_id="race", content=content(f"Rule {n}.", "{{ ticket }}"), author=f"a{i}"
            )
        )

    results = await asyncio.gather(*(publish(i) for i in range(2 * distinct)))
    numbers = {r.version.version for r in results}
    assert numbers == set(range(1, distinct + 1))
    assert sum(r.created for r in results) == distinct
    by_content: dict[str, set[int]] = {}
    for r in results:
        by_content.setdefault(r.version.content_hash, set()).add(r.version.version)
    assert all(len(v) == 1 for v in by_content.values()) and len(by_content) == distinct
    t = (await stubs[1].GetTemplate(prompts_pb2.GetTemplateRequest(template_id="race"))).template
    assert t.latest_version == distinct


async def test_identical_content_returns_the_existing_version(stubs: list[Any]) -> None:
    await new_template(stubs[0], "same")
    again = await stubs[1].PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id="same",
            content=content("You sort tickets.", "v1 [{{ lang }}] {{ ticket }} x{{ count }}"),
            author="bob",
            change_note="a different note changes nothing",
        )
    )
    assert not again.created and again.version.version == 1
    assert again.version.author == "alice" and again.version.change_note == "version 1"
    spaced = json.dumps(json.loads(SCHEMA), indent=4)  # the same schema, other spacing
    third = await stubs[0].PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id="same",
            content=content("You sort tickets.", "v1 [{{ lang }}] {{ ticket }} x{{ count }}", schema=spaced),
            author="carol",
        )
    )
    assert not third.created and third.version.version == 1
    changed = await stubs[0].PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id="same",
            content=content("You sort tickets.", "v1 [{{ lang }}] {{ ticket }} x{{ count }}", temperature=0.5),
            author="carol",
        )
    )
    assert changed.created and changed.version.version == 2


async def test_a_version_records_its_metadata(stubs: list[Any]) -> None:
    await stubs[0].CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id="meta", actor="t"))
    resp = await stubs[0].PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id="meta",
            content=content("Static.", "{{ ticket }} in {{ lang }}", model="auto", tier="small", max_tokens=50),
            author="alice",
            change_note="first",
            example_variables=variables(ticket="My card was charged twice", lang="en"),
        )
    )
    v = (await stubs[1].GetVersion(prompts_pb2.GetVersionRequest(template_id="meta", version=1))).version
    assert v.name == "templates/meta/versions/1" and v.author == "alice" and v.change_note == "first"
    assert v.create_time.ToMilliseconds() > START_MS and len(v.content_hash) == 64
    assert v.token_encoding == "o200k_base" and v.static_prefix_message_count == 1
    assert v.token_count == resp.version.token_count > 10
    assert v.content.parameters.tier == "small" and v.content.parameters.max_tokens == 50
    assert dict(v.example_variables) == {"ticket": "My card was charged twice", "lang": "en"}


# --- labels, rollback, history --------------------------------------------------------------------


async def test_label_moves_rollback_and_paged_history(stubs: list[Any]) -> None:
    a, b = stubs
    await new_template(a, "hist", versions=3)

    async def move(v: int, who: str, **kw: Any) -> prompts_pb2.SetLabelResponse:
        return await a.SetLabel(
            prompts_pb2.SetLabelRequest(template_id="hist", label="production", version=v, actor=who, **kw)
        )

    first = await move(1, "alice", reason="launch")
    assert (first.change.from_version, first.change.to_version, first.change.actor) == (0, 1, "alice")
    await move(2, "bob")
    same = await move(2, "bob")
    assert not same.HasField("change")  # pointing where it already points records nothing
    await b.SetLabel(prompts_pb2.SetLabelRequest(template_id="hist", label="staging", version=3, actor="carol"))
    await move(3, "dave", expected_version=2)
    err = await expect(grpc.StatusCode.FAILED_PRECONDITION, move(1, "erin", expected_version=2))
    assert details(err)["ErrorInfo"].reason == "LABEL_MOVED"

    back = await b.RollbackLabel(prompts_pb2.RollbackLabelRequest(template_id="hist", label="production", actor="ops"))
    assert (back.change.from_version, back.change.to_version) == (3, 2) and back.label.version == 2
    assert back.change.kind == prompts_pb2.LABEL_CHANGE_KIND_ROLLBACK
    again = await b.RollbackLabel(prompts_pb2.RollbackLabelRequest(template_id="hist", label="production", actor="ops"))
    assert (again.change.from_version, again.change.to_version) == (2, 3)  # a rollback is a move too

    changes, token, pages = [], "", 0
    while True:
        page = await b.ListLabelHistory(
            prompts_pb2.ListLabelHistoryRequest(template_id="hist", label="production", page_size=2, page_token=token)
        )
        changes += page.changes
        pages += 1
        token = page.next_page_token
        if not token:
            break
    moves = [(c.from_version, c.to_version, c.actor) for c in changes]
    assert moves == [(2, 3, "ops"), (3, 2, "ops"), (2, 3, "dave"), (1, 2, "bob"), (0, 1, "alice")]
    assert pages == 3
    times = [c.change_time.ToMilliseconds() for c in changes]
    assert times == sorted(times, reverse=True) and all(t > START_MS for t in times)
    assert changes[-1].reason == "launch"
    everything = await a.ListLabelHistory(prompts_pb2.ListLabelHistoryRequest(template_id="hist"))
    assert [c.label for c in everything.changes].count("staging") == 1 and len(everything.changes) == 6

    t = (await a.GetTemplate(prompts_pb2.GetTemplateRequest(template_id="hist"))).template
    assert {(lb.label, lb.version) for lb in t.labels} == {("production", 3), ("staging", 3)}


async def test_a_label_without_history_cannot_roll_back(stubs: list[Any]) -> None:
    await new_template(stubs[0], "fresh")
    await stubs[0].SetLabel(prompts_pb2.SetLabelRequest(template_id="fresh", label="production", version=1, actor="a"))
    err = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        stubs[0].RollbackLabel(prompts_pb2.RollbackLabelRequest(template_id="fresh", label="production", actor="a")),
    )
    assert details(err)["ErrorInfo"].reason == "NOTHING_TO_ROLL_BACK"


# --- resolution -----------------------------------------------------------------------------------


async def resolve(stub: Any, tid: str, **kw: Any) -> prompts_pb2.ResolvePromptResponse:
    kw.setdefault("variables", variables(ticket="t", lang="en"))
    return await stub.ResolvePrompt(prompts_pb2.ResolvePromptRequest(template_id=tid, **kw))


async def test_resolve_by_label_variant_pin_and_version(stubs: list[Any]) -> None:
    a, b = stubs
    await new_template(a, "route", versions=3)
    await a.SetLabel(prompts_pb2.SetLabelRequest(template_id="route", label="production", version=1, actor="a"))
    await a.SetLabel(prompts_pb2.SetLabelRequest(template_id="route", label="staging", version=3, actor="a"))

    r = await resolve(b, "route", tenant_id="acme")
    assert (r.version, r.resolution, r.label) == (1, prompts_pb2.RESOLUTION_LABEL, "production")
    assert [m.content for m in r.messages] == ["You sort tickets.", "v1 [en] t x1"]  # count's default filled in
    assert r.cacheable_prefix_message_count == 1 and r.input_token_count > 5 and len(r.content_hash) == 64
    assert (await resolve(b, "route", label="staging")).version == 3
    assert (await resolve(b, "route", version=2)).resolution == prompts_pb2.RESOLUTION_VERSION

    await a.SetVariants(
        prompts_pb2.SetVariantsRequest(
            template_id="route",
            label="production",
            variants=[prompts_pb2.Variant(version=1, weight=50), prompts_pb2.Variant(version=2, weight=50)],
            actor="a",
        )
    )
    seen: dict[str, int] = {}
    for i in range(60):
        got = await resolve(stubs[i % 2], "route", tenant_id="acme", user_id=f"user-{i % 20}")
        assert got.resolution == prompts_pb2.RESOLUTION_VARIANT
        assert seen.setdefault(f"user-{i % 20}", got.version) == got.version  # sticky, on both replicas
        assert got.messages[1].content.startswith(f"v{got.version} ")
    assert set(seen.values()) == {1, 2}
    anonymous = await resolve(b, "route")
    assert anonymous.resolution == prompts_pb2.RESOLUTION_LABEL and anonymous.version == 1

    await a.SetTenantPin(prompts_pb2.SetTenantPinRequest(template_id="route", tenant_id="acme", version=3, actor="a"))
    pinned = await resolve(b, "route", tenant_id="acme", user_id="user-1")
    assert (pinned.version, pinned.resolution) == (3, prompts_pb2.RESOLUTION_TENANT_PIN)
    assert (await resolve(b, "route", version=2, tenant_id="acme")).version == 2  # a named version wins
    other = await resolve(b, "route", tenant_id="beta", user_id="user-1")
    assert other.resolution == prompts_pb2.RESOLUTION_VARIANT
    await a.DeleteTenantPin(prompts_pb2.DeleteTenantPinRequest(template_id="route", tenant_id="acme", actor="a"))
    assert (await resolve(b, "route", tenant_id="acme", user_id="user-1")).resolution == prompts_pb2.RESOLUTION_VARIANT

    t = (await a.GetTemplate(prompts_pb2.GetTemplateRequest(template_id="route"))).template
    prod = next(lb for lb in t.labels if lb.label == "production")
    assert [(v.version, v.weight) for v in prod.variants] == [(1, 50), (2, 50)]
    await a.SetVariants(prompts_pb2.SetVariantsRequest(template_id="route", label="production", actor="a"))
    assert (await resolve(b, "route", user_id="user-1")).resolution == prompts_pb2.RESOLUTION_LABEL


async def test_a_label_move_is_seen_by_the_other_replica_at_once(stubs: list[Any]) -> None:
    a, b = stubs
    await new_template(a, "move", versions=2)
    await a.SetLabel(prompts_pb2.SetLabelRequest(template_id="move", label="production", version=1, actor="a"))
    assert (await resolve(b, "move")).version == 1
    await a.SetLabel(prompts_pb2.SetLabelRequest(template_id="move", label="production", version=2, actor="a"))
    assert (await resolve(b, "move")).version == 2


async def test_evaluations_are_counted_once_per_request_id(stubs: list[Any]) -> None:
    a, b = stubs
    await new_template(a, "evals")
    for score, rid in ((1.0, "r1"), (0.0, "r2"), (1.0, "r1"), (0.5, "")):
        resp = await stubs[len(rid) % 2].RecordEvaluation(
            prompts_pb2.RecordEvaluationRequest(
                template_id="evals", version=1, metric="helpfulness", score=score, request_id=rid
            )
        )
    assert resp.summary.score_count == 3 and resp.summary.mean_score == pytest.approx(0.5)
    dup = await a.RecordEvaluation(
        prompts_pb2.RecordEvaluationRequest(
            template_id="evals", version=1, metric="helpfulness", score=9, request_id="r2"
        )
    )
    assert not dup.recorded and dup.summary.score_count == 3
    v = (await b.GetVersion(prompts_pb2.GetVersionRequest(template_id="evals", version=1))).version
    assert v.evaluations["helpfulness"].score_count == 3


async def test_templates_list_in_pages(stubs: list[Any]) -> None:
    for i in range(5):
        await stubs[0].CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id=f"zz-list-{i}", actor="t"))
    ids, token = [], ""
    while True:
        page = await stubs[1].ListTemplates(prompts_pb2.ListTemplatesRequest(page_size=3, page_token=token))
        ids += [t.template_id for t in page.templates]
        token = page.next_page_token
        if not token:
            break
    assert [i for i in ids if i.startswith("zz-list-")] == [f"zz-list-{i}" for i in range(5)]
    assert ids == sorted(ids)


# --- bad input changes nothing ------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, str, Any, grpc.StatusCode, str]]:
    long = "x" * 70_000
    ok = ("You sort tickets.", "{{ ticket }} {{ lang }}")
    return [
        ("ResolvePrompt", "missing", prompts_pb2.ResolvePromptRequest(template_id="bad", label="production"),
         grpc.StatusCode.INVALID_ARGUMENT, "VARIABLES_MISSING"),
        ("ResolvePrompt", "wrong", prompts_pb2.ResolvePromptRequest(
            template_id="bad", variables=variables(ticket=3, lang="de", count=0)),
         grpc.StatusCode.INVALID_ARGUMENT, "VARIABLES_INVALID"),
        ("ResolvePrompt", "no template", prompts_pb2.ResolvePromptRequest(template_id="nope"),
         grpc.StatusCode.NOT_FOUND, "TEMPLATE_NOT_FOUND"),
        ("ResolvePrompt", "no label", prompts_pb2.ResolvePromptRequest(template_id="bad", label="canary"),
         grpc.StatusCode.NOT_FOUND, "LABEL_NOT_FOUND"),
        ("ResolvePrompt", "no version", prompts_pb2.ResolvePromptRequest(template_id="bad", version=9),
         grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        ("ResolvePrompt", "huge variables", prompts_pb2.ResolvePromptRequest(
            template_id="bad", variables=variables(ticket="x" * 300_000, lang="en")),
         grpc.StatusCode.INVALID_ARGUMENT, "VARIABLES_TOO_LARGE"),
        ("SetLabel", "label to a missing version", prompts_pb2.SetLabelRequest(
            template_id="bad", label="production", version=7, actor="a"),
         grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        ("SetLabel", "new label to a missing version", prompts_pb2.SetLabelRequest(
            template_id="bad", label="canary", version=2, actor="a"),
         grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        ("SetVariants", "variant of a missing version", prompts_pb2.SetVariantsRequest(
            template_id="bad", label="production", actor="a",
            variants=[prompts_pb2.Variant(version=1, weight=1), prompts_pb2.Variant(version=5, weight=1)]),
         grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        ("SetVariants", "zero weights", prompts_pb2.SetVariantsRequest(
            template_id="bad", label="production", actor="a", variants=[prompts_pb2.Variant(version=1, weight=0)]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("SetTenantPin", "pin to a missing version", prompts_pb2.SetTenantPinRequest(
            template_id="bad", tenant_id="acme", version=3, actor="a"),
         grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        ("PublishVersion", "does not parse", prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content("ok", "line one\n{{ ticket }")),
         grpc.StatusCode.INVALID_ARGUMENT, "TEMPLATE_INVALID"),
        ("PublishVersion", "internals", prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content("ok", "{{ ''.__class__.__mro__ }}")),
         grpc.StatusCode.INVALID_ARGUMENT, "TEMPLATE_INVALID"),
        ("PublishVersion", "oversized", prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content("ok", long)),
         grpc.StatusCode.INVALID_ARGUMENT, "TEMPLATE_TOO_LARGE"),
        ("PublishVersion", "bad schema", prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content(*ok, schema='{"type": "object", "properties": [')),
         grpc.StatusCode.INVALID_ARGUMENT, "SCHEMA_INVALID"),
        ("PublishVersion", "bad example", prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content("ok", "{{ ticket }} {{ lang }} 2"),
            example_variables=variables(ticket="t")),
         grpc.StatusCode.INVALID_ARGUMENT, "VARIABLES_MISSING"),
        ("PublishVersion", "no template", prompts_pb2.PublishVersionRequest(
            template_id="nope", author="a", content=content(*ok)),
         grpc.StatusCode.NOT_FOUND, "TEMPLATE_NOT_FOUND"),
        ("RenderPrompt", "dynamic internals", prompts_pb2.RenderPromptRequest(
            content=content("ok", "{{ ticket|attr('__class__') }}"), variables=variables(ticket="t", lang="en")),
         grpc.StatusCode.INVALID_ARGUMENT, "TEMPLATE_UNSAFE"),
        ("RollbackLabel", "unknown label", prompts_pb2.RollbackLabelRequest(
            template_id="bad", label="canary", actor="a"),
         grpc.StatusCode.NOT_FOUND, "LABEL_NOT_FOUND"),
        ("RecordEvaluation", "not finite", prompts_pb2.RecordEvaluationRequest(
            template_id="bad", version=1, metric="m", score=float("nan")),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("CreateTemplate", "taken id", prompts_pb2.CreateTemplateRequest(
            template_id="bad", description="another", actor="a"),
         grpc.StatusCode.ALREADY_EXISTS, "TEMPLATE_EXISTS"),
    ]  # fmt: skip


async def test_every_bad_input_is_refused_and_changes_nothing(stubs: list[Any], redis_url: str) -> None:
    stub = stubs[0]
    await stub.CreateTemplate(prompts_pb2.CreateTemplateRequest(template_id="bad", description="bad", actor="a"))
    await stub.PublishVersion(
        prompts_pb2.PublishVersionRequest(
            template_id="bad", author="a", content=content("ok", "{{ ticket }} {{ lang }}")
        )
    )
    await stub.SetLabel(prompts_pb2.SetLabelRequest(template_id="bad", label="production", version=1, actor="a"))
    before = snapshot(redis_url)
    for method, what, request, code, reason in _bad_requests():
        err = await expect(code, getattr(stub, method)(request))
        info = details(err)["ErrorInfo"]
        assert (info.reason, info.domain) == (reason, "prompts.tollway"), (what, err.details())
        for leak in ("<class", "<function", "Traceback", "0x"):
            assert leak not in err.details(), (what, err.details())
        assert snapshot(redis_url) == before, f"{what} changed state"


async def test_refusals_name_what_is_wrong(stubs: list[Any]) -> None:
    stub = stubs[0]
    await new_template(stub, "named")
    await stub.SetLabel(prompts_pb2.SetLabelRequest(template_id="named", label="production", version=1, actor="a"))
    err = await expect(grpc.StatusCode.INVALID_ARGUMENT, resolve(stub, "named", variables=variables(count=2)))
    assert err.details() == "missing variables: ticket, lang"
    fields = [v.field for v in details(err)["BadRequest"].field_violations]
    assert fields == ["variables.ticket", "variables.lang"]
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, resolve(stub, "named", variables=variables(ticket=5, lang="de", count=0))
    )
    fields = {v.field: v.description for v in details(err)["BadRequest"].field_violations}
    assert set(fields) == {"variables.ticket", "variables.lang", "variables.count"}
    assert "not one of ['en', 'fr']" in fields["variables.lang"]
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(
                template_id="named",
                author="a",
                content=content("ok", "fine", "line one\n  {% if ticket %}never closed"),
            )
        ),
    )
    [violation] = details(err)["BadRequest"].field_violations
    assert violation.field == "content.messages[2].content"
    assert "line 2, column" in violation.description
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(template_id="named", author="a", content=content("ok", "x" * 70_000))
        ),
    )
    assert "TOLLWAY_PROMPTS_MAX_TEMPLATE_CHARS" in err.details() and "65536" in err.details()
    err = await expect(grpc.StatusCode.NOT_FOUND, resolve(stub, "named", version=4))
    assert err.details() == "template 'named' has no version 4; the newest is 1"


# --- seeding -----------------------------------------------------------------------------------


async def test_seeding_publishes_the_examples_once_and_never_moves_a_label_back(redis_url: str) -> None:
    prefix = "tw:prompts:seedtest"
    seed = str(ROOT / "deploy" / "prompts")
    async with replicas(redis_url, 1, seed_dir=seed, key_prefix=prefix) as [stub]:
        r = await stub.ResolvePrompt(
            prompts_pb2.ResolvePromptRequest(template_id="support-triage", variables=variables(ticket="Login fails"))
        )
        assert r.version == 1 and r.resolution == prompts_pb2.RESOLUTION_LABEL
        assert r.cacheable_prefix_message_count == 3 and "Login fails" in r.messages[-1].content
        assert r.parameters.response_format == "json_object"
        changed = await stub.PublishVersion(
            prompts_pb2.PublishVersionRequest(
                template_id="support-triage", author="ops", content=content("Other.", "{{ ticket }} {{ lang }}")
            )
        )
        await stub.SetLabel(
            prompts_pb2.SetLabelRequest(
                template_id="support-triage", label="production", version=changed.version.version, actor="ops"
            )
        )
    async with replicas(redis_url, 1, seed_dir=seed, key_prefix=prefix) as [stub]:  # a restart seeds again
        t = (await stub.GetTemplate(prompts_pb2.GetTemplateRequest(template_id="support-triage"))).template
        assert t.latest_version == 2
        assert {lb.label: lb.version for lb in t.labels} == {"production": 2, "staging": 1}


def test_a_malformed_seed_file_stops_the_service_before_it_serves(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "bad.yaml").write_text("id: x\nmessages: []\nsurprise: 1\n")
    with pytest.raises(Exception, match=r"bad.yaml: surprise: unknown key"):
        build(PromptsConfig(seed_dir=str(tmp_path)), MeshConfig(redis_url=redis_url))


def test_the_domain_object_is_what_build_returns(redis_url: str) -> None:
    _, prompts = build(PromptsConfig(seed_dir=""), MeshConfig(redis_url=redis_url))
    assert isinstance(prompts, Prompts)
