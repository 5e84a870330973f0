"""How a request uses the answer cache, and which cache tier answered it.

One vocabulary for the gateway, the cache and the OpenAI front end. The values are the
names call records, metrics and the ``x-tollway-cache-tier`` header show;
:mod:`tollway.common.codec` maps them to ``tollway.common.v1``.
"""

from __future__ import annotations

import enum

from tollway.mesh.frozen import frozen


class CacheTier(enum.StrEnum):
    """Which tier answered a request."""

    NOT_CONSULTED = ""  # the cache was not asked (bypassed, or no cache configured)
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"
    STALE = "stale"

    @property
    def is_hit(self) -> bool:
        """Whether a cached answer was served."""
        return self in _HITS


_HITS = frozenset({CacheTier.EXACT, CacheTier.SEMANTIC, CacheTier.STALE})


class CacheMode(enum.StrEnum):
    """How a request uses the cache."""

    NORMAL = ""  # look up, and store a complete answer
    BYPASS = "bypass"  # neither look up nor store
    REFRESH = "refresh"  # skip the lookup, store the fresh answer


@frozen(slots=True)
class CachePolicy:
    """A request's cache settings.

    Attributes:
        namespace: The namespace to look up and store in ("default" when the request named none).
        mode: How the cache is used.
    """

    namespace: str = "default"
    mode: CacheMode = CacheMode.NORMAL
