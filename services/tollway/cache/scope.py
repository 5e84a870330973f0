"""Who may be served an entry: global, one tenant, or one user of one tenant.

The rule is one function, :func:`visible`, so that tier 1, tier 2 and the index's
vectorised pre-filter cannot disagree; tests check the index against it.
"""

from __future__ import annotations

import enum


class Scope(enum.IntEnum):
    """Scopes, ordered from the loosest to the strictest (the numbers are the proto's)."""

    UNSPECIFIED = 0
    GLOBAL = 1
    TENANT = 2
    USER = 3

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parses ``global``, ``tenant`` or ``user`` (any case).

        Raises:
            ValueError: Any other text; the message lists the valid ones.
        """
        try:
            scope = cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not a scope (use global, tenant or user)") from None
        if scope is cls.UNSPECIFIED:
            raise ValueError(f"{text!r} is not a scope (use global, tenant or user)")
        return scope


def strictest(*scopes: Scope | int) -> Scope:
    """The strictest of ``scopes``; a request can only tighten a namespace's scope."""
    return Scope(max(int(s) for s in scopes))


def visible(
    *,
    entry_scope: Scope | int,
    entry_tenant: str,
    entry_user: str,
    lookup_scope: Scope | int,
    tenant_id: str,
    user_id: str,
) -> bool:
    """Whether a requester may be served an entry.

    The scope applied is the strictest of the entry's own (recorded when it was stored)
    and the lookup's (namespace plus request), so tightening a namespace's scope in the
    configuration immediately hides entries stored under a looser one. Empty ids never
    match, so an entry stored without a tenant cannot leak into a tenant-scoped lookup.

    Args:
        entry_scope: The effective scope the entry was stored with.
        entry_tenant: The tenant that stored the entry ("" if none was given).
        entry_user: The user that stored the entry ("" if none was given).
        lookup_scope: The effective scope of the lookup.
        tenant_id: The requesting tenant.
        user_id: The requesting user.
    """
    scope = strictest(entry_scope, lookup_scope)
    if scope == Scope.UNSPECIFIED:
        scope = Scope.USER  # fail closed: an unknown scope is treated as the strictest
    if scope == Scope.GLOBAL:
        return True
    same_tenant = bool(tenant_id) and entry_tenant == tenant_id
    if scope == Scope.TENANT:
        return same_tenant
    return same_tenant and bool(user_id) and entry_user == user_id
