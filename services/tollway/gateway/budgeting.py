"""The budget on the gateway's request path: reserve before the router, settle after.

One reserve round trip before the router call; the settlement (commit or release) runs off
the response path, in a task of its own so a client that goes away cannot cancel it. Every
budget RPC is idempotent (by request id or reservation name), so the channel retries it
on UNAVAILABLE, and a settlement the budget service cannot take at all goes to a durable
outbox in the gateway's Redis (``tollway:budget:outbox``), which :meth:`Budgeting.drain`
replays once the service is back.

While the budget service cannot be reached, each tenant's policy decides: the budget
service tells the gateway with every reservation (fail closed by default for plans with a
dollar quota, open for pure rate limits), the gateway remembers the latest answer in
memory and in Redis, and uses ``admit_when_unknown`` for a tenant it never heard about.
A request admitted that way is charged later through the outbox (a reservation made with
``admitted_while_unavailable``, then its commit), so nothing escapes the ledger.
"""

from __future__ import annotations

import contextlib
import logging

import orjson

from tollway.common.chat import Usage
from tollway.common.tokens import count_tokens
from tollway.gateway.budget_client import BudgetClient, BudgetHold
from tollway.gateway.request import GatewayRequest
from tollway.gateway.store import GatewayStore
from tollway.mesh import redis as mesh_redis
from tollway.mesh.errors import DeadlineExceeded, FailedPrecondition, NotFound, TollwayError, Unavailable
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.gateway.budget")

# What "the budget service cannot be reached" looks like to a caller.
_DOWN = (Unavailable, DeadlineExceeded)
# Settlements refused because another attempt of the request id is (or will be) the one charged.
_ONCE = ("ALREADY_COMMITTED", "STALE_ATTEMPT")
# A reservation the budget service does not know (never written, or forgotten a day after it ended).
_LOST = "UNKNOWN_RESERVATION"


@frozen
class Admission:
    """A request the budget let through.

    Attributes:
        request: The request.
        hold: The reservation; None when the budget service was down and the tenant's
            policy admits (the call is charged later, through the outbox).
        input_tokens: The prompt tokens counted for the estimate.
        max_tokens: The max_tokens to send to the model.
    """

    request: GatewayRequest
    hold: BudgetHold | None
    input_tokens: int
    max_tokens: int


@frozen
class Settlement:
    """What the budget is told about a finished call: commit ``usage``, or release (None)."""

    usage: Usage | None
    partial: bool = False
    reason: str = ""


def settlement(
    *,
    completed: bool,
    failed: bool,
    routed: bool,
    usage: Usage,
    produced_text: str,
    input_tokens: int,
    reason: str,
) -> Settlement:
    """How a call that held budget is settled.

    Args:
        completed: The router reported the whole answer (``usage`` is the provider's).
        failed: The answer broke off after it started (``usage`` is the partial usage).
        routed: The router started the answer (a provider took the request).
        usage: The usage the router reported, if any.
        produced_text: The text the client was sent.
        input_tokens: The prompt tokens counted for the reservation.
        reason: Why the call ended, for a release's ledger entry.

    Returns:
        A commit of the real usage for a complete answer; a partial commit when a stream was
        cut with output or the client went away after the provider took the request (the
        input as reported or counted, the output as reported or counted from the deltas,
        whichever is larger); a release when nothing was produced.
    """
    if completed:
        return Settlement(usage)
    counted = count_tokens(produced_text) if produced_text else 0
    produced = usage.output_tokens > 0 or counted > 0
    if (failed and produced) or (not failed and routed):
        return Settlement(
            Usage(
                usage.input_tokens or input_tokens,
                max(usage.output_tokens, counted),
                usage.cached_input_tokens,
                usage.cache_write_input_tokens,
            ),
            partial=True,
        )
    return Settlement(None, reason=reason or "failed")


def _refused(hold: BudgetHold, exc: TollwayError) -> None:
    log.error(
        "the budget service refused a settlement; the reservation will expire",
        extra={"reservation": hold.name, "reason": exc.reason, "error": exc.message},
    )


def _charge(admission: Admission, outcome: Settlement, model: str, provider: str) -> dict[str, str]:
    """The outbox entry that charges ``admission``'s call from scratch: replayed, it reserves
    the estimate past every quota (``admitted_while_unavailable``) and settles it."""
    chat, request = admission.request.chat, admission.request
    return {
        "op": "charge",
        "tenant": chat.tenant,
        "key": request.api_key_id,
        "feature": request.feature,
        "conversation": request.conversation_id,
        "priority": request.priority,
        "model": chat.model,
        "request_id": chat.request_id,
        "estimate_in": str(admission.input_tokens),
        "max_tokens": str(admission.max_tokens),
        "answered_model": model,
        "provider": provider,
        "partial": "1" if outcome.partial else "0",
        "reason": outcome.reason,
        "release": "1" if outcome.usage is None else "0",
        **_usage_fields(outcome.usage or Usage()),
    }


def _usage_fields(usage: Usage) -> dict[str, str]:
    return {"in": str(usage.input_tokens), "out": str(usage.output_tokens), "cached": str(usage.cached_input_tokens)}


def _usage_of(f: dict[str, str]) -> Usage:
    return Usage(int(f.get("in") or 0), int(f.get("out") or 0), int(f.get("cached") or 0))


class Budgeting:
    """Reserves and settles one gateway process's requests against the budget service.

    Args:
        client: The budget service.
        store: The gateway's Redis (the outbox and the remembered outage policies).
        admit_when_unknown: Whether a tenant whose policy this gateway never learned is
            admitted while the budget service is down (False: refused, fail closed).
        drain_batch: Outbox entries replayed per :meth:`drain`.
    """

    def __init__(
        self, client: BudgetClient, store: GatewayStore, *, admit_when_unknown: bool = False, drain_batch: int = 100
    ) -> None:
        self.client = client
        self.store = store
        self.admit_when_unknown = admit_when_unknown
        self.drain_batch = drain_batch
        self._admits: dict[str, bool] = {}

    async def admit(self, request: GatewayRequest, *, counted: int | None = None) -> Admission:
        """Reserves the request's estimate, or applies the tenant's outage policy.

        ``counted``: the prompt's tokens when the caller counted them already (see
        :meth:`BudgetClient.estimate`).

        Raises:
            ResourceExhausted: A quota has no room (QuotaFailure names it; retry-after).
            InvalidArgument, NotFound: The budget service refused the request's fields.
            Unavailable: The budget service cannot be reached and the tenant's policy
                refuses (reason ``BUDGET_UNAVAILABLE``).
        """
        chat = request.chat
        input_tokens, max_tokens = self.client.estimate(chat, counted)
        try:
            hold = await self.client.reserve_counted(
                model=chat.model,
                input_tokens=input_tokens,
                max_output_tokens=max_tokens,
                request_id=chat.request_id,
                tenant=chat.tenant,
                api_key_id=request.api_key_id,
                feature=request.feature,
                conversation_id=request.conversation_id,
                priority=request.priority,
            )
        except _DOWN as exc:
            if await self._admits_while_down(chat.tenant):
                log.warning(
                    "budget service unreachable; admitting under the tenant's policy, to be charged later",
                    extra={"tenant": chat.tenant, "request_id": chat.request_id, "error": exc.message},
                )
                return Admission(request, None, input_tokens, max_tokens)
            # Said here because the client only sees a 503: an operator must learn why.
            log.warning(
                "budget service unreachable; refusing under the tenant's policy",
                extra={"tenant": chat.tenant, "request_id": chat.request_id, "error": exc.message},
            )
            raise Unavailable(
                f"the budget service cannot be reached ({exc.message}) and tenant {chat.tenant!r} "
                "is refused while it is down; retry shortly",
                retry_after_s=1.0,
                reason="BUDGET_UNAVAILABLE",
                metadata={"tenant": chat.tenant},
            ) from None
        if hold.admit_when_unavailable is not None and self._admits.get(chat.tenant) != hold.admit_when_unavailable:
            # Rare (a tenant's first request in this process, or a changed plan): remembered in
            # Redis so that a replica that never reserved for the tenant knows it too.
            self._admits[chat.tenant] = hold.admit_when_unavailable
            try:
                await self.store.set_budget_policy(chat.tenant, hold.admit_when_unavailable)
            except Exception as exc:
                if not mesh_redis.is_outage(exc):
                    raise
        return Admission(request, hold, hold.input_tokens, hold.max_output_tokens)

    async def _admits_while_down(self, tenant: str) -> bool:
        known = self._admits.get(tenant)
        if known is not None:
            return known
        try:
            stored = await self.store.budget_policy(tenant)
        except Exception as exc:
            if not mesh_redis.is_outage(exc):
                raise
            stored = None
        if stored is not None:
            self._admits[tenant] = stored
            return stored
        return self.admit_when_unknown

    async def settle(self, admission: Admission, outcome: Settlement, *, model: str = "", provider: str = "") -> None:
        """Commits or releases ``admission`` (or queues it when the budget service is down).

        Never raises: a settlement the service refuses is logged (its reservation then
        expires, and the ledger says so). A commit of a reservation the service does not know
        is charged anew through the outbox, as a call admitted while it was down: a hold
        admitted from a lease dies unwritten with the budget process that held it, and the
        call it admitted must still be charged.

        Args:
            admission: What :meth:`admit` returned.
            outcome: What :func:`settlement` decided.
            model: The model that answered, when it differs from the one requested.
            provider: The provider that answered.
        """
        hold = admission.hold
        if hold is None:
            await self._queue(_charge(admission, outcome, model, provider))
            return
        try:
            if outcome.usage is None:
                await self.client.release(hold, outcome.reason)
            else:
                await self.client.commit(hold, outcome.usage, model=model, provider=provider, partial=outcome.partial)
        except _DOWN:
            # The attempt goes with it: replayed after a retry of the request id reserved anew,
            # this settlement must not settle the retry's hold.
            entry = {"op": "release" if outcome.usage is None else "commit", "name": hold.name}
            entry |= {"attempt": str(hold.attempt), "reason": outcome.reason, "model": model, "provider": provider}
            entry |= {"partial": "1" if outcome.partial else "0", **_usage_fields(outcome.usage or Usage())}
            if outcome.usage is not None:
                # Charged anew if the budget service no longer knows the hold (see _replay).
                entry["charge"] = orjson.dumps(_charge(admission, outcome, model, provider)).decode()
            await self._queue(entry)
        except NotFound as exc:
            if exc.reason != _LOST:
                _refused(hold, exc)
                return
            if outcome.usage is None:
                return  # a hold the service lost holds nothing any more: nothing to give back
            # A hold admitted from a lease dies unwritten with the budget process that held it
            # (it writes holds in batches); the call happened all the same, so it is charged as
            # a call admitted while the service was down.
            log.warning(
                "the budget service does not know this reservation; charging the call anew",
                extra={"reservation": hold.name, "request_id": admission.request.chat.request_id},
            )
            await self._queue(_charge(admission, outcome, model, provider))
        except TollwayError as exc:
            if exc.reason in _ONCE:
                # A rerun of a request id already charged (a job item retried after its first
                # answer was committed), or a run whose hold expired and whose request id a
                # later attempt holds: the budget charges a request id once, by design.
                log.info(
                    "request id charged by another attempt; this run is not charged again",
                    extra={"reservation": hold.name, "attempt": hold.attempt, "error": exc.message},
                )
                return
            _refused(hold, exc)

    async def _queue(self, entry: dict[str, str]) -> None:
        try:
            await self.store.add_budget_pending(entry)
        except Exception as exc:
            # Budget and Redis both gone: the reservation (if any) expires and is ledgered so.
            log.error("cannot queue a budget settlement", extra={"entry": entry, "error": repr(exc)})

    async def record_saved(self, request: GatewayRequest, model: str, usage: Usage, tier: str) -> None:
        """Records what a cache hit saved. Never raises: the saving is a report, not a charge."""
        chat = request.chat
        try:
            await self.client.record_saved(
                tenant=chat.tenant,
                model=model,
                usage=usage,
                request_id=chat.request_id,
                cache_tier=tier,
                api_key_id=request.api_key_id,
                feature=request.feature,
            )
        except TollwayError as exc:
            log.info("saved cost not recorded", extra={"request_id": chat.request_id, "error": exc.message})

    async def drain(self) -> int:
        """Replays the oldest outbox entries; returns how many were settled.

        Safe on every replica at once: each replay is idempotent (a charge reserves by
        request id, commits and releases go by reservation name). Stops at the first entry
        the service still cannot take; an entry it refuses for good is logged and dropped.
        """
        entries = await self.store.budget_pending(self.drain_batch)
        done: list[str] = []
        for entry_id, fields in entries:
            try:
                await self._replay(fields)
            except _DOWN:
                break
            except TollwayError as exc:
                (log.info if exc.reason in _ONCE else log.error)(
                    "dropping a budget settlement the service refuses",
                    extra={"entry": fields, "reason": exc.reason, "error": exc.message},
                )
            done.append(entry_id)
        await self.store.remove_budget_pending(done)
        return len(done)

    async def _replay(self, f: dict[str, str]) -> None:
        op = f["op"]
        name = f.get("name", "")
        # Entries queued before attempts were recorded settle whichever attempt holds the id.
        attempt = int(f.get("attempt") or 0)
        if op == "charge":
            hold = await self.client.reserve_counted(
                model=f["model"],
                input_tokens=max(1, int(f["estimate_in"])),
                max_output_tokens=max(1, int(f["max_tokens"])),
                request_id=f["request_id"],
                tenant=f["tenant"],
                api_key_id=f.get("key", ""),
                feature=f.get("feature", ""),
                conversation_id=f.get("conversation", ""),
                priority=f.get("priority", ""),
                admitted_while_unavailable=True,
            )
            name, attempt = hold.name, hold.attempt
            op = "release" if f.get("release") == "1" else "commit"
        if op == "release":
            # FailedPrecondition: committed meanwhile by another path, or a later attempt holds
            # the request id (STALE_ATTEMPT): nothing of this attempt's is held any more.
            with contextlib.suppress(FailedPrecondition):
                await self.client.release(name, f.get("reason", ""), attempt=attempt)
            return
        try:
            await self.client.commit(
                name,
                _usage_of(f),
                attempt=attempt,
                model=f.get("answered_model", "") if f["op"] == "charge" else f.get("model", ""),
                provider=f.get("provider", ""),
                partial=f.get("partial") == "1",
            )
        except NotFound as exc:
            if exc.reason != _LOST or f["op"] != "commit" or not f.get("charge"):
                raise
            # The hold died unwritten with the budget process that held it (see settle).
            await self._replay(orjson.loads(f["charge"]))
