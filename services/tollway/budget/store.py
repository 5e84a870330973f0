"""The budget's Redis layout; the only module of the budget service that talks to Redis.

Keys (``{p}`` is the prefix, ``tw:budget`` by default; ``{T}`` the tenant as hash tag, so all
keys one script touches sit in one Redis Cluster slot and every script runs unchanged on a
cluster)::

    {p}:{T}:ctr          HASH   every counter of the tenant: subject|unit|window|start|end -> used
    {p}:{T}:r:<id>       HASH   one reservation (state, amounts held, rates, counters, result)
    {p}:{T}:open         ZSET   reservations still held, by the time they expire (ms)
    {p}:{T}:ledger       STREAM one entry per reserve, commit, release, expiry, prune and saved
    {p}:{T}:convt        ZSET   conversation counters by last use (ms), to forget idle ones
    {p}:{T}:u:<date>     HASH   committed usage of one UTC day: <group>|<metric> -> sum
    {p}:{T}:saved:<id>   STRING a cache hit already recorded (RecordSavedCost is idempotent)
    {p}:tenants          SET    tenants that ever reserved (the sweeper's work list)
    {p}:overrides        HASH   tenant -> SetBudget override (JSON)

Reserve, commit, release, expiry and prune are each ONE Lua script: the counters change and
the ledger entry that explains the change is appended in the same atomic step, so the two
cannot disagree, and every ledger entry lists the counters it changed and by how much per
unit (``tok``, ``usd``, ``req``). The steady state costs one round trip per reserve and one
per commit (EVALSHA). Counter amounts are integers (tokens, nano-dollars, requests); Lua's
doubles are exact for them up to 2^53.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping, Sequence

import redis.asyncio as aioredis

from tollway.budget.quota import Demand
from tollway.budget.types import Unit

_COMMON = r"""
local function s(n) return string.format('%d', n) end
local function unit_of(f) return string.match(f, '^[^|]*|(%a+)|') end
local function split(list)
  local out = {}
  if list and list ~= '' then for f in string.gmatch(list, '[^,]+') do out[#out + 1] = f end end
  return out
end
local function apply(ctr, fields, delta)
  for _, f in ipairs(fields) do
    local d = delta[unit_of(f)]
    if d ~= 0 then redis.call('HINCRBY', ctr, f, s(d)) end
  end
end
"""

# KEYS: ctr, record, open, ledger, convt.
# ARGV: id, now_ms, expires_ms, max_out, min_out, then ONE JSON array of strings:
# [n_meta, meta pairs..., per unit (tok, usd, req) fixed, per_output, scale, then per counter
# field, allowed]. Packed because encoding each value as its own Redis argument was the
# largest Python cost of a reserve (~70 arguments with six quotas); json.dumps of a list of
# strings is one C call, and cjson.decode in the script costs microseconds.
# Returns {'ok', granted_out, tok, usd, req, used_before...} | {'refused', used...} | {'dup'}
# (open under this id: idempotent) | {'committed'} (charged under this id: holds nothing).
# A released or expired record under this id does not answer 'dup': the id reserves anew.
_RESERVE = (
    _COMMON
    + r"""
local ctr, rec, open, ledger, convt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now, exp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_out, min_out = tonumber(ARGV[4]), tonumber(ARGV[5])
local prior = redis.call('HGET', rec, 'st')
if prior == 'reserved' then return {'dup'} end
if prior == 'committed' then return {'committed'} end
local A = cjson.decode(ARGV[6])
local i = 2
local meta = {}
for j = 1, tonumber(A[1]) * 2 do meta[j] = A[i]; i = i + 1 end
local dem = {}
for _, u in ipairs({'tok', 'usd', 'req'}) do
  dem[u] = {tonumber(A[i]), tonumber(A[i + 1]), tonumber(A[i + 2])}
  i = i + 3
end
local fields, allowed, units = {}, {}, {}
while i <= #A do
  fields[#fields + 1] = A[i]
  allowed[#allowed + 1] = tonumber(A[i + 1])
  units[#units + 1] = unit_of(A[i])
  i = i + 2
end
local function amount(u, o)
  local d = dem[u]
  return math.floor((d[1] + o * d[2] + d[3] - 1) / d[3])
end
local used = {}
if #fields > 0 then
  local vals = redis.call('HMGET', ctr, unpack(fields))
  for j = 1, #fields do used[j] = tonumber(vals[j] or '0') end
end
local grant = max_out
local short = false
for j = 1, #fields do
  if used[j] + amount(units[j], max_out) > allowed[j] then short = true end
end
if short then
  if min_out > 0 then
    for j = 1, #fields do
      local d = dem[units[j]]
      local o
      if d[2] == 0 then
        if used[j] + amount(units[j], 0) > allowed[j] then o = -1 else o = max_out end
      else
        o = math.floor(((allowed[j] - used[j]) * d[3] - d[1]) / d[2])
      end
      if o < grant then grant = o end
    end
  end
  if min_out <= 0 or grant < min_out then
    local out = {'refused'}
    for j = 1, #fields do out[#out + 1] = s(used[j]) end
    return out
  end
end
local amt = {tok = amount('tok', grant), usd = amount('usd', grant), req = amount('req', grant)}
for j = 1, #fields do
  redis.call('HINCRBY', ctr, fields[j], s(amt[units[j]]))
  if string.find(fields[j], '|conversation|', 1, true) then redis.call('ZADD', convt, now, fields[j]) end
end
local flist = table.concat(fields, ',')
-- A released or expired record: the request id's earlier attempt ended uncharged, and this one
-- may be the attempt that answers (a job item retried after its router died). Handed the old
-- record, that answer would go uncharged, so it holds anew on a clean record (no TTL, no
-- fields of the old attempt). Deleted only here, so that a refusal changes nothing.
if prior then redis.call('DEL', rec) end
redis.call('HSET', rec, 'st', 'reserved', 'gout', s(grant), 'tok', s(amt.tok), 'usd', s(amt.usd),
  'req', s(amt.req), 'f', flist, 'c_ms', s(now), 'e_ms', s(exp), unpack(meta))
redis.call('ZADD', open, exp, id)
redis.call('XADD', ledger, '*', 'op', 'reserve', 'res', id, 'tok', s(amt.tok), 'usd', s(amt.usd),
  'req', s(amt.req), 'f', flist, 'at', s(now), 'gout', s(grant), unpack(meta))
local out = {'ok', s(grant), s(amt.tok), s(amt.usd), s(amt.req)}
for j = 1, #fields do out[#out + 1] = s(used[j]) end
return out
"""
)

# KEYS: ctr, record, open, ledger, usage day.
# ARGV: id, now_ms, in, out, cached, model ('' = reserved), provider, partial,
#       r_in, r_out, r_cached, pricing_version, context_window, max_output (all '' with model ''),
#       record_ttl_ms, usage_ttl_ms.
_COMMIT = (
    _COMMON
    + r"""
local ctr, rec, open, ledger, day = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now = ARGV[1], tonumber(ARGV[2])
local tin, tout, tcached = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local st = redis.call('HGET', rec, 'st')
if not st then return {'missing'} end
local r = {}
local flat = redis.call('HGETALL', rec)
for j = 1, #flat, 2 do r[flat[j]] = flat[j + 1] end
if st == 'committed' then
  if tonumber(r.cin) == tin and tonumber(r.cout) == tout and tonumber(r.ccached) == tcached
     and (ARGV[6] == '' or ARGV[6] == r.cmodel) then
    return {'dup', flat}
  end
  return {'conflict', flat}
end
if st == 'released' then return {'released', flat} end
local model, ri, ro, rc, pv, ctx, mout = r.model, r.r_in, r.r_out, r.r_cached, r.pv, r.ctx, r.mout
if ARGV[6] ~= '' then
  model, ri, ro, rc, pv, ctx, mout = ARGV[6], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
end
ri, ro, rc, ctx, mout = tonumber(ri), tonumber(ro), tonumber(rc), tonumber(ctx), tonumber(mout)
if tout > mout then return {'too_large', 'output_tokens', s(mout), model} end
if tin + tout > ctx then return {'too_large', 'input_tokens', s(ctx), model} end
local cost = math.floor(((tin - tcached) * ri + tcached * rc + tout * ro + 999) / 1000)
local tok = tin + tout
local late = st == 'expired'
local held = {tok = tonumber(r.tok), usd = tonumber(r.usd), req = tonumber(r.req)}
if late then held = {tok = 0, usd = 0, req = 0} end
local delta = {tok = tok - held.tok, usd = cost - held.usd, req = 1 - held.req}
local fields = split(r.f)
apply(ctr, fields, delta)
redis.call('HSET', rec, 'st', 'committed', 'cin', s(tin), 'cout', s(tout), 'ccached', s(tcached),
  'cmodel', model, 'cprov', ARGV[7], 'ctok', s(tok), 'cusd', s(cost), 'cpv', pv,
  'dtok', s(delta.tok), 'dusd', s(delta.usd), 'done_ms', s(now), 'partial', ARGV[8], 'late', late and '1' or '0')
redis.call('PEXPIRE', rec, ARGV[15])
redis.call('ZREM', open, id)
redis.call('XADD', ledger, '*', 'op', 'commit', 'res', id, 'tok', s(delta.tok), 'usd', s(delta.usd),
  'req', s(delta.req), 'f', r.f, 'at', s(now), 'tenant', r.tenant, 'key', r.key, 'feat', r.feat,
  'conv', r.conv, 'prio', r.prio, 'rid', r.rid, 'model', model, 'prov', ARGV[7], 'in', s(tin),
  'out', s(tout), 'cached', s(tcached), 'cost', s(cost), 'pv', pv, 'partial', ARGV[8],
  'late', late and '1' or '0')
local groups = {''}
if r.key ~= '' then groups[#groups + 1] = 'k:' .. r.key end
if r.feat ~= '' then groups[#groups + 1] = 'f:' .. r.feat end
groups[#groups + 1] = 'm:' .. model
for _, g in ipairs(groups) do
  redis.call('HINCRBY', day, g .. '|req', 1)
  redis.call('HINCRBY', day, g .. '|in', s(tin))
  redis.call('HINCRBY', day, g .. '|out', s(tout))
  redis.call('HINCRBY', day, g .. '|cached', s(tcached))
  redis.call('HINCRBY', day, g .. '|usd', s(cost))
end
redis.call('PEXPIRE', day, ARGV[16])
return {'ok', redis.call('HGETALL', rec)}
"""
)

# KEYS: ctr, record, open, ledger.  ARGV: id, now_ms, reason, record_ttl_ms.
_RELEASE = (
    _COMMON
    + r"""
local ctr, rec, open, ledger = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now = ARGV[1], tonumber(ARGV[2])
local st = redis.call('HGET', rec, 'st')
if not st then return {'missing'} end
if st == 'committed' then return {'committed', redis.call('HGETALL', rec)} end
if st ~= 'reserved' then return {'dup', redis.call('HGETALL', rec)} end
local r = {}
local flat = redis.call('HGETALL', rec)
for j = 1, #flat, 2 do r[flat[j]] = flat[j + 1] end
local delta = {tok = -tonumber(r.tok), usd = -tonumber(r.usd), req = -tonumber(r.req)}
apply(ctr, split(r.f), delta)
redis.call('HSET', rec, 'st', 'released', 'done_ms', s(now), 'reason', ARGV[3])
redis.call('PEXPIRE', rec, ARGV[4])
redis.call('ZREM', open, id)
redis.call('XADD', ledger, '*', 'op', 'release', 'res', id, 'tok', s(delta.tok), 'usd', s(delta.usd),
  'req', s(delta.req), 'f', r.f, 'at', s(now), 'tenant', r.tenant, 'key', r.key, 'feat', r.feat,
  'conv', r.conv, 'prio', r.prio, 'rid', r.rid, 'model', r.model, 'prov', r.prov, 'pv', r.pv,
  'reason', ARGV[3])
return {'ok', redis.call('HGETALL', rec)}
"""
)

# KEYS: ctr, open, ledger, usage day, then the records of the due reservations.
# ARGV: now_ms, record_ttl_ms, usage_ttl_ms, then their ids (same order as the records).
_EXPIRE = (
    _COMMON
    + r"""
local ctr, open, ledger, day = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local expired = 0
for j = 5, #KEYS do
  local rec, id = KEYS[j], ARGV[j - 1]
  local score = redis.call('ZSCORE', open, id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', open, id)
    local flat = redis.call('HGETALL', rec)
    local r = {}
    for k = 1, #flat, 2 do r[flat[k]] = flat[k + 1] end
    if r.st == 'reserved' then
      local delta = {tok = -tonumber(r.tok), usd = -tonumber(r.usd), req = -tonumber(r.req)}
      apply(ctr, split(r.f), delta)
      redis.call('HSET', rec, 'st', 'expired', 'done_ms', s(now))
      redis.call('PEXPIRE', rec, ARGV[2])
      redis.call('XADD', ledger, '*', 'op', 'expire', 'res', id, 'tok', s(delta.tok), 'usd', s(delta.usd),
        'req', s(delta.req), 'f', r.f, 'at', s(now), 'tenant', r.tenant, 'key', r.key, 'feat', r.feat,
        'conv', r.conv, 'prio', r.prio, 'rid', r.rid, 'model', r.model, 'prov', r.prov, 'pv', r.pv,
        'in', r['in'], 'gout', r.gout, 'expired_ms', r.e_ms)
      redis.call('HINCRBY', day, '|exp', 1)
      redis.call('PEXPIRE', day, ARGV[3])
      expired = expired + 1
    end
  end
end
return expired
"""
)

# KEYS: ctr, convt, ledger.  ARGV: now_ms, grace_s, conversations idle since (ms).
# Deletes counters whose window ended more than grace_s ago and conversation counters idle
# too long, each with a ledger entry taking its value back out, so sums stay equal.
_PRUNE = (
    _COMMON
    + r"""
local ctr, convt, ledger = KEYS[1], KEYS[2], KEYS[3]
local now, grace, idle = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local gone = {}
local flat = redis.call('HGETALL', ctr)
for j = 1, #flat, 2 do
  local f = flat[j]
  local window, finish = string.match(f, '|(%a+)|%d+|(%d+)$')
  if window and window ~= 'conversation' and (tonumber(finish) + grace) * 1000 < now then
    gone[#gone + 1] = {f, tonumber(flat[j + 1])}
  end
end
for _, f in ipairs(redis.call('ZRANGEBYSCORE', convt, '-inf', idle)) do
  gone[#gone + 1] = {f, tonumber(redis.call('HGET', ctr, f) or '0')}
  redis.call('ZREM', convt, f)
end
for _, g in ipairs(gone) do
  local f, v = g[1], g[2]
  redis.call('HDEL', ctr, f)
  local delta = {tok = 0, usd = 0, req = 0}
  delta[unit_of(f)] = -v
  redis.call('XADD', ledger, '*', 'op', 'prune', 'tok', s(delta.tok), 'usd', s(delta.usd),
    'req', s(delta.req), 'f', f, 'at', s(now))
end
return #gone
"""
)


# KEYS: ledger, usage day, seen marker.  ARGV: now_ms, cost, record_ttl_ms, usage_ttl_ms,
# n_groups, groups..., then meta pairs. Returns 1 when recorded, 0 for a repeated request.
# A cache hit changes no counter: its ledger entry lists none (f = ''), so reconciliation
# sums nothing for it.
_SAVED = (
    _COMMON
    + r"""
local ledger, day, seen = KEYS[1], KEYS[2], KEYS[3]
local now, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
if not redis.call('SET', seen, '1', 'NX', 'PX', ARGV[3]) then return 0 end
local n = tonumber(ARGV[5])
local meta = {}
for j = 6 + n, #ARGV do meta[#meta + 1] = ARGV[j] end
redis.call('XADD', ledger, '*', 'op', 'saved', 'tok', '0', 'usd', '0', 'req', '0', 'f', '',
  'at', s(now), unpack(meta))
for j = 6, 5 + n do
  redis.call('HINCRBY', day, ARGV[j] .. '|hits', 1)
  redis.call('HINCRBY', day, ARGV[j] .. '|saved', s(cost))
end
redis.call('PEXPIRE', day, ARGV[4])
return 1
"""
)


def _text(value: bytes | str | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _record(flat: Sequence[bytes]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclasses.dataclass(frozen=True)
class ReserveOutcome:
    """What the reserve script did.

    ``status`` is ``ok`` (held: ``granted_out`` and the amounts per unit), ``refused``
    (nothing changed; ``used`` is each counter's value), ``dup`` (an open reservation with
    this id exists) or ``committed`` (this id was charged already; nothing held). Read the
    record of either with :meth:`BudgetStore.get`. A released or expired reservation with
    this id is replaced: ``ok`` or ``refused``, as for a new id.
    """

    status: str
    used: tuple[int, ...] = ()
    granted_out: int = 0
    amounts: Mapping[Unit, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ScriptOutcome:
    """What a commit or release script did: a status and the reservation record after it."""

    status: str
    record: dict[str, str]
    detail: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A tenant's counters and the ledger position they correspond to, read at one instant."""

    counters: dict[str, int]
    last_ledger_id: str
    open_count: int


class BudgetStore:
    """The budget's Redis operations. Safe to share between coroutines.

    Args:
        client: The asyncio Redis client (bytes in, bytes out).
        prefix: Prefix of every key.
        record_ttl_s: How long a finished reservation is kept (for idempotent retries).
        usage_ttl_s: How long a day of usage totals is kept.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "tw:budget",
        record_ttl_s: int = 86400,
        usage_ttl_s: int = 400 * 86400,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._record_ttl_ms = str(record_ttl_s * 1000)
        self._usage_ttl_ms = str(usage_ttl_s * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._expire = client.register_script(_EXPIRE)
        self._prune = client.register_script(_PRUNE)
        self._saved = client.register_script(_SAVED)

    def key(self, tenant: str, suffix: str) -> str:
        """The key ``{prefix}:{tenant}:suffix`` (the tenant is the hash tag)."""
        return f"{self.prefix}:{{{tenant}}}:{suffix}"

    # --- tenants and overrides ------------------------------------------------------------

    async def remember_tenant(self, tenant: str) -> None:
        """Adds ``tenant`` to the sweeper's work list."""
        await self.client.sadd(f"{self.prefix}:tenants", tenant)

    async def tenants(self) -> list[str]:
        """Every tenant that ever reserved, sorted."""
        return sorted(_text(t) for t in await self.client.smembers(f"{self.prefix}:tenants"))

    async def overrides(self) -> dict[str, str]:
        """Every SetBudget override, tenant -> JSON."""
        raw = await self.client.hgetall(f"{self.prefix}:overrides")
        return {_text(k): _text(v) for k, v in raw.items()}

    async def set_override(self, tenant: str, document: str | None) -> None:
        """Stores (or, with None, drops) ``tenant``'s override."""
        if document is None:
            await self.client.hdel(f"{self.prefix}:overrides", tenant)
        else:
            await self.client.hset(f"{self.prefix}:overrides", tenant, document)

    # --- the life of a reservation ----------------------------------------------------------

    async def reserve(
        self,
        tenant: str,
        reservation_id: str,
        *,
        now_ms: int,
        expires_ms: int,
        max_out: int,
        min_out: int,
        meta: Mapping[str, str],
        demands: Mapping[Unit, Demand],
        counters: Sequence[tuple[str, int]],
    ) -> ReserveOutcome:
        """Checks every counter and, if all fit, holds the amounts and ledgers it (one script).

        Args:
            tenant: The tenant (hash tag of every key).
            reservation_id: 32 hex digits.
            now_ms: Now, Unix ms.
            expires_ms: When the reservation expires if not committed or released.
            max_out: Output tokens asked for.
            min_out: The fewest output tokens the caller accepts (0: all of ``max_out``).
            meta: Fields stored on the reservation and its ledger entry.
            demands: Per unit, what the request needs as a function of its output tokens.
            counters: ``(field, allowed)`` of every counter that applies.
        """
        # Every element a string: cjson would turn numbers into doubles and print large
        # ones in exponent form; tonumber() of a string is exact up to 2^53, as before.
        packed: list[str] = [str(len(meta))]
        for k, v in meta.items():
            packed += (k, v)
        for unit in (Unit.TOKENS, Unit.USD_NANOS, Unit.REQUESTS):
            d = demands[unit]
            packed += (str(d.fixed), str(d.per_output), str(d.scale))
        for field, allowed in counters:
            packed += (field, str(allowed))
        args = [reservation_id, now_ms, expires_ms, max_out, min_out, json.dumps(packed, separators=(",", ":"))]
        keys = [
            self.key(tenant, "ctr"),
            self.key(tenant, f"r:{reservation_id}"),
            self.key(tenant, "open"),
            self.key(tenant, "ledger"),
            self.key(tenant, "convt"),
        ]
        reply = await self._reserve(keys=keys, args=args)
        status = _text(reply[0])
        if status == "ok":
            granted, tok, usd, req = (int(_text(x)) for x in reply[1:5])
            return ReserveOutcome(
                "ok",
                tuple(int(_text(x)) for x in reply[5:]),
                granted,
                {Unit.TOKENS: tok, Unit.USD_NANOS: usd, Unit.REQUESTS: req},
            )
        return ReserveOutcome(status, tuple(int(_text(x)) for x in reply[1:]))

    async def get(self, tenant: str, reservation_id: str) -> dict[str, str] | None:
        """A reservation's record, or None when there is none."""
        raw = await self.client.hgetall(self.key(tenant, f"r:{reservation_id}"))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def commit(
        self,
        tenant: str,
        reservation_id: str,
        *,
        now_ms: int,
        day: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int,
        provider: str,
        partial: bool,
        model: tuple[str, int, int, int, str, int, int] | None,
    ) -> ScriptOutcome:
        """Replaces the estimate with the real usage, ledgers it and adds it to ``day``'s totals.

        Args:
            model: The answering model when it differs from the reserved one:
                ``(name, input_picos, output_picos, cached_input_picos, pricing_version,
                context_window, max_output_tokens)``; None prices with the reserved model.

        Returns:
            Status ``ok``, ``dup`` (already committed with this usage), ``conflict``
            (committed with other usage), ``released``, ``missing`` or ``too_large`` (detail:
            the field, the limit and the model).
        """
        m: Sequence[str | int] = model or ("", "", "", "", "", "", "")
        args = [
            reservation_id,
            now_ms,
            input_tokens,
            output_tokens,
            cached_input_tokens,
            m[0],
            provider,
            "1" if partial else "0",
            *m[1:],
            self._record_ttl_ms,
            self._usage_ttl_ms,
        ]
        keys = [
            self.key(tenant, "ctr"),
            self.key(tenant, f"r:{reservation_id}"),
            self.key(tenant, "open"),
            self.key(tenant, "ledger"),
            self.key(tenant, f"u:{day}"),
        ]
        return self._outcome(await self._commit(keys=keys, args=args))

    async def release(self, tenant: str, reservation_id: str, *, now_ms: int, reason: str) -> ScriptOutcome:
        """Returns a held estimate and ledgers it. Status ``ok``, ``dup`` (already released or
        expired), ``committed`` or ``missing``."""
        keys = [
            self.key(tenant, "ctr"),
            self.key(tenant, f"r:{reservation_id}"),
            self.key(tenant, "open"),
            self.key(tenant, "ledger"),
        ]
        return self._outcome(await self._release(keys=keys, args=[reservation_id, now_ms, reason, self._record_ttl_ms]))

    async def record_saved(
        self,
        tenant: str,
        saved_id: str,
        *,
        now_ms: int,
        day: str,
        cost_usd_nanos: int,
        groups: Sequence[str],
        meta: Mapping[str, str],
    ) -> bool:
        """Ledgers a cache hit's saving and adds it to ``day``'s totals of each usage group
        (one script). False when ``saved_id`` was recorded within the record TTL."""
        args: list[str | int] = [now_ms, cost_usd_nanos, self._record_ttl_ms, self._usage_ttl_ms, len(groups), *groups]
        for k, v in meta.items():
            args += [k, v]
        keys = [self.key(tenant, "ledger"), self.key(tenant, f"u:{day}"), self.key(tenant, f"saved:{saved_id}")]
        return bool(int(await self._saved(keys=keys, args=args)))

    @staticmethod
    def _outcome(reply: Sequence[object]) -> ScriptOutcome:
        status = _text(reply[0])  # type: ignore[arg-type]
        if status == "too_large":
            return ScriptOutcome(status, {}, tuple(_text(x) for x in reply[1:]))  # type: ignore[arg-type]
        record = _record(reply[1]) if len(reply) > 1 else {}  # type: ignore[arg-type]
        return ScriptOutcome(status, record)

    # --- the sweeper ----------------------------------------------------------------------

    async def expire_due(self, tenant: str, *, now_ms: int, day: str, limit: int = 200) -> int:
        """Expires up to ``limit`` reservations of ``tenant`` past their TTL; returns how many.

        Two round trips (find, then one script that re-checks and expires each): the ids due
        must be known to declare their keys, as Redis Cluster requires.
        """
        ids = [
            _text(x)
            for x in await self.client.zrangebyscore(self.key(tenant, "open"), "-inf", now_ms, start=0, num=limit)
        ]
        if not ids:
            return 0
        keys = [
            self.key(tenant, "ctr"),
            self.key(tenant, "open"),
            self.key(tenant, "ledger"),
            self.key(tenant, f"u:{day}"),
            *(self.key(tenant, f"r:{i}") for i in ids),
        ]
        return int(await self._expire(keys=keys, args=[now_ms, self._record_ttl_ms, self._usage_ttl_ms, *ids]))

    async def prune(self, tenant: str, *, now_ms: int, grace_s: int, conversations_idle_since_ms: int) -> int:
        """Deletes counters of windows that ended ``grace_s`` ago and idle conversations'
        counters, each with a ledger entry; returns how many."""
        keys = [self.key(tenant, "ctr"), self.key(tenant, "convt"), self.key(tenant, "ledger")]
        return int(await self._prune(keys=keys, args=[now_ms, grace_s, conversations_idle_since_ms]))

    # --- reading --------------------------------------------------------------------------

    async def counter_values(self, tenant: str, fields: Sequence[str]) -> list[int]:
        """The values of ``fields`` in the tenant's counter hash (0 when absent)."""
        if not fields:
            return []
        values = await self.client.hmget(self.key(tenant, "ctr"), list(fields))
        return [int(v) if v is not None else 0 for v in values]

    async def usage(self, tenant: str, days: Sequence[str]) -> dict[str, dict[str, int]]:
        """The usage totals of each of ``days`` (one round trip), day -> field -> sum."""
        async with self.client.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self.key(tenant, f"u:{day}"))
            replies = await pipe.execute()
        return {
            day: {_text(k): int(v) for k, v in reply.items()} for day, reply in zip(days, replies, strict=True) if reply
        }

    async def snapshot(self, tenant: str) -> Snapshot:
        """The counters, the last ledger id and the open reservations, read atomically."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.key(tenant, "ctr"))
            pipe.xrevrange(self.key(tenant, "ledger"), "+", "-", count=1)
            pipe.zcard(self.key(tenant, "open"))
            counters, last, open_count = await pipe.execute()
        return Snapshot(
            {_text(k): int(v) for k, v in counters.items()},
            _text(last[0][0]) if last else "",
            int(open_count),
        )

    async def ledger(
        self, tenant: str, *, upto: str = "+", page: int = 1000
    ) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """The tenant's ledger entries, oldest first, up to and including ``upto``."""
        start = "-"
        while True:
            rows = await self.client.xrange(self.key(tenant, "ledger"), start, upto, count=page)
            for entry_id, fields in rows:
                yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
            if len(rows) < page:
                return
            start = "(" + _text(rows[-1][0])
