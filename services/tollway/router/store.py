"""The router's only Redis module: circuit breakers and provider limits shared by every replica.

Layout (all keys share the ``{tollway:router:breakers}`` hash tag, so the script's keys
live in one slot on a cluster too):

    {tollway:router:breakers}:b:<name>    hash: state, consec, opened_at, cooldown (of this
                                          opening, ms), probe, probe_until,
                                          changed_at, last_error, and per-bucket counters
                                          n:<bucket> (calls) and f:<bucket> (failures)
    {tollway:router:breakers}:names       set of every breaker name ever used
    {tollway:router:breakers}:transitions stream of transitions (breaker, from, to, reason,
                                          replica, at_ms), capped at ~10,000 entries

Every change goes through one Lua script, so concurrent replicas can never both take the
half-open probe, both open a breaker, or lose a failure count. Times come from the Redis
server's clock, the one clock all replicas share.

Provider limits (:mod:`tollway.router.limits`) share the ``{tollway:router:limits}`` tag:

    {tollway:router:limits}:d:<deployment>  hash: r:<second> calls and t:<second> tokens
                                            counted in that second of the sliding minute

One script checks a model's candidate deployments in order and charges the first that
fits, so a pick is one round trip and two replicas can never both take the last call.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from tollway.common.catalog import Deployment
from tollway.router.breaker import CLOSED, OPEN, BreakerSettings, BreakerSnapshot, StoreResult, Transition
from tollway.router.limits import BUCKET_MS, WINDOW_MS, Taken, Verdict

PREFIX = "{tollway:router:breakers}"
NAMES = f"{PREFIX}:names"
TRANSITIONS = f"{PREFIX}:transitions"
_TTL_MS = 7 * 24 * 3600 * 1000

# KEYS: 1 breaker hash, 2 transitions stream, 3 names set.
# ARGV: 1 op (acquire|record|release), 2 name, 3 token, 4 failure_threshold, 5 error_rate,
#       6 window_ms, 7 min_requests, 8 cooldown_ms, 9 probe_timeout_ms, 10 bucket_ms,
#       11 ok (1|0), 12 detail, 13 replica, 14 ttl_ms, 15 count (calls this record stands for;
#       successes are reported in batches), 16 refused (1|0: the failure was a refused
#       connection), 17 refused_cooldown_ms (the cooldown of an opening caused by one).
# Returns {decision, state, consecutive, retry_at_ms, now_ms, transitioned_from}.
_SCRIPT = r"""
local h, stream, names = KEYS[1], KEYS[2], KEYS[3]
local op, name, token = ARGV[1], ARGV[2], ARGV[3]
local threshold, rate = tonumber(ARGV[4]), tonumber(ARGV[5])
local window_ms, min_requests = tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown_ms, probe_ms, bucket_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local ok, detail, replica, ttl = ARGV[11] == '1', ARGV[12], ARGV[13], tonumber(ARGV[14])
local count = tonumber(ARGV[15] or '1')
local refused, refused_cooldown_ms = ARGV[16] == '1', tonumber(ARGV[17] or ARGV[8])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', h, 'state') or 'closed'
local consec = tonumber(redis.call('HGET', h, 'consec') or '0')
local from = ''

local function move(to, reason)
  from = state
  state = to
  redis.call('HSET', h, 'state', to, 'changed_at', now)
  redis.call('XADD', stream, 'MAXLEN', '~', 10000, '*', 'breaker', name, 'from', from, 'to', to,
             'reason', reason, 'replica', replica, 'at_ms', now)
end

-- The failure that opens the breaker sets its cooldown: a refused connection sent nothing,
-- so it is probed again soon; anything else waits the full cooldown.
local function open(reason)
  local cooldown = cooldown_ms
  if refused then
    cooldown = math.min(cooldown_ms, refused_cooldown_ms)
  end
  move('open', reason)
  redis.call('HSET', h, 'opened_at', now, 'cooldown', cooldown)
  redis.call('HDEL', h, 'probe', 'probe_until')
end

local function cooldown_of_opening()
  return tonumber(redis.call('HGET', h, 'cooldown') or cooldown_ms)
end

local function window()
  local oldest = math.floor((now - window_ms) / bucket_ms)
  local fields = redis.call('HGETALL', h)
  local total, failed = 0, 0
  for i = 1, #fields, 2 do
    local kind, bucket = string.match(fields[i], '^([nf]):(%d+)$')
    if kind then
      if tonumber(bucket) <= oldest then
        redis.call('HDEL', h, fields[i])
      elseif kind == 'n' then
        total = total + tonumber(fields[i + 1])
      else
        failed = failed + tonumber(fields[i + 1])
      end
    end
  end
  return total, failed
end

local function reply(decision, retry_at)
  redis.call('PEXPIRE', h, ttl)
  return {decision, state, consec, retry_at, now, from}
end

if op == 'acquire' then
  redis.call('SADD', names, name)
  if state == 'closed' then
    return reply('allow', 0)
  end
  if state == 'open' then
    local cooldown = cooldown_of_opening()
    local due = tonumber(redis.call('HGET', h, 'opened_at') or '0') + cooldown
    if now < due then
      return reply('reject', due)
    end
    move('half_open', 'cooldown of ' .. cooldown .. ' ms elapsed; one probe allowed')
  end
  local lease = tonumber(redis.call('HGET', h, 'probe_until') or '0')
  if now >= lease then
    redis.call('HSET', h, 'probe', token, 'probe_until', now + probe_ms)
    return reply('probe', now + probe_ms)
  end
  return reply('reject', lease)
end

if op == 'release' then
  if state == 'half_open' and redis.call('HGET', h, 'probe') == token then
    redis.call('HSET', h, 'probe_until', 0)
  end
  return reply('ok', 0)
end

-- op == 'record'
if state == 'closed' then
  local bucket = math.floor(now / bucket_ms)
  redis.call('HINCRBY', h, 'n:' .. bucket, count)
  if ok then
    consec = 0
    redis.call('HSET', h, 'consec', 0)
  else
    redis.call('HINCRBY', h, 'f:' .. bucket, 1)
    consec = redis.call('HINCRBY', h, 'consec', 1)
    redis.call('HSET', h, 'last_error', detail)
  end
  local total, failed = window()
  if not ok then
    if consec >= threshold then
      open(consec .. ' consecutive failures; last: ' .. detail)
    elseif rate > 0 and total >= min_requests and failed / total >= rate then
      open(failed .. ' of ' .. total .. ' calls failed in ' .. window_ms .. ' ms; last: ' .. detail)
    end
  end
elseif state == 'half_open' and redis.call('HGET', h, 'probe') == token then
  if ok then
    move('closed', 'probe succeeded')
    consec = 0
    local fields = redis.call('HKEYS', h)
    for i = 1, #fields do
      if string.match(fields[i], '^[nf]:') then
        redis.call('HDEL', h, fields[i])
      end
    end
    redis.call('HSET', h, 'consec', 0)
    redis.call('HDEL', h, 'probe', 'probe_until', 'opened_at', 'cooldown')
  else
    open('probe failed: ' .. detail)
  end
end
-- A late result (the call began before the breaker opened, or after another probe won)
-- changes nothing: only the probe decides a half-open breaker.
local retry_at = 0
if state == 'open' then
  retry_at = tonumber(redis.call('HGET', h, 'opened_at') or '0') + cooldown_of_opening()
end
return reply('ok', retry_at)
"""


def _key(name: str) -> str:
    return f"{PREFIX}:b:{name}"


def _str(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore:
    """Breaker state in Redis; implements :class:`tollway.router.breaker.BreakerStore`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._script = client.register_script(_SCRIPT)

    async def _run(
        self,
        op: str,
        name: str,
        token: str,
        settings: BreakerSettings,
        ok: bool = False,
        detail: str = "",
        replica: str = "",
        count: int = 1,
        refused: bool = False,
    ) -> StoreResult:
        raw = await self._script(
            keys=[_key(name), TRANSITIONS, NAMES],
            args=[
                op,
                name,
                token,
                settings.failure_threshold,
                settings.error_rate,
                int(settings.window_s * 1000),
                settings.min_requests,
                int(settings.cooldown_s * 1000),
                int(settings.probe_timeout_s * 1000),
                settings.bucket_ms,
                "1" if ok else "0",
                detail,
                replica,
                _TTL_MS,
                count,
                "1" if refused else "0",
                int(settings.refused_cooldown_s * 1000),
            ],
        )
        decision, state, consec, retry_at, now, came_from = raw
        return StoreResult(_str(decision), _str(state), int(consec), int(retry_at), int(now), _str(came_from))

    async def acquire(self, name: str, token: str, settings: BreakerSettings, replica: str) -> StoreResult:
        return await self._run("acquire", name, token, settings, replica=replica)

    async def record(
        self,
        name: str,
        token: str,
        ok: bool,
        detail: str,
        settings: BreakerSettings,
        replica: str,
        count: int = 1,
        refused: bool = False,
    ) -> StoreResult:
        return await self._run(
            "record", name, token, settings, ok=ok, detail=detail, replica=replica, count=count, refused=refused
        )

    async def release(self, name: str, token: str) -> None:
        await self._run("release", name, token, BreakerSettings())

    async def known_names(self) -> list[str]:
        """Every breaker name any replica has used."""
        return sorted(_str(n) for n in await self.client.smembers(NAMES))

    async def snapshots(self, names: Sequence[str], settings: BreakerSettings) -> list[BreakerSnapshot]:
        # TIME on its own: a Redis Cluster pipeline refuses commands that name no key. Snapshots are
        # read by the periodic refresh and ListBreakers, not per request, so the extra trip is cheap.
        seconds, micros = await self.client.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(_key(name))
            replies = await pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        oldest = (now - int(settings.window_s * 1000)) // settings.bucket_ms
        out: list[BreakerSnapshot] = []
        for name, raw in zip(names, replies, strict=True):
            fields = {_str(k): _str(v) for k, v in raw.items()}
            total = failed = 0
            for field, value in fields.items():
                kind, _, bucket = field.partition(":")
                if kind in ("n", "f") and bucket.isdigit() and int(bucket) > oldest:
                    if kind == "n":
                        total += int(value)
                    else:
                        failed += int(value)
            state = fields.get("state", CLOSED)
            opened = int(fields.get("opened_at") or 0)
            cooldown = int(fields.get("cooldown") or settings.cooldown_s * 1000)
            next_probe = opened + cooldown if state == OPEN else 0
            out.append(
                BreakerSnapshot(
                    name=name,
                    state=state,
                    consecutive_failures=int(fields.get("consec") or 0),
                    window_requests=total,
                    window_failures=failed,
                    opened_at_ms=opened if state != CLOSED else 0,
                    next_probe_at_ms=next_probe,
                    changed_at_ms=int(fields.get("changed_at") or 0),
                    last_error=fields.get("last_error", ""),
                )
            )
        return out

    async def transitions(self, limit: int, before_id: str = "", breaker: str = "") -> list[Transition]:
        out: list[Transition] = []
        upper = f"({before_id}" if before_id else "+"
        # Filtering by breaker happens here, so read in pages until enough match.
        while len(out) < limit:
            batch = await self.client.xrevrange(TRANSITIONS, max=upper, min="-", count=max(limit, 100))
            if not batch:
                break
            for entry_id, raw in batch:
                f = {_str(k): _str(v) for k, v in raw.items()}
                if breaker and f.get("breaker") != breaker:
                    continue
                out.append(
                    Transition(
                        id=_str(entry_id),
                        breaker=f.get("breaker", ""),
                        from_state=f.get("from", ""),
                        to_state=f.get("to", ""),
                        reason=f.get("reason", ""),
                        at_ms=int(f.get("at_ms") or 0),
                        replica=f.get("replica", ""),
                    )
                )
                if len(out) == limit:
                    break
            upper = f"({_str(batch[-1][0])}"
        return out


LIMITS_PREFIX = "{tollway:router:limits}"

# KEYS: one window hash per candidate deployment, in the order to try them.
# ARGV: 1 tokens, 2 window_ms, 3 bucket_ms, then rpm, tpm per candidate (0 = no limit).
# Returns {chosen (1-based; 0 = none fits), bucket, then wait_ms, limit per candidate passed
# over}. The arithmetic is tollway.router.limits.check's; keep the two in step.
_LIMITS_SCRIPT = r"""
local tokens, window, bms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = math.floor(now / bms)
local oldest = math.floor((now - window) / bms)
local passed = {}
for i = 1, #KEYS do
  local h = KEYS[i]
  local rpm, tpm = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local function over(r, tk)
    if rpm > 0 and r + 1 > rpm then return 'rpm' end
    if tpm > 0 and tk + tokens > tpm then return 'tpm' end
    return ''
  end
  if tpm > 0 and tokens > tpm then
    passed[#passed + 1] = -1
    passed[#passed + 1] = 'tpm'
  else
    local fields = redis.call('HGETALL', h)
    local by, list, ur, ut = {}, {}, 0, 0
    for j = 1, #fields, 2 do
      local kind, b = string.match(fields[j], '^([rt]):(%d+)$')
      if kind then
        b = tonumber(b)
        if b < oldest then
          redis.call('HDEL', h, fields[j])
        else
          local v = tonumber(fields[j + 1])
          if not by[b] then by[b] = {0, 0}; list[#list + 1] = b end
          if kind == 'r' then
            by[b][1] = by[b][1] + v; ur = ur + v
          else
            by[b][2] = by[b][2] + v; ut = ut + v
          end
        end
      end
    end
    local first = over(ur, ut)
    if first == '' then
      redis.call('HINCRBY', h, 'r:' .. bucket, 1)
      redis.call('HINCRBY', h, 't:' .. bucket, tokens)
      redis.call('PEXPIRE', h, window + 2 * bms)
      local out = {i, bucket}
      for j = 1, #passed do out[#out + 1] = passed[j] end
      return out
    end
    table.sort(list)
    local wait = -1
    for _, b in ipairs(list) do
      ur = ur - by[b][1]; ut = ut - by[b][2]
      if over(ur, ut) == '' then
        wait = math.max(1, (b + 1) * bms + window - now)
        break
      end
    end
    passed[#passed + 1] = wait
    passed[#passed + 1] = first
  end
end
local out = {0, bucket}
for j = 1, #passed do out[#out + 1] = passed[j] end
return out
"""

# KEYS: the window hash.  ARGV: bucket, tokens.  A bucket that already left the window
# (and was deleted) is not recreated.
_GIVE_BACK_SCRIPT = r"""
local h = KEYS[1]
if redis.call('HEXISTS', h, 'r:' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', h, 'r:' .. ARGV[1], -1)
  redis.call('HINCRBY', h, 't:' .. ARGV[1], -tonumber(ARGV[2]))
end
return 1
"""


def limit_key(deployment_key: str) -> str:
    """The window hash of one deployment."""
    return f"{LIMITS_PREFIX}:d:{deployment_key}"


class RedisLimitStore:
    """Provider-limit windows in Redis; implements :class:`tollway.router.limits.LimitStore`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._take = client.register_script(_LIMITS_SCRIPT)
        self._give_back = client.register_script(_GIVE_BACK_SCRIPT)

    async def take(self, candidates: Sequence[Deployment], tokens: int) -> Taken:
        args: list[int] = [tokens, WINDOW_MS, BUCKET_MS]
        for dep in candidates:
            args += [dep.rpm, dep.tpm]
        raw = await self._take(keys=[limit_key(d.key) for d in candidates], args=args)
        chosen, bucket = int(raw[0]), int(raw[1])
        rest = raw[2:]
        verdicts = tuple(Verdict(False, int(rest[j]), _str(rest[j + 1])) for j in range(0, len(rest), 2))
        return Taken(chosen - 1, verdicts, bucket)

    async def give_back(self, deployment: Deployment, tokens: int, bucket: int) -> None:
        await self._give_back(keys=[limit_key(deployment.key)], args=[bucket, tokens])
