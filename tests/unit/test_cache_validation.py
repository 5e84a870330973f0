"""Bad input is refused with field violations before anything touches Redis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tollway.cache.cache import Cache
from tollway.cache.entries import Answer, InvalidateTarget, LookupQuery, QualitySample, Requester, StoreCommand
from tollway.cache.keys import Fingerprint
from tollway.cache.namespaces import NamespaceRegistry
from tollway.common.chat import ChatMessage
from tollway.mesh.errors import InvalidArgument, NotFound

FP = Fingerprint(model="m", messages=(ChatMessage("user", "hi"),))


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    path = tmp_path / "ns.yaml"
    path.write_text(
        "namespaces:\n"
        "  default: {threshold: 0.9, scope: tenant}\n"
        "  mine: {threshold: 0.9, scope: user}\n"
        "  open: {threshold: 0.9, scope: global}\n"
    )
    # No store: any Redis access would fail the test with an AttributeError.
    return Cache(store=None, namespaces=NamespaceRegistry(path, presets={}), sync=None)  # type: ignore[arg-type]


def fields(err: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [f for f, _ in err.value.violations]


async def test_unknown_namespace_is_not_found(cache: Cache) -> None:
    with pytest.raises(NotFound):
        await cache.lookup(LookupQuery(Requester("nope", "t"), FP))


async def test_every_violation_is_reported_at_once(cache: Cache) -> None:
    bad = Fingerprint(model="", messages=(), temperature=float("nan"))
    with pytest.raises(InvalidArgument) as err:
        await cache.lookup(LookupQuery(Requester("mine"), bad, embedding=np.ones(3, np.float32)))
    assert fields(err) == [
        "fingerprint.messages",
        "fingerprint.model",
        "fingerprint.temperature",
        "tenant_id",
        "user_id",
        "embedding",
        "embedding_model",
    ]
    assert err.value.reason == "INVALID_CACHE_REQUEST"


async def test_embedding_checks(cache: Cache) -> None:
    with pytest.raises(InvalidArgument, match="has 383 values; this cache expects 384"):
        await cache.lookup(LookupQuery(Requester("", "t"), FP, embedding=np.ones(383, np.float32), embedding_model="e"))
    with pytest.raises(InvalidArgument, match="not all zeros"):
        await cache.lookup(
            LookupQuery(Requester("", "t"), FP, embedding=np.zeros(384, np.float32), embedding_model="e")
        )
    inf = np.ones(384, np.float32)
    inf[3] = np.inf
    with pytest.raises(InvalidArgument, match="finite"):
        await cache.lookup(LookupQuery(Requester("", "t"), FP, embedding=inf, embedding_model="e"))


async def test_global_namespace_needs_no_tenant(cache: Cache) -> None:
    cache._resolve(Requester("open"), FP, None, "")


async def test_store_checks(cache: Cache) -> None:
    command = StoreCommand(Requester("", "t"), FP, Answer(""), document_ids=("", "x" * 300))
    with pytest.raises(InvalidArgument) as err:
        await cache.put(command)
    assert fields(err) == ["text", "document_ids"]


@pytest.mark.parametrize(
    "target",
    [
        InvalidateTarget(),
        InvalidateTarget(document_ids=("d",), namespace="n"),
        InvalidateTarget(prompt_template="t", everything=True),
        InvalidateTarget(prompt_version="3"),
    ],
)
async def test_invalidate_needs_exactly_one_target(cache: Cache, target: InvalidateTarget) -> None:
    with pytest.raises(InvalidArgument):
        await cache.invalidate(target)


def test_quality_sample_checks(cache: Cache) -> None:
    with pytest.raises(InvalidArgument) as err:
        cache.record_quality(QualitySample("", "", "", cached_embedding=np.ones(3)))
    assert fields(err) == ["cached_text", "fresh_text", "fresh_embedding"]
    with pytest.raises(InvalidArgument, match="has 2 values; cached_embedding has 3"):
        cache.record_quality(QualitySample("", "a", "b", cached_embedding=np.ones(3), fresh_embedding=np.ones(2)))
    result = cache.record_quality(
        QualitySample("", "a b", "a c", cached_embedding=np.ones(3), fresh_embedding=np.ones(3))
    )
    assert result.token_f1 == pytest.approx(0.5)
    assert result.embedding_cosine == pytest.approx(1.0)


def test_each_namespace_runs_its_presets_rules(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(
        "namespaces:\n  plain: {threshold: 0.9}\n  strict: {preset: strict}\n  default: {preset: default}\n"
    )
    cache = Cache(store=None, namespaces=NamespaceRegistry(path), sync=None)  # type: ignore[arg-type]
    near_miss = ("npm audit false positives", "yarn audit false positives")  # a term swap
    numbers = ("download Ubuntu 22.04 ISO", "download Ubuntu 24.04 ISO")
    plain, strict, default = (cache._check(cache.namespaces.get(n)) for n in ("plain", "strict", "default"))
    assert not plain(*numbers, 0.97, 0.9).accept
    assert not strict(*near_miss, 0.97, 0.9).accept
    # term_swap is a strict-only rule; the default preset's learned check catches the swapped tool instead.
    assert default(*near_miss, 0.97, 0.9).reason == "learned_check"
    assert cache._check(cache.namespaces.get("strict")) is strict  # built once per preset
