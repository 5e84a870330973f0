"""Request headers that travel with a request through every hop of the mesh.

``x-canary: 1`` makes Envoy route to a service's canary. For a canary of an inner service
(the router behind the gateway) to be reachable, the header must go on to each call the
request causes. The server side captures the headers (in ``rpc_errors``, which wraps every
servicer method); clients add :func:`outgoing` to their call metadata.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

# x-tollway-allow-fallback: a client's per-request model-fallback policy, read by the router.
FORWARDED = ("x-canary", "x-tollway-allow-fallback")

_current: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("tollway_forwarded", default=())


def capture(metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
    """Remembers the forwarded headers of the request being served (this task and its children)."""
    if not metadata:  # most in-process calls carry none
        _current.set(())
        return
    found = tuple((k, v if isinstance(v, str) else v.decode()) for k, v in metadata if k in FORWARDED)
    _current.set(found)


def outgoing() -> tuple[tuple[str, str], ...]:
    """The headers to send on a call made on behalf of the current request."""
    return _current.get()
