"""On-behalf-of credentials: how a mesh service (the jobs workers) calls the gateway as a tenant's
API key without ever holding the key.

When a job is submitted, the jobs service asks the gateway who the key belongs to and keeps only the
answer (tenant, key id) and the key's SHA-256, which is what the gateway itself stores: the key is
never written anywhere. A worker then presents, as its bearer token,

    twobo.<payload>.<signature>

where ``payload`` is the unpadded base64url of compact JSON ``{"t": tenant, "k": key_id, "h":
key_sha256_hex, "s": subject, "e": expiry_unix_s}`` and ``signature`` is the hex HMAC-SHA256 of the
payload text under the mesh secret (``TOLLWAY_DELEGATION_SECRET``, shared by the jobs service and the
gateway, never by clients). The gateway accepts it only when the signature matches, it has not
expired, and the key it names is still live and still the tenant's: revoking a key stops its queued
jobs too. A token is short-lived (minted per call), so one that leaks from a log is soon worthless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from tollway.mesh.frozen import frozen

PREFIX = "twobo."
# Long enough for one gateway call; a worker mints a fresh token per attempt.
DEFAULT_TTL_S = 900
# Below this the secret is guessable by brute force in a mesh that leaks a token.
MIN_SECRET_BYTES = 16


class DelegationError(ValueError):
    """A token that is malformed, wrongly signed or expired (the message says which)."""


@frozen
class Delegation:
    """Whom a token speaks for, and about what.

    Attributes:
        tenant: The tenant the key bills to.
        key_id: The key's id.
        key_sha256: The hex SHA-256 of the key (what the gateway stores the key under).
        subject: What the call is for, for example ``jobs/<id>`` (logged, not checked).
        expires_s: Unix time after which the token is refused.
    """

    tenant: str
    key_id: str
    key_sha256: str
    subject: str
    expires_s: int


def key_sha256(key: str) -> str:
    """The stored form of an API key, as the gateway's key ring computes it."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_delegation(token: str) -> bool:
    """True when ``token`` is shaped as an on-behalf-of token (not that it is valid)."""
    return token.startswith(PREFIX)


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def check_secret(secret: bytes) -> None:
    """Raises ValueError when ``secret`` is too short to sign with."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"Config 'TOLLWAY_DELEGATION_SECRET' has {len(secret)} bytes. Must be at least {MIN_SECRET_BYTES}."
        )


def sign(secret: bytes, d: Delegation) -> str:
    """The token for ``d`` under ``secret``."""
    check_secret(secret)
    body = json.dumps(
        {"t": d.tenant, "k": d.key_id, "h": d.key_sha256, "s": d.subject, "e": d.expires_s},
        separators=(",", ":"),
        sort_keys=True,
    )
    payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{PREFIX}{payload}.{_mac(secret, payload)}"


def mint(secret: bytes, tenant: str, key_id: str, key_hash: str, subject: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    """A token valid for ``ttl_s`` from now."""
    return sign(secret, Delegation(tenant, key_id, key_hash, subject, int(time.time()) + ttl_s))


def verify(secret: bytes, token: str, now_s: float | None = None) -> Delegation:
    """The delegation a token carries, once its signature and expiry are checked.

    Raises:
        DelegationError: The token is malformed, its signature does not match (forged, or
            signed with another secret), or it has expired.
    """
    check_secret(secret)
    if not is_delegation(token):
        raise DelegationError("not an on-behalf-of token")
    payload, dot, mac = token[len(PREFIX) :].rpartition(".")
    if not dot or not payload:
        raise DelegationError("malformed on-behalf-of token")
    # Compared before the payload is even decoded: nothing unsigned is parsed.
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise DelegationError("on-behalf-of token signature does not match")
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        d = Delegation(str(fields["t"]), str(fields["k"]), str(fields["h"]), str(fields["s"]), int(fields["e"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DelegationError(f"malformed on-behalf-of token payload ({exc})") from None
    if d.expires_s < (time.time() if now_s is None else now_s):
        raise DelegationError(f"on-behalf-of token for {d.subject} expired")
    return d
