"""One Generate or Complete call as the gateway's lifecycle sees it: domain values only."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatRequest
from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen

if TYPE_CHECKING:
    from tollway.gateway.grounding import RetrievalSpec
    from tollway.gateway.prompts_client import PromptRef, ResolvedPrompt

Priority = Literal["", "interactive", "normal", "batch"]
PRIORITIES: tuple[Priority, ...] = ("", "interactive", "normal", "batch")
# The budget service's counter names hold the conversation id: none of its separators.
_CONVERSATION_ID = re.compile(r"^[^|,/{}\s]{1,128}$")


@frozen(slots=True)
class GatewayRequest:
    """A checked request, ready to run.

    Attributes:
        chat: What to ask the model, with the gateway's defaults filled in (``max_tokens``,
            ``request_id``) and the tenant the key belongs to.
        user: The client's end-user id (for user-scoped cache namespaces and the record).
        feature: The client's cost-attribution label.
        cache: How the request uses the cache.
        api_key_id: The id of the key that authenticated the request (never the key).
        priority: How urgent the request is for budgets; "" leaves it to the tenant's plan.
        conversation_id: The conversation it belongs to, for per-conversation budgets.
        prompt_ref: The stored prompt the request names, not yet resolved (None: none).
        prompt: The prompt version the lifecycle resolved ``prompt_ref`` to; ``chat`` then
            holds its rendered messages and parameters. None until resolved, or without one.
        retrieval: The collection to ground the answer in (None: an ungrounded answer).
        settle_before_answer: Settle the budget before the answer's last event (a jobs worker's
            request: durable billing over latency); otherwise it is settled off the response path.
    """

    chat: ChatRequest
    user: str
    feature: str
    cache: CachePolicy
    api_key_id: str = ""
    priority: Priority = ""
    conversation_id: str = ""
    prompt_ref: PromptRef | None = None
    prompt: ResolvedPrompt | None = None
    retrieval: RetrievalSpec | None = None
    settle_before_answer: bool = False


def check_budget_fields(priority: str, conversation_id: str) -> None:
    """Checks the fields only budgets read, before anything is spent.

    Raises:
        InvalidArgument: An unknown priority, or a conversation id that is longer than 128
            characters or holds '|', ',', '/', braces or whitespace; each names its field.
    """
    bad: list[tuple[str, str]] = []
    if priority not in PRIORITIES:
        bad.append(("priority", f"{priority!r} is not one of interactive, normal, batch"))
    if conversation_id and not _CONVERSATION_ID.match(conversation_id):
        bad.append(("conversation_id", "at most 128 characters, without '|', ',', '/', braces or whitespace"))
    if bad:
        fields = ", ".join(f for f, _ in bad)
        raise InvalidArgument(f"invalid request: {bad[0][0]}: {bad[0][1]} (problems in: {fields})", bad)
