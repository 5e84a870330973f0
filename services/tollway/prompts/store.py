"""The prompts' Redis layout; the only module of the prompts service that talks to Redis.

Keys (``{p}`` is the prefix, ``tw:prompts`` by default; ``{T}`` the template id as hash tag, so
all keys one script touches sit in one Redis Cluster slot)::

    {p}:templates        ZSET   every template id (score 0: listed in id order by ZRANGEBYLEX)
    {p}:{T}:meta         HASH   desc, created_ms, latest (the newest version number)
    {p}:{T}:versions     HASH   version number -> the version as JSON (never changed)
    {p}:{T}:hashes       HASH   content hash -> version number (idempotent publish)
    {p}:{T}:labels       HASH   label -> version
    {p}:{T}:prev         HASH   label -> the version before its last move (what rollback restores)
    {p}:{T}:variants     HASH   label -> its A/B split as JSON [[version, weight], ...]
    {p}:{T}:pins         HASH   tenant -> version
    {p}:{T}:history      STREAM one entry per label move: label, from, to, actor, at, kind, reason
    {p}:{T}:eval:<n>     HASH   metric|n and metric|sum of version n's scores
    {p}:{T}:evreq:<id>   STRING a RecordEvaluation request already counted (expires)

Every write that must not race is one Lua script: a publish reads the content-hash index and
takes the next number in one atomic step (so concurrent publishes get distinct, gap-free
numbers, and identical content is never published twice); a label move checks the version
exists, moves the label and appends the history entry together, so history cannot disagree
with the labels. The template list is added to before the template is created (it lives in
another slot); a listed id whose template does not exist is skipped when listing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis.asyncio as aioredis

from tollway.mesh.frozen import frozen

# KEYS: meta. ARGV: desc, created_ms. Returns {'created'} | {'exists', desc, created_ms, latest}.
_CREATE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  local m = redis.call('HMGET', KEYS[1], 'desc', 'created_ms', 'latest')
  return {'exists', m[1], m[2], m[3]}
end
redis.call('HSET', KEYS[1], 'desc', ARGV[1], 'created_ms', ARGV[2], 'latest', '0')
return {'created'}
"""

# KEYS: meta, versions, hashes. ARGV: content hash, version JSON (without its number).
# Returns {'missing'} | {'dup', n} | {'new', n}.
_PUBLISH = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local n = redis.call('HGET', KEYS[3], ARGV[1])
if n then return {'dup', n} end
n = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[2], n, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], n)
return {'new', tostring(n)}
"""

_VERSION_CHECK = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local latest = tonumber(redis.call('HGET', KEYS[1], 'latest'))
local function exists(v) v = tonumber(v); return v and v >= 1 and v <= latest and math.floor(v) == v end
"""

# KEYS: meta, labels, prev, history. ARGV: label, version, expected ('' = any), actor, at_ms,
# reason, only_if_absent ('1'/'0').
# Returns {'missing'} | {'noversion', latest} | {'kept', current} | {'conflict', current}
#       | {'same'} | {'moved', from, history id}.
_SET_LABEL = (
    _VERSION_CHECK
    + r"""
local label, version = ARGV[1], ARGV[2]
if not exists(version) then return {'noversion', tostring(latest)} end
local current = redis.call('HGET', KEYS[2], label)
if ARGV[7] == '1' and current then return {'kept', current} end
if ARGV[3] ~= '' and (current or '0') ~= ARGV[3] then return {'conflict', current or '0'} end
if current == version then return {'same'} end
redis.call('HSET', KEYS[2], label, version)
redis.call('HSET', KEYS[3], label, current or '0')
local id = redis.call('XADD', KEYS[4], '*', 'label', label, 'from', current or '0', 'to', version,
  'actor', ARGV[4], 'at', ARGV[5], 'kind', 'set', 'reason', ARGV[6])
return {'moved', current or '0', id}
"""
)

# KEYS: meta, labels, prev, history. ARGV: label, actor, at_ms, reason.
# Returns {'missing'} | {'nolabel'} | {'noprev', current} | {'moved', from, to, history id}.
_ROLLBACK = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local label = ARGV[1]
local current = redis.call('HGET', KEYS[2], label)
if not current then return {'nolabel'} end
local target = redis.call('HGET', KEYS[3], label)
if not target or target == '0' or target == current then return {'noprev', current} end
redis.call('HSET', KEYS[2], label, target)
redis.call('HSET', KEYS[3], label, current)
local id = redis.call('XADD', KEYS[4], '*', 'label', label, 'from', current, 'to', target,
  'actor', ARGV[2], 'at', ARGV[3], 'kind', 'rollback', 'reason', ARGV[4])
return {'moved', current, target, id}
"""

# KEYS: meta, labels, variants. ARGV: label, split JSON ('' = none), versions...
# Returns {'missing'} | {'nolabel'} | {'noversion', v} | {'ok', label version}.
_SET_VARIANTS = (
    _VERSION_CHECK
    + r"""
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current then return {'nolabel'} end
for i = 3, #ARGV do
  if not exists(ARGV[i]) then return {'noversion', ARGV[i]} end
end
if ARGV[2] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) else redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
return {'ok', current}
"""
)

# KEYS: meta, pins. ARGV: tenant, version. Returns {'missing'} | {'noversion', latest} | {'ok'}.
_PIN = (
    _VERSION_CHECK
    + r"""
if not exists(ARGV[2]) then return {'noversion', tostring(latest)} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'ok'}
"""
)

# KEYS: meta, eval hash, request key ('' unused). ARGV: version, metric, score, dedup_ms.
# Returns {'missing'} | {'noversion', latest} | {'ok'|'dup', count, sum}.
_EVALUATE = (
    _VERSION_CHECK
    + r"""
if not exists(ARGV[1]) then return {'noversion', tostring(latest)} end
local n, s = ARGV[2] .. '|n', ARGV[2] .. '|sum'
if #KEYS >= 3 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[4]) then
  local v = redis.call('HMGET', KEYS[2], n, s)
  return {'dup', v[1] or '0', v[2] or '0'}
end
local count = redis.call('HINCRBY', KEYS[2], n, 1)
local sum = redis.call('HINCRBYFLOAT', KEYS[2], s, ARGV[3])
return {'ok', tostring(count), sum}
"""
)


def _s(value: bytes | str | int | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


@frozen
class ScriptResult:
    """A script's reply: its outcome word and the values after it, as text."""

    outcome: str
    values: tuple[str, ...] = ()


@frozen
class TemplateRow:
    """A template's stored state."""

    template_id: str
    description: str
    created_ms: int
    latest: int
    labels: dict[str, int]
    variants: dict[str, str]
    pins: dict[str, int]


@frozen
class RouteRow:
    """What ResolvePrompt reads per request: the label's version and split, the tenant's pin."""

    label_version: int | None
    variants_json: str
    pin: int | None


@frozen
class HistoryRow:
    """One history stream entry."""

    entry_id: str
    fields: dict[str, str]


class PromptsStore:
    """Reads and writes the prompts' keys.

    Args:
        client: A client from :func:`tollway.mesh.redis.connect`.
        prefix: The key prefix.
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._r = client
        self._p = prefix
        self._create = client.register_script(_CREATE)
        self._publish = client.register_script(_PUBLISH)
        self._set_label = client.register_script(_SET_LABEL)
        self._rollback = client.register_script(_ROLLBACK)
        self._set_variants = client.register_script(_SET_VARIANTS)
        self._pin = client.register_script(_PIN)
        self._evaluate = client.register_script(_EVALUATE)

    def _k(self, template_id: str, part: str) -> str:
        return f"{self._p}:{{{template_id}}}:{part}"

    @staticmethod
    def _result(raw: Sequence[bytes | str | int]) -> ScriptResult:
        return ScriptResult(_s(raw[0]), tuple(_s(v) for v in raw[1:]))

    # -- writes -----------------------------------------------------------------------------

    async def create_template(self, template_id: str, description: str, created_ms: int) -> ScriptResult:
        """Creates the template unless it exists: ``created`` or ``exists`` (desc, created_ms, latest)."""
        await self._r.zadd(f"{self._p}:templates", {template_id: 0})
        raw = await self._create(keys=[self._k(template_id, "meta")], args=[description, created_ms])
        return self._result(raw)

    async def publish(self, template_id: str, content_hash: str, body: str) -> ScriptResult:
        """``new``/``dup`` with the version number, or ``missing`` (no such template)."""
        keys = [self._k(template_id, p) for p in ("meta", "versions", "hashes")]
        return self._result(await self._publish(keys=keys, args=[content_hash, body]))

    async def set_label(
        self,
        template_id: str,
        label: str,
        version: int,
        *,
        expected: int | None,
        actor: str,
        at_ms: int,
        reason: str,
        only_if_absent: bool = False,
    ) -> ScriptResult:
        """Moves a label (see ``_SET_LABEL`` for the outcomes)."""
        keys = [self._k(template_id, p) for p in ("meta", "labels", "prev", "history")]
        args = [label, version, "" if expected is None else expected, actor, at_ms, reason, int(only_if_absent)]
        return self._result(await self._set_label(keys=keys, args=args))

    async def rollback_label(
        self, template_id: str, label: str, *, actor: str, at_ms: int, reason: str
    ) -> ScriptResult:
        """Moves a label back (see ``_ROLLBACK`` for the outcomes)."""
        keys = [self._k(template_id, p) for p in ("meta", "labels", "prev", "history")]
        return self._result(await self._rollback(keys=keys, args=[label, actor, at_ms, reason]))

    async def set_variants(self, template_id: str, label: str, split: Sequence[tuple[int, int]]) -> ScriptResult:
        """Sets (or, empty, removes) a label's split (see ``_SET_VARIANTS``)."""
        keys = [self._k(template_id, p) for p in ("meta", "labels", "variants")]
        body = json.dumps([list(arm) for arm in split]) if split else ""
        return self._result(await self._set_variants(keys=keys, args=[label, body, *(v for v, _ in split)]))

    async def set_pin(self, template_id: str, tenant: str, version: int) -> ScriptResult:
        """Pins a tenant (see ``_PIN``)."""
        keys = [self._k(template_id, "meta"), self._k(template_id, "pins")]
        return self._result(await self._pin(keys=keys, args=[tenant, version]))

    async def delete_pin(self, template_id: str, tenant: str) -> bool:
        """Removes a pin; whether there was one."""
        return bool(await self._r.hdel(self._k(template_id, "pins"), tenant))

    async def record_evaluation(
        self, template_id: str, version: int, metric: str, score: float, request_id: str, dedup_ms: int
    ) -> ScriptResult:
        """Adds a score (see ``_EVALUATE``): the outcome, then the metric's count and sum."""
        keys = [self._k(template_id, "meta"), self._k(template_id, f"eval:{version}")]
        if request_id:
            keys.append(self._k(template_id, f"evreq:{request_id}"))
        return self._result(await self._evaluate(keys=keys, args=[version, metric, repr(score), dedup_ms]))

    # -- reads ------------------------------------------------------------------------------

    async def template(self, template_id: str) -> TemplateRow | None:
        """The template with its labels, splits and pins; None if it does not exist."""
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hmget(self._k(template_id, "meta"), "desc", "created_ms", "latest")
            pipe.hgetall(self._k(template_id, "labels"))
            pipe.hgetall(self._k(template_id, "variants"))
            pipe.hgetall(self._k(template_id, "pins"))
            meta, labels, variants, pins = await pipe.execute()
        if meta[1] is None:
            return None
        return TemplateRow(
            template_id=template_id,
            description=_s(meta[0]),
            created_ms=int(meta[1]),
            latest=int(meta[2] or 0),
            labels={_s(k): int(v) for k, v in labels.items()},
            variants={_s(k): _s(v) for k, v in variants.items()},
            pins={_s(k): int(v) for k, v in pins.items()},
        )

    async def exists(self, template_id: str) -> bool:
        """Whether the template exists."""
        return bool(await self._r.exists(self._k(template_id, "meta")))

    async def latest(self, template_id: str) -> int | None:
        """The newest version number (0: none), or None if the template does not exist."""
        raw = await self._r.hget(self._k(template_id, "meta"), "latest")
        return None if raw is None else int(raw)

    async def version(self, template_id: str, number: int) -> str | None:
        """A version's JSON, or None."""
        raw = await self._r.hget(self._k(template_id, "versions"), str(number))
        return None if raw is None else _s(raw)

    async def versions(self, template_id: str, numbers: Sequence[int]) -> list[str | None]:
        """Several versions' JSON, in the order asked (None for a missing one)."""
        if not numbers:
            return []
        raw = await self._r.hmget(self._k(template_id, "versions"), [str(n) for n in numbers])
        return [None if r is None else _s(r) for r in raw]

    async def evaluations(self, template_id: str, number: int) -> dict[str, str]:
        """Version ``number``'s evaluation fields (``metric|n``, ``metric|sum``)."""
        raw = await self._r.hgetall(self._k(template_id, f"eval:{number}"))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def route(self, template_id: str, label: str, tenant: str) -> RouteRow:
        """The routing state one ResolvePrompt needs, in one round trip."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hget(self._k(template_id, "labels"), label)
            pipe.hget(self._k(template_id, "variants"), label)
            if tenant:
                pipe.hget(self._k(template_id, "pins"), tenant)
            found = await pipe.execute()
        pin = found[2] if tenant else None
        return RouteRow(
            label_version=None if found[0] is None else int(found[0]),
            variants_json=_s(found[1]),
            pin=None if pin is None else int(pin),
        )

    async def template_ids(self, after: str, count: int) -> list[str]:
        """Up to ``count`` listed template ids after ``after`` ("" = from the first), in order."""
        start = f"({after}" if after else "-"
        raw = await self._r.zrangebylex(f"{self._p}:templates", start, "+", start=0, num=count)
        return [_s(r) for r in raw]

    async def history(self, template_id: str, before: str, count: int) -> list[HistoryRow]:
        """Up to ``count`` history entries older than entry id ``before`` ("" = the newest), newest first."""
        end = f"({before}" if before else "+"
        raw = await self._r.xrevrange(self._k(template_id, "history"), end, "-", count=count)
        return [HistoryRow(_s(i), {_s(k): _s(v) for k, v in f.items()}) for i, f in raw]
