"""API keys: made once, shown once, stored only as a SHA-256 hash, mapped to a tenant."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Sequence

from tollway.common import delegation
from tollway.gateway.store import GatewayStore
from tollway.gateway.validation import check_metadata
from tollway.mesh import tracing
from tollway.mesh.errors import InvalidArgument, Unauthenticated
from tollway.mesh.frozen import frozen

KEY_PREFIX = "tw-"
# A key's id is its first characters (`tw-AbC123`): enough to tell keys apart in a list, and
# nothing an attacker could use (the key carries 256 random bits).
_KEY_ID_LENGTH = len(KEY_PREFIX) + 6
# The shortest id prefix `revoke` accepts, so that a slip ("tw-") cannot revoke a tenant's only key.
MIN_ID_PREFIX = 4
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@frozen
class Tenant:
    """Who a request is billed to; ``priority`` is the key's default budget priority ("": the plan's)."""

    name: str
    key_id: str
    priority: str = ""
    # A jobs worker running a submitted job (an on-behalf-of token): its answer waits for the
    # budget settlement, so a gateway killed right after answering cannot leave a job unbilled.
    delegated: bool = False


def hash_key(key: str) -> str:
    """The stored form of a key. Keys carry 256 random bits, so a plain hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer ...`` header, if any."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class KeyRing:
    """Creates and verifies API keys; verified keys are trusted for ``ttl_s`` in memory."""

    def __init__(self, store: GatewayStore, ttl_s: float = 10.0, delegation_secret: bytes = b"") -> None:
        self.store = store
        self.ttl_s = ttl_s
        # The mesh secret on-behalf-of tokens are signed with (tollway.common.delegation);
        # empty: such tokens are refused.
        self.delegation_secret = delegation_secret
        self._verified: dict[str, tuple[Tenant, float]] = {}

    async def create(self, tenant: str, priority: str = "") -> tuple[str, str]:
        """Makes a key for ``tenant``; returns (key, key_id). The key is not stored anywhere.

        ``priority`` (interactive, normal or batch) is the budget priority of the key's
        requests that set none; "" leaves it to the tenant's plan.

        Raises:
            InvalidArgument: The tenant name is not 1-63 lowercase letters, digits, '-' or
                '_', or the priority is not one of the three.
        """
        if priority not in ("", "interactive", "normal", "batch"):
            raise InvalidArgument(
                f"priority {priority!r} is not one of interactive, normal, batch",
                [("priority", "interactive, normal or batch")],
            )
        if not _TENANT.match(tenant):
            raise InvalidArgument(
                f"tenant {tenant!r} is not a valid name: use 1-63 lowercase letters, digits, '-' or '_'",
                [("tenant", "lowercase letters, digits, '-' and '_', starting with a letter or digit")],
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = key[:_KEY_ID_LENGTH]
        record = {"tenant": tenant, "key_id": key_id, "created_time": str(int(time.time()))}
        if priority:
            record["priority"] = priority
        await self.store.put_key(hash_key(key), record)
        return key, key_id

    async def revoke(self, key_or_id: str) -> str | None:
        """Revokes one key, named by the key itself or by its id as ``tollway keys list`` prints it.

        An id may be shortened to a prefix of at least ``MIN_ID_PREFIX`` characters after
        ``tw-``, and may keep the list's trailing ellipsis. Revoking is idempotent: a key that
        is already gone is "no match".

        Returns:
            The id of the revoked key, or None when no key matches.

        Raises:
            InvalidArgument: The id is too short to name a key, or matches more than one key.
        """
        given = key_or_id.strip().rstrip("….")
        if len(given) > _KEY_ID_LENGTH:
            # A whole key: its hash is the record's name, no scan needed.
            digest = hash_key(given)
            record = await self.store.get_key(digest)
            matches = [] if record is None else [(digest, record)]
        else:
            if not given.startswith(KEY_PREFIX) or len(given) < len(KEY_PREFIX) + MIN_ID_PREFIX:
                raise InvalidArgument(
                    f"{given!r} is not a key id: give the id `tollway keys list` prints "
                    f"({KEY_PREFIX} and {_KEY_ID_LENGTH - len(KEY_PREFIX)} characters, at least "
                    f"{MIN_ID_PREFIX} of them) or the whole key",
                    [("key", f"a key id ({KEY_PREFIX}AbC123) or a whole key")],
                )
            matches = [(h, r) for h, r in await self.store.list_keys_with_hashes() if r["key_id"].startswith(given)]
        if len(matches) > 1:
            listed = ", ".join(f"{r['key_id']}… (tenant {r['tenant']})" for _, r in matches)
            raise InvalidArgument(
                f"{given!r} matches {len(matches)} keys: {listed}; nothing was revoked. Give more of the id, "
                "or the whole key when two keys share an id",
                [("key", "an id prefix that matches one key")],
            )
        if not matches:
            return None
        digest, record = matches[0]
        self._verified.pop(digest, None)
        return record["key_id"] if await self.store.delete_key(digest) else None

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Tenant:
        """The tenant of the request's key.

        The headers are checked first: every RPC authenticates before it reads anything else.

        Raises:
            InvalidArgument: A header the gateway reads is not printable ASCII.
            Unauthenticated: No bearer token, or one that is not a live key.
        """
        with tracing.stage("gateway", "auth"):
            return await self._authenticate(metadata)

    async def _authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Tenant:
        check_metadata(metadata)
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                "missing API key: send 'authorization: Bearer <key>' (create one with "
                "`tollway keys create --tenant NAME`)",
                reason="API_KEY_MISSING",
            )
        if delegation.is_delegation(token):
            return await self._delegated(token)
        digest = hash_key(token)
        now = time.monotonic()
        hit = self._verified.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await self.store.get_key(digest)
        if record is None:
            self._verified.pop(digest, None)
            raise Unauthenticated(
                "invalid API key: it is unknown or revoked; check the key or create a new one",
                reason="API_KEY_INVALID",
            )
        tenant = Tenant(name=record["tenant"], key_id=record["key_id"], priority=record.get("priority", ""))
        self._verified[digest] = (tenant, now + self.ttl_s)
        return tenant

    async def _delegated(self, token: str) -> Tenant:
        """The tenant of an on-behalf-of token (a jobs worker running a submitted job).

        The key it names is looked up each time (no in-memory trust): a job runs once, and a
        revoked key must stop its queued jobs.

        Raises:
            Unauthenticated: Delegation is not configured here, the token is forged, expired or
                malformed, or its key was revoked or now belongs to another tenant.
        """
        if not self.delegation_secret:
            raise Unauthenticated(
                "on-behalf-of tokens are not accepted: this gateway has no TOLLWAY_DELEGATION_SECRET",
                reason="DELEGATION_NOT_CONFIGURED",
            )
        try:
            d = delegation.verify(self.delegation_secret, token)
        except delegation.DelegationError as exc:
            raise Unauthenticated(f"invalid on-behalf-of token: {exc}", reason="DELEGATION_INVALID") from None
        record = await self.store.get_key(d.key_sha256)
        if record is None or record["tenant"] != d.tenant or record["key_id"] != d.key_id:
            raise Unauthenticated(
                f"the API key {d.key_id}… that submitted {d.subject} is revoked; submit again with a live key",
                reason="API_KEY_INVALID",
            )
        return Tenant(name=d.tenant, key_id=d.key_id, priority=record.get("priority", ""), delegated=True)
