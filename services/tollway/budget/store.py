"""The budget's Redis layout; the only module of the budget service that talks to Redis.

Keys (``{p}`` is the prefix, ``tw:budget`` by default; ``{T}`` the tenant as hash tag, so all
keys one script touches sit in one Redis Cluster slot and every script runs unchanged on a
cluster)::

    {p}:{T}:ctr          HASH   every counter of the tenant: subject|unit|window|start|end -> used
    {p}:{T}:r:<id>       HASH   one reservation (state, attempt, amounts held, counters, result, and
                                its metadata as one JSON field ``m``: tenant, key, rates, limits...)
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
per commit (EVALSHA); calls made while others are in flight share one (a pipeline). Counter
amounts are integers (tokens, nano-dollars, requests); Lua's doubles are exact for them up to
2^53.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from tollway.budget.types import Unit
from tollway.mesh.frozen import frozen
from tollway.mesh.redis import is_outage, pipelined

# The reservation's metadata (tenant, key, feature, conversation, priority, request id, model,
# rates, limits, ...) travels as ONE JSON object of strings (ARGV ``meta``): the record keeps it
# as is in its field ``m`` and the scripts decode it where they need it. Encoding each value as
# a Redis argument, and reading each back as a record field, was most of a reserve's and a
# commit's Python cost. Records written before this layout hold the same values as separate
# fields; ``meta_of`` reads both. Every element is a string: cjson turns numbers into doubles
# and prints large ones in exponent form; tonumber() of a string is exact up to 2^53.
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
local function hash(flat)
  local r = {}
  for j = 1, #flat, 2 do r[flat[j]] = flat[j + 1] end
  return r
end
local function meta_of(r)
  if r.m then return cjson.decode(r.m) end
  return r
end
-- The metadata a ledger entry repeats, in a fixed order (absent ones left out).
local META = {'tenant', 'key', 'feat', 'model', 'prov', 'conv', 'prio', 'rid', 'in', 'maxout', 'pv',
  'r_in', 'r_out', 'r_cached', 'ctx', 'mout', 'unav'}
local function pairs_of(m, names)
  local out = {}
  for _, k in ipairs(names) do
    local v = m[k]
    if v ~= nil then out[#out + 1] = k; out[#out + 1] = v end
  end
  return out
end
local WHO = {'tenant', 'key', 'feat', 'conv', 'prio', 'rid'}
-- The (field, allowed) pairs of a packed argument from position i on, with each field's unit.
local function counters_from(A, i)
  local fields, allowed, units = {}, {}, {}
  while i <= #A do
    fields[#fields + 1] = A[i]
    allowed[#allowed + 1] = tonumber(A[i + 1])
    units[#units + 1] = unit_of(A[i])
    i = i + 2
  end
  return fields, allowed, units
end
"""

# KEYS: ctr, record, open, ledger, convt.
# ARGV: id, now_ms, expires_ms, max_out, min_out, meta (JSON object of strings), then ONE
# JSON array of strings: per unit (tok, usd, req) fixed, per_output, scale, then per counter
# field, allowed.
# Returns {'ok', attempt, granted_out, tok, usd, req, used_before...} | {'refused', used...} |
# {'dup'} (open under this id: idempotent) | {'committed'} (charged under this id: holds nothing).
# A released or expired record under this id does not answer 'dup': the id reserves anew, as
# the next attempt (its number in the record, ``att``), so that a settlement made for the
# earlier attempt can no longer touch this hold.
_RESERVE = (
    _COMMON
    + r"""
local ctr, rec, open, ledger, convt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now, exp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_out, min_out = tonumber(ARGV[4]), tonumber(ARGV[5])
local prior = redis.call('HMGET', rec, 'st', 'att')
if prior[1] == 'reserved' then return {'dup'} end
if prior[1] == 'committed' then return {'committed'} end
local A = cjson.decode(ARGV[7])
local dem = {}
local i = 1
for _, u in ipairs({'tok', 'usd', 'req'}) do
  dem[u] = {tonumber(A[i]), tonumber(A[i + 1]), tonumber(A[i + 2])}
  i = i + 3
end
local fields, allowed, units = counters_from(A, i)
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
-- fields of the old attempt), numbered one past it. Deleted only here, so that a refusal
-- changes nothing.
local att = 1
if prior[1] then
  att = tonumber(prior[2] or '1') + 1
  redis.call('DEL', rec)
end
redis.call('HSET', rec, 'st', 'reserved', 'att', s(att), 'gout', s(grant), 'tok', s(amt.tok), 'usd', s(amt.usd),
  'req', s(amt.req), 'f', flist, 'c_ms', s(now), 'e_ms', s(exp), 'm', ARGV[6])
redis.call('ZADD', open, exp, id)
redis.call('XADD', ledger, '*', 'op', 'reserve', 'res', id, 'att', s(att), 'tok', s(amt.tok), 'usd', s(amt.usd),
  'req', s(amt.req), 'f', flist, 'at', s(now), 'gout', s(grant), unpack(pairs_of(cjson.decode(ARGV[6]), META)))
local out = {'ok', s(att), s(grant), s(amt.tok), s(amt.usd), s(amt.req)}
for j = 1, #fields do out[#out + 1] = s(used[j]) end
return out
"""
)

# What a commit does once it knows the hold (its record, or the hold being written with it):
# shared by _COMMIT_BODY and _HELD_AND_COMMITTED, so the two cannot drift apart.
_COMMIT_STEPS = r"""
-- The answering model's name, rates, pricing version and limits: the reserved one's (in the
-- metadata m) unless the commit names another (a JSON array, see pack_model).
local function answering(m, named)
  local model, ri, ro, rc, pv, ctx, mout = m.model, m.r_in, m.r_out, m.r_cached, m.pv, m.ctx, m.mout
  if named ~= '' then
    local a = cjson.decode(named)
    model, ri, ro, rc, pv, ctx, mout = a[1], a[2], a[3], a[4], a[5], a[6], a[7]
  end
  return model, tonumber(ri), tonumber(ro), tonumber(rc), pv, tonumber(ctx), tonumber(mout)
end
-- Covered by its lease (the holder still counts the hold in the block): the usage moves from
-- the block to this reservation, and only what the block cannot cover stays in delta (for the
-- counters). Returns the lease that covered it ('' when none did) and what it took.
local function take_from_lease(lrec, lease_id, delta)
  local took = {tok = 0, usd = 0, req = 0}
  local L = redis.call('HMGET', lrec, 'st', 'tok', 'usd', 'req')
  if L[1] ~= 'lease' then return '', took end
  local rem = {tok = tonumber(L[2]), usd = tonumber(L[3]), req = tonumber(L[4])}
  for _, u in ipairs({'tok', 'usd', 'req'}) do
    took[u] = math.max(0, math.min(delta[u], rem[u]))
    delta[u] = delta[u] - took[u]
  end
  redis.call('HINCRBY', lrec, 'tok', s(-took.tok))
  redis.call('HINCRBY', lrec, 'usd', s(-took.usd))
  redis.call('HINCRBY', lrec, 'req', s(-took.req))
  return lease_id, took
end
-- The day's usage totals: the tenant's, its key's, its feature's and the model's. Zero amounts
-- are left out (a missing total reads as 0): most commits have no cached tokens.
local function add_to_day(day, m, model, tin, tout, tcached, cost, ttl)
  local groups = {''}
  if (m.key or '') ~= '' then groups[#groups + 1] = 'k:' .. m.key end
  if (m.feat or '') ~= '' then groups[#groups + 1] = 'f:' .. m.feat end
  groups[#groups + 1] = 'm:' .. model
  local sums = {{'|in', tin}, {'|out', tout}, {'|cached', tcached}, {'|usd', cost}}
  for _, g in ipairs(groups) do
    redis.call('HINCRBY', day, g .. '|req', 1)
    for _, x in ipairs(sums) do
      if x[2] ~= 0 then redis.call('HINCRBY', day, g .. x[1], s(x[2])) end
    end
  end
  redis.call('PEXPIRE', day, ttl)
end
-- The committed fields of the record (after its hold's), then the ledger's commit entry.
local function committed_fields(tin, tout, tcached, model, prov, tok, cost, pv, delta, now, partial, late)
  return {'st', 'committed', 'cin', s(tin), 'cout', s(tout), 'ccached', s(tcached), 'cmodel', model,
    'cprov', prov, 'ctok', s(tok), 'cusd', s(cost), 'cpv', pv, 'dtok', s(delta.tok), 'dusd', s(delta.usd),
    'done_ms', s(now), 'partial', partial, 'late', late}
end
local function ledger_commit(ledger, id, att, delta, f, now, model, prov, tin, tout, tcached, cost, pv, partial,
                             late, lease, took, m)
  redis.call('XADD', ledger, '*', 'op', 'commit', 'res', id, 'att', att, 'tok', s(delta.tok), 'usd', s(delta.usd),
    'req', s(delta.req), 'f', f, 'at', s(now), 'model', model, 'prov', prov, 'in', s(tin),
    'out', s(tout), 'cached', s(tcached), 'cost', s(cost), 'pv', pv, 'partial', partial, 'late', late,
    'lease', lease, 'ltok', s(took.tok), 'lusd', s(took.usd), 'lreq', s(took.req), unpack(pairs_of(m, WHO)))
end
"""

# KEYS: ctr, record, open, ledger, usage day, the lease record (the record again when none).
# ARGV: id, now_ms, attempt (0: whichever holds the id), in, out, cached, provider, partial,
#       the answering model ('' = the reserved one, else a JSON array of strings: name, r_in,
#       r_out, r_cached, pricing_version, context_window, max_output), record_ttl_ms,
#       usage_ttl_ms, the lease that still covers the hold ('' when none does).
# Returns {'ok', attempt, late, dtok, dusd, ctok, cusd, model, pv, in, gout, c_ms, e_ms, meta}
# (just what the caller reports, not the whole record: reading ~40 record fields back was as
# costly as the rest of a commit); the rare answers carry the whole record (HGETALL):
# {'dup' | 'conflict' | 'released', record}, {'stale', attempt held, state}, {'missing'},
# {'too_large', field, limit, model}.
_COMMIT_BODY = r"""
local ctr, rec, open, ledger, day = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tin, tout, tcached = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local flat = redis.call('HGETALL', rec)
if #flat == 0 then return {'missing'} end
local r = hash(flat)
local st, att = r.st, r.att or '1'
if want > 0 and want ~= tonumber(att) then return {'stale', att, st} end
local m = meta_of(r)
if st == 'committed' then
  if tonumber(r.cin) == tin and tonumber(r.cout) == tout and tonumber(r.ccached) == tcached
     and (ARGV[9] == '' or cjson.decode(ARGV[9])[1] == r.cmodel) then
    return {'dup', flat}
  end
  return {'conflict', flat}
end
if st == 'released' then return {'released', flat} end
local model, ri, ro, rc, pv, ctx, mout = answering(m, ARGV[9])
if tout > mout then return {'too_large', 'output_tokens', s(mout), model} end
if tin + tout > ctx then return {'too_large', 'input_tokens', s(ctx), model} end
local cost = math.floor(((tin - tcached) * ri + tcached * rc + tout * ro + 999) / 1000)
local tok = tin + tout
local late = st == 'expired' and '1' or '0'
local held = {tok = tonumber(r.tok), usd = tonumber(r.usd), req = tonumber(r.req)}
-- A hold made under a lease is not in the counters itself: its lease's block is.
if late == '1' or (r.lease or '') ~= '' then held = {tok = 0, usd = 0, req = 0} end
local delta = {tok = tok - held.tok, usd = cost - held.usd, req = 1 - held.req}
local lease, took = '', {tok = 0, usd = 0, req = 0}
if ARGV[12] ~= '' and r.lease == ARGV[12] then lease, took = take_from_lease(KEYS[6], ARGV[12], delta) end
apply(ctr, split(r.f), delta)
redis.call('HSET', rec, unpack(committed_fields(tin, tout, tcached, model, ARGV[7], tok, cost, pv, delta, now,
  ARGV[8], late)))
redis.call('PEXPIRE', rec, ARGV[10])
redis.call('ZREM', open, id)
ledger_commit(ledger, id, att, delta, r.f, now, model, ARGV[7], tin, tout, tcached, cost, pv, ARGV[8], late, lease,
  took, m)
add_to_day(day, m, model, tin, tout, tcached, cost, ARGV[11])
return {'ok', att, late, s(delta.tok), s(delta.usd), s(tok), s(cost), model, pv, s(tin), r.gout, r.c_ms, r.e_ms,
  r.m or cjson.encode({tenant = r.tenant, key = r.key, feat = r.feat, conv = r.conv, prio = r.prio, rid = r.rid}),
  lease}
"""
_COMMIT = _COMMON + _COMMIT_STEPS + _COMMIT_BODY

# KEYS: ctr, record, open, ledger.  ARGV: id, now_ms, attempt (0: whichever holds the id),
# reason, record_ttl_ms. Returns {status, record}: 'ok', 'dup' (released or expired before),
# 'committed'; or {'stale', attempt held, state}, {'missing'}.
_RELEASE_BODY = r"""
local ctr, rec, open, ledger = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local flat = redis.call('HGETALL', rec)
if #flat == 0 then return {'missing'} end
local r = hash(flat)
local st, att = r.st, r.att or '1'
if want > 0 and want ~= tonumber(att) then return {'stale', att, st} end
if st == 'committed' then return {'committed', flat} end
if st ~= 'reserved' then return {'dup', flat} end
local m = meta_of(r)
local delta = {tok = -tonumber(r.tok), usd = -tonumber(r.usd), req = -tonumber(r.req)}
if (r.lease or '') ~= '' then delta = {tok = 0, usd = 0, req = 0} end  -- its lease's block holds it
apply(ctr, split(r.f), delta)
redis.call('HSET', rec, 'st', 'released', 'done_ms', s(now), 'reason', ARGV[4])
redis.call('PEXPIRE', rec, ARGV[5])
redis.call('ZREM', open, id)
redis.call('XADD', ledger, '*', 'op', 'release', 'res', id, 'att', att, 'tok', s(delta.tok), 'usd', s(delta.usd),
  'req', s(delta.req), 'f', r.f, 'at', s(now), 'model', m.model, 'prov', m.prov or '', 'pv', m.pv,
  'reason', ARGV[4], unpack(pairs_of(m, WHO)))
return {'ok', redis.call('HGETALL', rec)}
"""
_RELEASE = _COMMON + _RELEASE_BODY

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
    local r = hash(redis.call('HGETALL', rec))
    if r.st == 'lease' then
      -- Its holder is gone (it renews and closes its leases while it runs): what the block
      -- still holds goes back.
      local delta = {tok = -tonumber(r.tok), usd = -tonumber(r.usd), req = -tonumber(r.req)}
      apply(ctr, split(r.f), delta)
      redis.call('HSET', rec, 'st', 'expired', 'done_ms', s(now), 'tok', '0', 'usd', '0', 'req', '0')
      redis.call('PEXPIRE', rec, ARGV[2])
      redis.call('XADD', ledger, '*', 'op', 'lease_expire', 'res', id, 'tok', s(delta.tok), 'usd', s(delta.usd),
        'req', s(delta.req), 'f', r.f, 'at', s(now))
    elseif r.st == 'reserved' then
      local m = meta_of(r)
      local delta = {tok = -tonumber(r.tok), usd = -tonumber(r.usd), req = -tonumber(r.req)}
      if (r.lease or '') ~= '' then delta = {tok = 0, usd = 0, req = 0} end  -- its lease's block holds it
      apply(ctr, split(r.f), delta)
      redis.call('HSET', rec, 'st', 'expired', 'done_ms', s(now))
      redis.call('PEXPIRE', rec, ARGV[2])
      redis.call('XADD', ledger, '*', 'op', 'expire', 'res', id, 'att', r.att or '1', 'tok', s(delta.tok),
        'usd', s(delta.usd), 'req', s(delta.req), 'f', r.f, 'at', s(now), 'model', m.model, 'prov', m.prov or '',
        'pv', m.pv, 'in', m['in'], 'gout', r.gout, 'expired_ms', r.e_ms, unpack(pairs_of(m, WHO)))
      redis.call('HINCRBY', day, '|exp', 1)
      redis.call('PEXPIRE', day, ARGV[3])
      expired = expired + 1
    end
  end
end
return expired
"""
)

# KEYS: ctr, lease record, open, ledger.
# ARGV: id, now_ms, expires_ms, spread, meta (JSON object of strings), then ONE JSON array of
# strings: per unit (tok, usd, req) the amount wanted and the least worth taking, then per
# counter field, allowed (for the lowest priority). Each unit's block is what is wanted, cut
# to 1/spread of the room left in its tightest counter. Returns {'ok', tok, usd, req, used...}
# or {'short', used...} (some unit's room is below its least: nothing changed).
_LEASE = (
    _COMMON
    + r"""
local ctr, rec, open, ledger = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, exp, spread = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local A = cjson.decode(ARGV[6])
local want, least = {}, {}
local i = 1
for _, u in ipairs({'tok', 'usd', 'req'}) do
  want[u], least[u] = tonumber(A[i]), tonumber(A[i + 1])
  i = i + 2
end
local fields, allowed, units = counters_from(A, i)
local vals = redis.call('HMGET', ctr, unpack(fields))
local used, take, counted = {}, {tok = 0, usd = 0, req = 0}, {}
for j = 1, #fields do
  used[j] = tonumber(vals[j] or '0')
  local u = units[j]
  if not counted[u] then counted[u] = true; take[u] = want[u] end
  local room = math.floor((allowed[j] - used[j]) / spread)
  if room < take[u] then take[u] = room end
end
for u in pairs(counted) do
  if take[u] < least[u] then
    local out = {'short'}
    for j = 1, #fields do out[#out + 1] = s(used[j]) end
    return out
  end
end
for j = 1, #fields do redis.call('HINCRBY', ctr, fields[j], s(take[units[j]])) end
local flist = table.concat(fields, ',')
redis.call('HSET', rec, 'st', 'lease', 'tok', s(take.tok), 'usd', s(take.usd), 'req', s(take.req), 'f', flist,
  'c_ms', s(now), 'e_ms', s(exp), 'm', ARGV[5])
redis.call('ZADD', open, exp, id)
redis.call('XADD', ledger, '*', 'op', 'lease', 'res', id, 'tok', s(take.tok), 'usd', s(take.usd),
  'req', s(take.req), 'f', flist, 'at', s(now), unpack(pairs_of(cjson.decode(ARGV[5]), WHO)))
local out = {'ok', s(take.tok), s(take.usd), s(take.req)}
for j = 1, #fields do out[#out + 1] = s(used[j]) end
return out
"""
)

# KEYS: ctr, lease record, open, ledger.  ARGV: id, now_ms, tok, usd, req (to give back; ignored
# when closing), close ('1' gives back all the block holds and ends the lease), record_ttl_ms.
# Returns {'ok', tok, usd, req} (what went back) or {'gone'} (expired or closed before).
_LEASE_RETURN = (
    _COMMON
    + r"""
local ctr, rec, open, ledger = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, close = ARGV[1], tonumber(ARGV[2]), ARGV[6] == '1'
local L = hash(redis.call('HGETALL', rec))
if L.st ~= 'lease' then return {'gone'} end
local give = {tok = tonumber(L.tok), usd = tonumber(L.usd), req = tonumber(L.req)}
if not close then
  give = {tok = math.min(give.tok, tonumber(ARGV[3])), usd = math.min(give.usd, tonumber(ARGV[4])),
    req = math.min(give.req, tonumber(ARGV[5]))}
end
for _, u in ipairs({'tok', 'usd', 'req'}) do give[u] = math.max(0, give[u]) end
apply(ctr, split(L.f), {tok = -give.tok, usd = -give.usd, req = -give.req})
redis.call('HINCRBY', rec, 'tok', s(-give.tok))
redis.call('HINCRBY', rec, 'usd', s(-give.usd))
redis.call('HINCRBY', rec, 'req', s(-give.req))
if close then
  redis.call('HSET', rec, 'st', 'closed', 'done_ms', s(now))
  redis.call('PEXPIRE', rec, ARGV[7])
  redis.call('ZREM', open, id)
end
if close or give.tok ~= 0 or give.usd ~= 0 or give.req ~= 0 then
  redis.call('XADD', ledger, '*', 'op', close and 'lease_close' or 'lease_return', 'res', id,
    'tok', s(-give.tok), 'usd', s(-give.usd), 'req', s(-give.req), 'f', L.f, 'at', s(now))
end
return {'ok', s(give.tok), s(give.usd), s(give.req)}
"""
)

# KEYS: record, open, ledger.  ARGV: id, now_ms, expires_ms, lease id, granted_out, tok, usd,
# req (what the hold takes of its lease's block), counter fields, meta.
# Records a hold a replica admitted from a lease: a reservation like any other (commit, release,
# expiry, request-id rules), except that no counter changes: the lease's block already holds it.
# Returns {'ok', attempt} | {'dup'} | {'committed'} (as the reserve script: nothing changed).
_HOLD_BODY = r"""
local rec, open, ledger = KEYS[1], KEYS[2], KEYS[3]
local id, now = ARGV[1], tonumber(ARGV[2])
local prior = redis.call('HMGET', rec, 'st', 'att')
if prior[1] == 'reserved' then return {'dup'} end
if prior[1] == 'committed' then return {'committed'} end
local att = 1
if prior[1] then
  att = tonumber(prior[2] or '1') + 1
  redis.call('DEL', rec)
end
redis.call('HSET', rec, 'st', 'reserved', 'att', s(att), 'gout', ARGV[5], 'tok', ARGV[6], 'usd', ARGV[7],
  'req', ARGV[8], 'f', ARGV[9], 'c_ms', ARGV[2], 'e_ms', ARGV[3], 'm', ARGV[10], 'lease', ARGV[4])
redis.call('ZADD', open, ARGV[3], id)
redis.call('XADD', ledger, '*', 'op', 'reserve', 'res', id, 'att', s(att), 'tok', '0', 'usd', '0', 'req', '0',
  'f', ARGV[9], 'at', ARGV[2], 'gout', ARGV[5], 'lease', ARGV[4], 'ltok', ARGV[6], 'lusd', ARGV[7],
  'lreq', ARGV[8], unpack(pairs_of(cjson.decode(ARGV[10]), META)))
return {'ok', s(att)}
"""
_HOLD = _COMMON + _HOLD_BODY


def _then(first: str, second: str, prelude: str = "", shortcut: str = "") -> str:
    """One script that runs two scripts' bodies, one after the other, atomically: a hold recorded
    and settled in one call, as two calls would, for one script run and one reply to read.

    KEYS: the first's, then the second's. ARGV: how many of the KEYS and of the ARGV after these
    two are the first's, its ARGV, then the second's. Returns {first's reply, second's reply}.
    ``prelude`` defines what the bodies call; ``shortcut`` runs before them, and returns that
    reply itself when it can, for less work.
    """
    return (
        _COMMON
        + prelude
        + f"""
local function first(KEYS, ARGV)
{first}
end
local function second(KEYS, ARGV)
{second}
end
{shortcut}
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local k1, a1, k2, a2 = {{}}, {{}}, {{}}, {{}}
for i = 1, #KEYS do if i <= nk then k1[#k1 + 1] = KEYS[i] else k2[#k2 + 1] = KEYS[i] end end
for i = 3, #ARGV do if i <= na + 2 then a1[#a1 + 1] = ARGV[i] else a2[#a2 + 1] = ARGV[i] end end
return {{first(k1, a1), second(k2, a2)}}
"""
    )


# A hold and its commit in one go, in the usual case: no record under the id yet (the hold is
# attempt 1), the commit names this hold (attempt 0 or 1, the same record) and its usage fits the
# model. The record is written once, in its final state, instead of written, read back and
# written again, and the id does not enter the open set only to leave it: the same record, ledger
# entries, counters, lease, day totals and replies as _HOLD_BODY then _COMMIT_BODY
# (tests/integration/test_budget_hold_commit.py), for 11 % fewer of Redis's instructions a request
# (bench/redis_instructions.py: 1,231,056 -> 1,098,021). Anything else returns nil here, and the
# two bodies run. KEYS and ARGV as _then's: the hold's 3 keys and 10 arguments (from ARGV[3]),
# then the commit's 6 keys and 12 arguments (from ARGV[C + 1]).
_HELD_AND_COMMITTED = r"""
local function held_and_committed()
  local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
  local C = 2 + na
  local rec, open, ledger, id = KEYS[1], KEYS[2], KEYS[3], ARGV[3]
  if nk ~= 3 or na ~= 10 or KEYS[5] ~= rec or KEYS[6] ~= open or KEYS[7] ~= ledger or ARGV[C + 1] ~= id then
    return nil
  end
  if tonumber(ARGV[C + 3]) > 1 or redis.call('HEXISTS', rec, 'st') == 1 then return nil end
  local m = cjson.decode(ARGV[12])
  local tin, tout, tcached = tonumber(ARGV[C + 4]), tonumber(ARGV[C + 5]), tonumber(ARGV[C + 6])
  local model, ri, ro, rc, pv, ctx, mout = answering(m, ARGV[C + 9])
  if tout > mout or tin + tout > ctx then return nil end
  local now, hold_lease, f = tonumber(ARGV[C + 2]), ARGV[6], ARGV[11]
  local cost = math.floor(((tin - tcached) * ri + tcached * rc + tout * ro + 999) / 1000)
  local tok = tin + tout
  local delta = {tok = tok, usd = cost, req = 1}
  if hold_lease == '' then
    delta = {tok = tok - tonumber(ARGV[8]), usd = cost - tonumber(ARGV[9]), req = 1 - tonumber(ARGV[10])}
  end
  local lease, took = '', {tok = 0, usd = 0, req = 0}
  if ARGV[C + 12] ~= '' and hold_lease == ARGV[C + 12] then
    lease, took = take_from_lease(KEYS[9], hold_lease, delta)
  end
  apply(KEYS[4], split(f), delta)
  local fields = committed_fields(tin, tout, tcached, model, ARGV[C + 7], tok, cost, pv, delta, now, ARGV[C + 8], '0')
  for _, x in ipairs({'att', '1', 'gout', ARGV[7], 'tok', ARGV[8], 'usd', ARGV[9], 'req', ARGV[10], 'f', f,
                      'c_ms', ARGV[4], 'e_ms', ARGV[5], 'm', ARGV[12], 'lease', hold_lease}) do
    fields[#fields + 1] = x
  end
  redis.call('HSET', rec, unpack(fields))
  redis.call('PEXPIRE', rec, ARGV[C + 10])
  redis.call('ZREM', open, id)
  redis.call('XADD', ledger, '*', 'op', 'reserve', 'res', id, 'att', '1', 'tok', '0', 'usd', '0', 'req', '0',
    'f', f, 'at', ARGV[4], 'gout', ARGV[7], 'lease', hold_lease, 'ltok', ARGV[8], 'lusd', ARGV[9],
    'lreq', ARGV[10], unpack(pairs_of(m, META)))
  ledger_commit(ledger, id, '1', delta, f, now, model, ARGV[C + 7], tin, tout, tcached, cost, pv, ARGV[C + 8], '0',
    lease, took, m)
  add_to_day(KEYS[8], m, model, tin, tout, tcached, cost, ARGV[C + 11])
  return {{'ok', '1'}, {'ok', '1', '0', s(delta.tok), s(delta.usd), s(tok), s(cost), model, pv, s(tin), ARGV[7],
    ARGV[4], ARGV[5], ARGV[12], lease}}
end
local done = held_and_committed()
if done then return done end
"""


_HOLD_THEN_COMMIT = _then(_HOLD_BODY, _COMMIT_BODY, _COMMIT_STEPS, _HELD_AND_COMMITTED)
_HOLD_THEN_RELEASE = _then(_HOLD_BODY, _RELEASE_BODY)


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


def _with_meta(record: dict[str, str]) -> dict[str, str]:
    # A record's metadata is one JSON field (``m``) since the attempt layout; older records
    # hold the same names as fields of their own.
    packed = record.pop("m", None)
    if packed is not None:
        record.update(json.loads(packed))
    return record


def pack_model(name: str, rates: tuple[int, int, int], pricing_version: str, context: int, max_out: int) -> str:
    """A commit's answering model in the commit script's form (callers cache it per model)."""
    return json.dumps([name, *map(str, rates), pricing_version, str(context), str(max_out)], separators=(",", ":"))


def pack_meta(fields: Mapping[str, str]) -> str:
    """The stored form of a reservation's metadata (a JSON object of strings), or a fragment
    of it: :meth:`BudgetStore.reserve` takes ``join_meta`` of the request's part and a
    part cached per model. Made for every hold, so by orjson (compact UTF-8, as Lua's cjson and
    every reader take it)."""
    return orjson.dumps(fields).decode()


def join_meta(*parts: str) -> str:
    """One metadata object from the objects ``pack_meta`` made (no key in two of them)."""
    return "{" + ",".join(p[1:-1] for p in parts if p != "{}") + "}"


def pack_counters(counters: Sequence[tuple[str, int]]) -> str:
    """The counters a reservation checks, ``(field, allowed)`` each, in the reserve script's
    form (callers cache it: it changes only with the plan and the windows)."""
    return json.dumps([x for field, allowed in counters for x in (field, str(allowed))], separators=(",", ":"))


# Names of the values of a commit's compact answer, in the script's order (after the status).
_COMMITTED = ("att", "late", "dtok", "dusd", "ctok", "cusd", "cmodel", "cpv", "cin", "gout", "c_ms", "e_ms")


# A lease's id starts with it (a reservation's is 32 lowercase hex digits); leases share the
# open set with reservations, so that one sweeper expires both.
LEASE_MARK = b"L"

_Call = tuple[AsyncScript, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class _Batcher:
    """Sends the reserve, commit and release scripts called in one turn of the event loop as
    one pipeline: one round trip (one wakeup of Redis) for all of them.

    A call made while no other is in flight goes out at once, as it always did: nothing could
    share its round trip. Under concurrency a call waits one turn for the calls made meanwhile,
    and they share one round trip, which on this kind of machine costs more CPU than everything
    else a reserve or commit does in Python. Each script stays atomic on its own (the pipeline
    is no transaction), so nothing about exactness changes. Not used on Redis Cluster, whose
    pipelines refuse EVALSHA.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._gathering: list[_Call] | None = None
        self._in_flight = 0
        self._running: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._gathering is not None:  # another call of this turn leads: ride along
            future: asyncio.Future[Any] = loop.create_future()
            self._gathering.append((script, keys, args, future))
            return await future
        if not self._in_flight:
            return await self._alone(script, keys, args)
        self._gathering = riders = []
        try:
            await asyncio.sleep(0)  # one turn: the calls made meanwhile join this one
        except BaseException:  # cancelled before anything was sent: serve the riders only
            self._gathering = None
            if riders:
                self._spawn(riders)
            raise
        self._gathering = None
        if not riders:
            return await self._alone(script, keys, args)
        own: asyncio.Future[Any] = loop.create_future()
        self._spawn([(script, keys, args, own), *riders])
        return await own

    async def _alone(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self._in_flight += 1
        try:
            return await script(keys=keys, args=args)
        finally:
            self._in_flight -= 1

    def _spawn(self, batch: list[_Call]) -> None:
        # A task of its own, so that the batch is served whoever of its callers is cancelled.
        task = asyncio.get_running_loop().create_task(self._pipeline(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def send_now(self, batch: list[_Call]) -> None:
        """Sends ``batch`` as one pipeline now, in its order; each future gets its reply."""
        await self._pipeline(batch)

    async def _pipeline(self, batch: list[_Call]) -> None:
        self._in_flight += len(batch)
        try:
            await self._send(batch)
        finally:
            self._in_flight -= len(batch)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await pipelined(
                self._client, [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in batch]
            )
        except Exception as exc:  # the connection: every call of the batch fails with it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):  # Redis restarted empty: load it, run it alone
                try:
                    reply = await script(keys=keys, args=args)
                except Exception as exc:
                    reply = exc
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


@frozen
class ReserveOutcome:
    """What the reserve script did.

    ``status`` is ``ok`` (held: ``granted_out``, the amounts per unit and the ``attempt``),
    ``refused`` (nothing changed; ``used`` is each counter's value), ``dup`` (an open
    reservation with this id exists) or ``committed`` (this id was charged already; nothing
    held). Read the record of either with :meth:`BudgetStore.get`. A released or expired
    reservation with this id is replaced by the next attempt: ``ok`` or ``refused``, as for a
    new id.
    """

    status: str
    used: tuple[int, ...] = ()
    granted_out: int = 0
    amounts: Mapping[Unit, int] = dataclasses.field(default_factory=dict)
    attempt: int = 1


@frozen
class ScriptOutcome:
    """What a commit or release script did: a status and the reservation's record after it
    (its metadata merged in; after a commit, only the fields a caller reports)."""

    status: str
    record: dict[str, str]
    detail: tuple[str, ...] = ()


_Script = tuple[AsyncScript, Sequence[str], Sequence[Any]]


@frozen
class Op:
    """One script call and how to read its reply, for :meth:`BudgetStore.run_ops`."""

    call: _Script
    parse: Callable[[Sequence[Any]], Any]


def _held(reply: Sequence[Any]) -> tuple[str, int]:
    return _text(reply[0]), int(reply[1]) if reply[0] == b"ok" else 0


@frozen
class Hold:
    """A hold a replica admitted from its lease, to record as a reservation (see ``_HOLD``)."""

    reservation_id: str
    lease_id: str
    now_ms: int
    expires_ms: int
    granted_out: int
    amounts: tuple[int, int, int]  # tokens, nano-dollars, requests taken from the block
    fields: str  # the counters the lease covers, comma-separated
    asked: Mapping[str, str]  # the request's metadata, packed when the hold is written (off the path)
    model_meta: str  # the model's part of the metadata, packed once per model (pack_meta)


@frozen
class Snapshot:
    """A tenant's counters and the ledger position they correspond to, read at one instant,
    and how many reservations are open (leases left out)."""

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
        self._lease = client.register_script(_LEASE)
        self._lease_return = client.register_script(_LEASE_RETURN)
        self._hold = client.register_script(_HOLD)
        self._then = {
            self._commit: client.register_script(_HOLD_THEN_COMMIT),
            self._release: client.register_script(_HOLD_THEN_RELEASE),
        }
        self._tenant_keys: dict[str, tuple[str, str, str, str, str]] = {}
        self._batcher = None if isinstance(client, aioredis.RedisCluster) else _Batcher(client)

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._batcher is None:
            return await script(keys=keys, args=args)
        return await self._batcher.call(script, keys, args)

    def key(self, tenant: str, suffix: str) -> str:
        """The key ``{prefix}:{tenant}:suffix`` (the tenant is the hash tag)."""
        return f"{self.prefix}:{{{tenant}}}:{suffix}"

    def _keys(self, tenant: str) -> tuple[str, str, str, str, str]:
        # ctr, open, ledger, convt and the record prefix, formatted once per tenant.
        keys = self._tenant_keys.get(tenant)
        if keys is None:
            if len(self._tenant_keys) > 100_000:
                self._tenant_keys.clear()
            keys = self._tenant_keys[tenant] = (
                self.key(tenant, "ctr"),
                self.key(tenant, "open"),
                self.key(tenant, "ledger"),
                self.key(tenant, "convt"),
                self.key(tenant, "r:"),
            )
        return keys

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
        meta: str,
        demands: Sequence[int],
        counters: str,
    ) -> ReserveOutcome:
        """Checks every counter and, if all fit, holds the amounts and ledgers it (one script).

        Args:
            tenant: The tenant (hash tag of every key).
            reservation_id: 32 hex digits.
            now_ms: Now, Unix ms.
            expires_ms: When the reservation expires if not committed or released.
            max_out: Output tokens asked for.
            min_out: The fewest output tokens the caller accepts (0: all of ``max_out``).
            meta: Fields stored on the reservation and its ledger entry (:func:`pack_meta`).
            demands: What the request needs of a counter of each unit as a function of its
                output tokens: ``fixed, per_output, scale`` of tokens, dollars and requests
                (:class:`tollway.budget.quota.Demand`), nine numbers.
            counters: ``(field, allowed)`` of every counter that applies (:func:`pack_counters`).
        """
        terms = '"' + '","'.join(map(str, demands)) + '"'
        ctr, open_, ledger, convt, rec = self._keys(tenant)
        reply = await self._run(
            self._reserve,
            (ctr, rec + reservation_id, open_, ledger, convt),
            (
                reservation_id,
                now_ms,
                expires_ms,
                max_out,
                min_out,
                meta,
                f"[{terms},{counters[1:]}" if len(counters) > 2 else f"[{terms}]",
            ),
        )
        status = reply[0]
        if status == b"ok":
            attempt, granted, tok, usd, req = map(int, reply[1:6])
            return ReserveOutcome(
                "ok",
                tuple(map(int, reply[6:])),
                granted,
                {Unit.TOKENS: tok, Unit.USD_NANOS: usd, Unit.REQUESTS: req},
                attempt,
            )
        return ReserveOutcome(status.decode(), tuple(map(int, reply[1:])))

    async def get(self, tenant: str, reservation_id: str) -> dict[str, str] | None:
        """A reservation's record (its metadata merged in), or None when there is none."""
        raw = await self.client.hgetall(self.key(tenant, f"r:{reservation_id}"))
        return _with_meta({_text(k): _text(v) for k, v in raw.items()}) or None

    async def commit(self, tenant: str, reservation_id: str, **usage: Any) -> ScriptOutcome:
        """Replaces the estimate with the real usage, ledgers it and adds it to the day's totals
        (the arguments of :meth:`commit_op`).

        Returns:
            Status ``ok``, ``dup`` (already committed with this usage), ``conflict``
            (committed with other usage), ``released``, ``missing``, ``stale`` (detail: the
            attempt holding the id and its state) or ``too_large`` (detail: the field, the
            limit and the model). After ``ok`` the record's ``covered_by`` names the lease that
            paid for it ("" when the counters did).
        """
        op = self.commit_op(tenant, reservation_id, **usage)
        return op.parse(await self._run(*op.call))  # type: ignore[no-any-return]

    def commit_op(
        self,
        tenant: str,
        reservation_id: str,
        *,
        now_ms: int,
        day: str,
        attempt: int,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int,
        provider: str,
        partial: bool,
        model: str,
        lease: str = "",
    ) -> Op:
        """:meth:`commit` as an operation for :meth:`run_ops`.

        Args:
            day: The UTC day whose usage totals the usage is added to.
            attempt: The attempt of the request id this usage belongs to; 0: whichever holds it.
            model: The answering model when it differs from the reserved one (:func:`pack_model`);
                "" prices with the reserved model.
            lease: The lease whose block still counts this hold ("" when none does): the usage
                is taken from the block, and only what it cannot cover reaches the counters.
        """
        ctr, open_, ledger, _, rec = self._keys(tenant)
        call = (
            self._commit,
            (
                ctr,
                rec + reservation_id,
                open_,
                ledger,
                f"{self.prefix}:{{{tenant}}}:u:{day}",
                rec + (lease or reservation_id),
            ),
            (
                reservation_id,
                now_ms,
                attempt,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                provider,
                "1" if partial else "0",
                model,
                self._record_ttl_ms,
                self._usage_ttl_ms,
                lease,
            ),
        )
        return Op(call, self._committed)

    def _committed(self, reply: Sequence[Any]) -> ScriptOutcome:
        if reply[0] == b"ok":
            record = orjson.loads(reply[13])
            record.update(zip(_COMMITTED, (x.decode() for x in reply[1:13]), strict=True))
            record["st"] = "committed"
            record["covered_by"] = reply[14].decode()
            return ScriptOutcome("ok", record)
        return self._outcome(reply)

    async def release(
        self, tenant: str, reservation_id: str, *, now_ms: int, attempt: int, reason: str
    ) -> ScriptOutcome:
        """Returns a held estimate and ledgers it. Status ``ok``, ``dup`` (already released or
        expired), ``committed``, ``missing`` or ``stale`` (another attempt holds the id;
        ``attempt`` 0 releases whichever does). A lease's hold changes no counter (its block
        holds it)."""
        op = self.release_op(tenant, reservation_id, now_ms=now_ms, attempt=attempt, reason=reason)
        return op.parse(await self._run(*op.call))  # type: ignore[no-any-return]

    def release_op(self, tenant: str, reservation_id: str, *, now_ms: int, attempt: int, reason: str) -> Op:
        """:meth:`release` as an operation for :meth:`run_ops`."""
        ctr, open_, ledger, _, rec = self._keys(tenant)
        call = (
            self._release,
            (ctr, rec + reservation_id, open_, ledger),
            (reservation_id, now_ms, attempt, reason, self._record_ttl_ms),
        )
        return Op(call, self._outcome)

    async def run_ops(self, ops: Sequence[Op]) -> list[Any]:
        """Runs operations in order in one round trip (one by one on Redis Cluster, whose
        pipelines refuse EVALSHA); each stays atomic on its own. Returns each one's outcome, or
        the exception its script raised."""
        replies = await self._together([op.call for op in ops])
        return [
            reply if isinstance(reply, Exception) else op.parse(reply) for op, reply in zip(ops, replies, strict=True)
        ]

    # --- leases -----------------------------------------------------------------------------

    async def take_lease(
        self,
        tenant: str,
        lease_id: str,
        *,
        now_ms: int,
        expires_ms: int,
        spread: int,
        meta: str,
        wanted: Sequence[tuple[int, int]],
        counters: str,
    ) -> tuple[bool, tuple[int, int, int], tuple[int, ...]]:
        """Holds a block of every counter in ``counters`` for one replica to admit from (one script).

        Args:
            wanted: Per unit (tokens, dollars, requests), the block wanted and the least worth
                taking.
            spread: The block is at most 1/spread of the room left below each counter's limit.
            counters: ``(field, allowed)`` of every counter, allowed for the lowest priority
                (:func:`pack_counters`).

        Returns:
            Whether it was taken, the block per unit and each counter's value before.
        """
        ctr, open_, ledger, _, rec = self._keys(tenant)
        terms = ",".join(f'"{w}","{least}"' for w, least in wanted)
        reply = await self._run(
            self._lease,
            (ctr, rec + lease_id, open_, ledger),
            (
                lease_id,
                now_ms,
                expires_ms,
                spread,
                meta,
                f"[{terms},{counters[1:]}" if len(counters) > 2 else f"[{terms}]",
            ),
        )
        if reply[0] == b"ok":
            return True, (int(reply[1]), int(reply[2]), int(reply[3])), tuple(map(int, reply[4:]))
        return False, (0, 0, 0), tuple(map(int, reply[1:]))

    async def return_lease(
        self, tenant: str, lease_id: str, *, now_ms: int, amounts: tuple[int, int, int], close: bool
    ) -> tuple[int, int, int] | None:
        """Gives back part of a lease's block (``close``: all of it, and ends the lease).

        Returns what went back per unit, or None when the lease was no longer open (expired by
        a sweeper, or closed before)."""
        ctr, open_, ledger, _, rec = self._keys(tenant)
        reply = await self._run(
            self._lease_return,
            (ctr, rec + lease_id, open_, ledger),
            (lease_id, now_ms, *amounts, "1" if close else "0", self._record_ttl_ms),
        )
        if reply[0] != b"ok":
            return None
        return int(reply[1]), int(reply[2]), int(reply[3])

    def hold_op(self, tenant: str, hold: Hold) -> Op:
        """Records a hold admitted from a lease (see ``_HOLD``); its outcome is ``(status,
        attempt)``: ``ok`` (recorded as that attempt of its request id), ``dup`` (the id is held
        by another reservation) or ``committed`` (the id was charged before), with attempt 0."""
        _, open_, ledger, _, rec = self._keys(tenant)
        call = (
            self._hold,
            (rec + hold.reservation_id, open_, ledger),
            (
                hold.reservation_id,
                hold.now_ms,
                hold.expires_ms,
                hold.lease_id,
                hold.granted_out,
                *hold.amounts,
                hold.fields,
                join_meta(pack_meta(hold.asked), hold.model_meta),
            ),
        )
        return Op(call, _held)

    def hold_then(self, hold: Op, then: Op) -> Op:
        """:meth:`hold_op` and the commit or release of that hold as one operation (one script
        call); its outcome is both outcomes, as a pair."""
        (_, h_keys, h_args), (t_script, t_keys, t_args) = hold.call, then.call
        call = (self._then[t_script], (*h_keys, *t_keys), (len(h_keys), len(h_args), *h_args, *t_args))
        first, second = hold.parse, then.parse
        return Op(call, lambda reply: (first(reply[0]), second(reply[1])))

    async def _together(self, calls: Sequence[_Script]) -> list[Any]:
        """Runs scripts in order in one round trip; each one's reply or exception."""
        if self._batcher is None:
            out: list[Any] = []
            for script, keys, args in calls:
                try:
                    out.append(await script(keys=keys, args=args))
                except ResponseError as exc:
                    out.append(exc)
            return out
        loop = asyncio.get_running_loop()
        batch: list[_Call] = [(script, keys, args, loop.create_future()) for script, keys, args in calls]
        await self._batcher.send_now(batch)
        out = [future.exception() or future.result() for *_, future in batch]
        for reply in out:  # the connection failed: every call failed with it
            if isinstance(reply, Exception) and (is_outage(reply) or isinstance(reply, OSError | TimeoutError)):
                raise reply
        return out

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
        if status in ("too_large", "stale"):
            return ScriptOutcome(status, {}, tuple(_text(x) for x in reply[1:]))  # type: ignore[arg-type]
        record = _with_meta(_record(reply[1])) if len(reply) > 1 else {}  # type: ignore[arg-type]
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
            pipe.zrange(self.key(tenant, "open"), 0, -1)
            counters, last, open_ids = await pipe.execute()
        return Snapshot(
            {_text(k): int(v) for k, v in counters.items()},
            _text(last[0][0]) if last else "",
            sum(1 for i in open_ids if not i.startswith(LEASE_MARK)),  # leases are not reservations
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
