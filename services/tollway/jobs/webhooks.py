"""Webhook deliveries: which URLs are allowed, how a delivery is signed, when it is tried again.

The signature scheme (receivers implement it):

- headers ``x-tollway-timestamp: <unix seconds>`` and ``x-tollway-signature: v1=<hex>``, where
  ``<hex>`` is HMAC-SHA256, keyed with the service's webhook secret, of the bytes
  ``<timestamp> + "." + <body>``;
- a receiver recomputes it over the raw body, compares in constant time, and refuses a timestamp
  older than its tolerance (5 minutes in :func:`verify`), which stops replays of a captured delivery;
- ``x-tollway-delivery`` is the job name, the same on every attempt: deliveries are at least once
  (a worker may die between the receiver's 2xx and recording it), so a receiver drops repeats by it.

A URL must be http or https, and every address its host resolves to must be public, or inside one of
the configured allow ranges (loopback, private, link-local, multicast and reserved ranges are refused
by default, so a job cannot make the service probe the internal network). The host is resolved
again before each delivery, so a name that later points inside is refused then too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import socket
import time
import urllib.parse
from collections.abc import Sequence

from tollway.mesh.errors import InvalidArgument

SIGNATURE_HEADER = "x-tollway-signature"
TIMESTAMP_HEADER = "x-tollway-timestamp"
DELIVERY_HEADER = "x-tollway-delivery"
MAX_URL_CHARS = 2048
DEFAULT_TOLERANCE_S = 300

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``x-tollway-signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def signed_headers(secret: bytes, body: bytes, delivery_id: str, now_s: float | None = None) -> dict[str, str]:
    """Every header a delivery carries."""
    ts = int(time.time() if now_s is None else now_s)
    return {
        "content-type": "application/json",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: signature(secret, ts, body),
        DELIVERY_HEADER: delivery_id,
    }


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str,
    sig: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> bool:
    """What a receiver does: True when ``sig`` signs ``body`` at ``timestamp``, within tolerance."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now_s is None else now_s) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sig, signature(secret, ts, body))


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Wait after failed attempt number ``attempt`` (1-based): base doubling, capped, with up to
    25 % jitter so that a receiver's recovery is not met by every retry at once."""
    wait = min(max_ms, base_ms * 2 ** max(0, attempt - 1))
    return int(wait * (1 + 0.25 * (rng or random).random()))


def _forbidden(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


def _refuse(url: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"webhook_url {url[:200]!r} {why}",
        [("webhook_url", why)],
        reason="WEBHOOK_URL_INVALID",
    )


def parse_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL.

    Raises:
        InvalidArgument: Not http(s), no host, or over :data:`MAX_URL_CHARS`.
    """
    if len(url) > MAX_URL_CHARS:
        raise _refuse(url, f"is longer than {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _refuse(url, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise _refuse(url, "has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse(url, "has a port that is not a number from 1 to 65535") from None
    return parts.hostname, port


def check_addresses(url: str, addresses: Sequence[str], allow: Sequence[Network]) -> None:
    """Refuses ``url`` when any address its host resolved to is forbidden and not allowed.

    Raises:
        InvalidArgument: The violation names the address and how to allow it.
    """
    if not addresses:
        raise _refuse(url, "has a host that does not resolve")
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if _forbidden(addr) and not any(addr in net for net in allow):
            raise _refuse(
                url,
                f"points at {addr}, a private, loopback or reserved address; use a public address "
                "(or add its range to TOLLWAY_JOBS_WEBHOOK_ALLOW_CIDRS)",
            )


class UrlPolicy:
    """Checks webhook URLs against the allow-list, resolving names without blocking the loop."""

    def __init__(self, allow_cidrs: Sequence[str]) -> None:
        self.allow: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in allow_cidrs)

    async def check(self, url: str) -> None:
        """Raises InvalidArgument (naming what to fix) unless ``url`` may be delivered to now."""
        host, port = parse_url(url)
        try:
            addresses = [ipaddress.ip_address(host).compressed]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise _refuse(url, f"has a host {host!r} that does not resolve") from None
            addresses = sorted({str(info[4][0]) for info in infos})
        check_addresses(url, addresses, self.allow)
