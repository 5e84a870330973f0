"""Provider limits: the sliding-minute arithmetic, the pick order, failing open, and the
catalog and config errors. The shared counters on real Redis are in
tests/integration/test_router_limits.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from tollway.common.catalog import CatalogError, Deployment, parse_catalog
from tollway.router.config import RouterConfig
from tollway.router.limits import (
    BUCKET_MS,
    NEVER,
    WINDOW_MS,
    ProviderLimits,
    Taken,
    check,
    describe,
    expires_at_ms,
    live_from,
)

NOW = 1_000_000_500  # half-way through bucket 1,000,000
B = NOW // BUCKET_MS


def dep(name: str, rpm: int = 0, tpm: int = 0) -> Deployment:
    return Deployment("p", "http://x", "m", name=name, model="m", rpm=rpm, tpm=tpm)


# -- the window ------------------------------------------------------------------------


def test_a_bucket_counts_until_its_last_millisecond_leaves_the_minute() -> None:
    assert WINDOW_MS // BUCKET_MS == 60
    # 60.5 s ago was half-way through bucket B - 60: its second half is still in the window.
    assert live_from(NOW) == B - 60
    assert expires_at_ms(B - 60) == NOW + 500


def test_an_empty_window_fits_and_no_limit_means_no_limit() -> None:
    assert check({}, NOW, rpm=1, tpm=10, tokens=10).fits
    assert check({B: (10**6, 10**9)}, NOW, rpm=0, tpm=0, tokens=10**6).fits


def test_requests_per_minute_count_every_live_bucket() -> None:
    buckets = {B: (2, 0), B - 30: (2, 0), B - 60: (1, 0)}
    assert check(buckets, NOW, rpm=6, tpm=0, tokens=1).fits
    verdict = check(buckets, NOW, rpm=5, tpm=0, tokens=1)
    assert (verdict.fits, verdict.limit) == (False, "rpm")
    # The oldest bucket (1 call) leaves first, in 500 ms: then 4 + 1 fits under 5.
    assert verdict.wait_ms == 500


def test_buckets_that_left_the_window_do_not_count() -> None:
    assert check({B - 61: (100, 100)}, NOW, rpm=1, tpm=1, tokens=1).fits


def test_the_wait_is_until_enough_old_buckets_have_left() -> None:
    buckets = {B - 59: (1, 0), B - 40: (1, 0), B - 10: (1, 0)}
    # rpm 2: three in the window; the call fits once two have left, i.e. when B-40 leaves.
    assert check(buckets, NOW, rpm=2, tpm=0, tokens=1).wait_ms == expires_at_ms(B - 40) - NOW == 20_500


def test_tokens_per_minute_count_the_calls_estimate() -> None:
    buckets = {B - 5: (1, 60)}
    assert check(buckets, NOW, rpm=0, tpm=100, tokens=40).fits
    verdict = check(buckets, NOW, rpm=0, tpm=100, tokens=41)
    assert (verdict.fits, verdict.limit, verdict.wait_ms) == (False, "tpm", expires_at_ms(B - 5) - NOW)


def test_a_call_larger_than_the_token_limit_never_fits() -> None:
    verdict = check({}, NOW, rpm=0, tpm=100, tokens=101)
    assert (verdict.fits, verdict.wait_ms, verdict.limit) == (False, NEVER, "tpm")


def test_the_first_limit_that_refuses_is_named() -> None:
    buckets = {B: (5, 500)}
    assert check(buckets, NOW, rpm=5, tpm=500, tokens=1).limit == "rpm"
    assert check(buckets, NOW, rpm=6, tpm=500, tokens=1).limit == "tpm"


def test_the_message_names_the_deployment_and_the_limit() -> None:
    d = dep("k1", rpm=5, tpm=100)
    assert describe(d, check({B: (5, 0)}, NOW, 5, 100, 1), 1) == (
        "deployment p/m/k1: its limit of 5 requests per minute is reached"
    )
    assert "counts 101 tokens, more than its limit of 100 tokens per minute" in describe(
        d, check({}, NOW, 5, 100, 101), 101
    )


# -- picking ---------------------------------------------------------------------------


@dataclasses.dataclass
class MemoryStore:
    """The store's contract on a dict, with :func:`check` deciding (a fixed clock)."""

    counts: dict[str, dict[int, tuple[int, int]]] = dataclasses.field(default_factory=dict)
    calls: int = 0

    async def take(self, candidates: Sequence[Deployment], tokens: int) -> Taken:
        self.calls += 1
        verdicts = []
        for i, d in enumerate(candidates):
            window = self.counts.setdefault(d.key, {})
            verdict = check(window, NOW, d.rpm, d.tpm, tokens)
            if verdict.fits:
                r, t = window.get(B, (0, 0))
                window[B] = (r + 1, t + tokens)
                return Taken(i, tuple(verdicts), B)
            verdicts.append(verdict)
        return Taken(-1, tuple(verdicts), B)

    async def give_back(self, deployment: Deployment, tokens: int, bucket: int) -> None:
        r, t = self.counts[deployment.key][bucket]
        self.counts[deployment.key][bucket] = (r - 1, t - tokens)


async def test_the_first_deployment_that_fits_is_charged_in_one_store_call() -> None:
    store = MemoryStore()
    limits = ProviderLimits(store)
    a, b = dep("a", rpm=1), dep("b", rpm=1)
    first = await limits.pick([a, b], 10)
    second = await limits.pick([a, b], 10)
    assert first.deployment == a and first.skipped == ()
    assert second.deployment == b and [d.name for d, _ in second.skipped] == ["a"]
    assert second.skipped[0][1].limit == "rpm"
    none = await limits.pick([a, b], 10)
    assert none.deployment is None and none.shortest_wait_ms() == expires_at_ms(B) - NOW
    assert store.calls == 3


async def test_an_unlimited_deployment_costs_no_store_call() -> None:
    store = MemoryStore()
    limits = ProviderLimits(store)
    free = dep("free")
    assert (await limits.pick([free, dep("a", rpm=1)], 10)).deployment == free
    assert store.calls == 0
    # Behind a full one it is still taken, after one call that checks the full one.
    full = dep("full", rpm=1)
    store.counts[full.key] = {B: (1, 0)}
    pick = await limits.pick([full, free], 10)
    assert pick.deployment == free and not pick.counted and store.calls == 1


async def test_giving_back_uncounts_the_call() -> None:
    store = MemoryStore()
    limits = ProviderLimits(store)
    a = dep("a", rpm=1, tpm=100)
    pick = await limits.pick([a], 30)
    await limits.give_back(pick)
    assert store.counts[a.key][B] == (0, 0)
    assert (await limits.pick([a], 30)).deployment == a


async def test_a_broken_store_allows_the_call() -> None:
    class Broken(MemoryStore):
        async def take(self, candidates: Sequence[Deployment], tokens: int) -> Taken:
            raise ConnectionError("redis is down")

    limits = ProviderLimits(Broken())
    a = dep("a", rpm=1)
    pick = await limits.pick([a], 10)
    assert pick.deployment == a and not pick.counted


async def test_no_store_allows_every_call() -> None:
    a = dep("a", rpm=1)
    assert (await ProviderLimits(None).pick([a], 10**6)).deployment == a


# -- configuration ---------------------------------------------------------------------


def _doc(**extra: object) -> dict[str, object]:
    return {
        "providers": {"p": {"base_url": "http://x"}},
        "models": {
            "m": {
                "provider": "p",
                "limits": {"rpm": 100, "tpm": 1000},
                "deployments": [{"name": "k1"}, {"name": "k2", "limits": {"rpm": 5}}],
            }
        },
        **extra,
    }


def test_deployments_take_the_models_limits_unless_they_state_their_own() -> None:
    deps = parse_catalog(_doc(), env={}).models["m"].deployments
    assert [(d.name, d.rpm, d.tpm) for d in deps] == [("k1", 100, 1000), ("k2", 5, 0)]


def test_deployment_limits_override_by_key() -> None:
    deps = parse_catalog(_doc(deployment_limits={"p/m/k1": {"rpm": 7, "tpm": 70}}), env={}).models["m"].deployments
    assert [(d.rpm, d.tpm) for d in deps] == [(7, 70), (5, 0)]


def test_a_negative_limit_is_named() -> None:
    doc = _doc()
    doc["models"]["m"]["deployments"][1]["limits"] = {"rpm": -1}  # type: ignore[index]
    with pytest.raises(CatalogError, match=r"models\.m\.deployments\[1\]\.limits\.rpm: -1 is less than 0"):
        parse_catalog(doc, env={})
    with pytest.raises(CatalogError, match=r"deployment_limits\.p/m/k1\.tpm: -5 is less than 0"):
        parse_catalog(_doc(deployment_limits={"p/m/k1": {"tpm": -5}}), env={})


def test_an_unknown_deployment_is_named_with_the_known_ones() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(_doc(deployment_limits={"p/m/k3": {"rpm": 1}}), env={})
    assert "deployment_limits: 'p/m/k3' is not a deployment (provider/model/name); known: p/m/k1, p/m/k2" in str(
        info.value
    )


def test_an_unknown_limit_key_is_named() -> None:
    with pytest.raises(CatalogError, match="rqm"):
        parse_catalog(_doc(deployment_limits={"p/m/k1": {"rqm": 1}}), env={})


def test_a_negative_limit_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="interactive_limit_wait_s is -1"):
        RouterConfig(interactive_limit_wait_s=-1)
