"""One Generate or Complete call as the gateway's lifecycle sees it: domain values only."""

from __future__ import annotations

import dataclasses

from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatRequest


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayRequest:
    """A checked request, ready to run.

    Attributes:
        chat: What to ask the model, with the gateway's defaults filled in (``max_tokens``,
            ``request_id``) and the tenant the key belongs to.
        user: The client's end-user id (for user-scoped cache namespaces and the record).
        feature: The client's cost-attribution label.
        cache: How the request uses the cache.
    """

    chat: ChatRequest
    user: str
    feature: str
    cache: CachePolicy
