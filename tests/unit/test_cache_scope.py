"""Scope isolation: a user-scoped entry never reaches another user, a tenant-scoped one
never another tenant, and the index's vectorised pre-filter agrees with the rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tollway.cache.index import IndexParams, IndexRecord, Interner, SemanticIndex
from tollway.cache.scope import Scope, strictest, visible

SCOPES = (Scope.GLOBAL, Scope.TENANT, Scope.USER)
IDS = ("", "a", "b")


def test_parse_and_order() -> None:
    assert Scope.parse(" Tenant ") is Scope.TENANT
    for bad in ("unspecified", "world", ""):
        with pytest.raises(ValueError, match="global, tenant or user"):
            Scope.parse(bad)
    assert strictest(Scope.GLOBAL, Scope.USER, Scope.TENANT) is Scope.USER
    assert strictest(Scope.TENANT, Scope.UNSPECIFIED) is Scope.TENANT


def test_global_entries_are_visible_to_everyone() -> None:
    assert visible(
        entry_scope=Scope.GLOBAL, entry_tenant="a", entry_user="x", lookup_scope=Scope.GLOBAL, tenant_id="", user_id=""
    )


@pytest.mark.parametrize("lookup_scope", SCOPES)
def test_tenant_entries_stay_in_their_tenant(lookup_scope: Scope) -> None:
    def seen(tenant: str, user: str = "x") -> bool:
        return visible(
            entry_scope=Scope.TENANT,
            entry_tenant="a",
            entry_user="x",
            lookup_scope=lookup_scope,
            tenant_id=tenant,
            user_id=user,
        )

    assert not seen("b")
    assert not seen("")
    assert seen("a")
    # Same tenant, other user: visible unless the lookup itself is user-scoped.
    assert seen("a", "y") is (lookup_scope != Scope.USER)


@pytest.mark.parametrize("lookup_scope", SCOPES)
def test_user_entries_stay_with_their_user(lookup_scope: Scope) -> None:
    def seen(tenant: str, user: str) -> bool:
        return visible(
            entry_scope=Scope.USER,
            entry_tenant="a",
            entry_user="x",
            lookup_scope=lookup_scope,
            tenant_id=tenant,
            user_id=user,
        )

    assert seen("a", "x")
    assert not seen("a", "y")
    assert not seen("b", "x")  # the same user name in another tenant is another user
    assert not seen("a", "")
    assert not seen("", "x")


def test_tightening_the_namespace_hides_looser_entries() -> None:
    # Stored when the namespace was global; it is now tenant-scoped.
    args = dict(entry_scope=Scope.GLOBAL, entry_tenant="a", entry_user="", lookup_scope=Scope.TENANT)
    assert visible(**args, tenant_id="a", user_id="")
    assert not visible(**args, tenant_id="b", user_id="")


def test_entries_without_ids_never_match_empty_ids() -> None:
    assert not visible(
        entry_scope=Scope.TENANT, entry_tenant="", entry_user="", lookup_scope=Scope.TENANT, tenant_id="", user_id=""
    )
    assert not visible(
        entry_scope=Scope.USER, entry_tenant="a", entry_user="", lookup_scope=Scope.USER, tenant_id="a", user_id=""
    )


def test_unknown_scope_fails_closed() -> None:
    assert not visible(
        entry_scope=Scope.UNSPECIFIED,
        entry_tenant="a",
        entry_user="x",
        lookup_scope=Scope.UNSPECIFIED,
        tenant_id="a",
        user_id="y",
    )


def test_index_prefilter_agrees_with_the_rule_on_every_combination() -> None:
    rng = np.random.default_rng(7)
    params = IndexParams(dim=8, initial_capacity=64, k=64, max_k=64, ef_search=128)
    index = SemanticIndex(params, Interner())
    combos = list(itertools.product(SCOPES, IDS, IDS))
    vector = rng.standard_normal(8).astype(np.float32)
    index.add(
        [
            IndexRecord(
                i + 1, context=5, scope=s, tenant_id=t, user_id=u, expires_ms=10, stale_until_ms=20, vector=vector
            )
            for i, (s, t, u) in enumerate(combos)
        ]
    )
    for lookup_scope, tenant, user in itertools.product(SCOPES, IDS, IDS):
        found = index.search(
            vector,
            context=5,
            lookup_scope=lookup_scope,
            tenant_id=tenant,
            user_id=user,
            now_ms=0,
            allow_stale=False,
            threshold=0.5,
        )
        got = {c.entry_id for c in found.candidates}
        expected = {
            i + 1
            for i, (s, t, u) in enumerate(combos)
            if visible(
                entry_scope=s, entry_tenant=t, entry_user=u, lookup_scope=lookup_scope, tenant_id=tenant, user_id=user
            )
        }
        assert got == expected, (lookup_scope, tenant, user)
