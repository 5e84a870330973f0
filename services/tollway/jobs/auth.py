"""Who is calling: the gateway vouches for an API key, and the jobs service keeps only the answer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from tollway.common.delegation import key_sha256
from tollway.jobs.types import Owner
from tollway.mesh.errors import Unauthenticated

Lookup = Callable[[str], Awaitable[Owner]]


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer ...`` header, if any."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Callers:
    """Authenticates callers through the gateway (``lookup`` is its GetCaller, which raises
    Unauthenticated for a bad key); a key it vouched for is trusted for ``ttl_s``, so a revoked key
    stops working here within that time (its queued jobs stop at once: the gateway checks the key
    again on every run)."""

    def __init__(self, lookup: Lookup, ttl_s: float = 10.0) -> None:
        self.lookup = lookup
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[Owner, float]] = {}

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Owner:
        """The caller's owner record, with the key's SHA-256 (never the key).

        Raises:
            Unauthenticated: No bearer token, or one the gateway refuses.
        """
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                "missing API key: send 'authorization: Bearer <key>' "
                "(create one with `tollway keys create --tenant NAME`)",
                reason="API_KEY_MISSING",
            )
        digest = key_sha256(token)
        now = time.monotonic()
        hit = self._known.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        got = await self.lookup(token)
        owner = Owner(got.tenant, got.key_id, digest, got.default_priority)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[digest] = (owner, now + self.ttl_s)
        return owner
