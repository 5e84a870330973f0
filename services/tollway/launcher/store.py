"""The launcher's one use of Redis: knowing when the redis-server it started is ready.

Kept in a store module because only `store.py` modules and `tollway.mesh.redis` import redis
(an import-linter contract, docs/architecture.md "House rules").
"""

from __future__ import annotations

import redis


def answers_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server at ``host:port`` answers PING now.

    Raises:
        redis.ConnectionError: Nothing accepts connections there yet (the launcher's poll
            treats any exception as "not ready").
    """
    client = redis.Redis(host=host, port=port, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    finally:
        client.close()
