"""The cache: lookup, store, invalidate, stats and quality samples, without gRPC.

A lookup goes tier 1 (exact key, one Redis round trip), then tier 2 (this replica's
hnswlib index, then one pipelined read of the best candidates, each re-checked against
Redis: namespace, context, scope, expiry, then the second check). Nothing the index
says is trusted on its own: it only proposes candidates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from tollway.cache import false_hits, metrics, presets, quality, verifier
from tollway.cache.entries import (
    Entry,
    InvalidateTarget,
    LookupOutcome,
    LookupQuery,
    MissReason,
    NamespaceStats,
    QualityResult,
    QualitySample,
    Rejection,
    Requester,
    SkipReason,
    StoreCommand,
    StoreOutcome,
)
from tollway.cache.index import normalise
from tollway.cache.keys import CacheKeyInput, Fingerprint, context_key, context_tag, exact_key
from tollway.cache.namespaces import Namespace, NamespaceRegistry
from tollway.cache.scope import Scope, strictest, visible
from tollway.cache.stats import REJECTION_PREFIX, Stat, StatsBuffer, rejection_stat
from tollway.cache.store import CacheStore
from tollway.cache.sync import IndexSync
from tollway.common.caching import CacheMode, CacheTier
from tollway.mesh.background import Background
from tollway.mesh.errors import InvalidArgument
from tollway.mesh.frozen import frozen

log = logging.getLogger("tollway.cache")

MAX_DOCUMENT_IDS = 256
MAX_ID_CHARS = 256


class Verdict(Protocol):
    """What the second check says about one tier-2 candidate."""

    accept: bool
    reason: str


Verifier = Callable[[str, str, float, float], Verdict]


@frozen
class _Accept:
    accept: bool = True
    reason: str = "no second check installed"


def accept_all(query: str, candidate: str, cosine: float, threshold: float) -> Verdict:
    """The second check used until ``tollway.cache.verifier`` exists: accepts every candidate."""
    return _Accept()


def verifier_for(namespace: Namespace) -> Verifier:
    """The second check a namespace runs: its preset's rules, or the default rules."""
    if namespace.preset:
        return presets.verifier_for(namespace.preset).verify
    return verifier.verify


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@frozen
class CacheSettings:
    """Tuning that is not per namespace.

    Attributes:
        dim: Embedding dimension every vector must have.
        max_verified: Tier-2 candidates read from Redis and checked per lookup, best first.
        sweep_interval_s: How often entries past their stale grace period are deleted.
        stats_flush_interval_s: How often counters are written to Redis.
        namespaces_poll_s: How often the namespaces file's modification time is checked.
        snapshot_interval_s: How often the index is snapshotted when it changed (0: only at stop).
    """

    dim: int = 384
    max_verified: int = 4
    sweep_interval_s: float = 5.0
    stats_flush_interval_s: float = 1.0
    namespaces_poll_s: float = 2.0
    snapshot_interval_s: float = 600.0


class Cache:
    """The domain object behind tollway.cache.v1.CacheService."""

    def __init__(
        self,
        store: CacheStore,
        namespaces: NamespaceRegistry,
        sync: IndexSync,
        *,
        settings: CacheSettings | None = None,
        verifier: Verifier | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        """Wires the cache; call :meth:`start` before serving.

        Args:
            store: Redis access.
            namespaces: The namespaces in force.
            sync: This replica's index and its follower.
            settings: Tuning; defaults otherwise.
            verifier: A second check for every namespace (tests); by default each namespace
                runs its preset's rules (:func:`verifier_for`).

        Raises:
            LearnedCheckError: A namespace's preset uses the learned check and its weights file is
                missing or corrupt (the message names the path).
            clock: Current Unix time in ms (tests pass a controllable one).
            rng: Randomness for quality sampling.
        """
        self.store = store
        self.namespaces = namespaces
        self.sync = sync
        self.settings = settings or CacheSettings()
        self._verifier = verifier
        self._verifiers: dict[str, Verifier] = {}
        # Namespaces that declare max_false_hit_rate: one controller each (per replica, in memory), and the
        # score each recently sampled hit had, so its quality sample can be placed on the ladder.
        self._guards: dict[tuple[str, float, str, float], false_hits.FalseHitController] = {}
        self._sampled_scores: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        if verifier is None:
            # Build every configured namespace's second check now: a missing or corrupt learned-check
            # weights file must stop the service at start (naming the path), not fail the first lookup.
            for name in namespaces.names:
                self._check(namespaces.get(name))
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats_buffer = StatsBuffer()
        # Held while a flush is on its way to Redis, so a stats read never sees its
        # counters neither pending nor written (or both).
        self._stats_flushing = asyncio.Lock()
        self._background = Background(log)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Waits for Redis, builds the index, and starts the background loops."""
        await self.store.ping()
        await self.sync.start()
        background = self._background = Background(log)
        background.run(self.sync.follow, name="index follower")
        background.every(self.settings.sweep_interval_s, self.sweep, name="sweep")
        background.every(self.settings.stats_flush_interval_s, self.flush_stats, name="stats flush")
        background.every(self.settings.namespaces_poll_s, self.namespaces.reload_if_modified, name="namespaces reload")
        background.every(self.settings.snapshot_interval_s, self.sync.snapshot_if_changed, name="index snapshot")
        background.start()

    async def stop(self) -> None:
        """Stops the loops, flushes counters and writes a snapshot.

        Safe to call before :meth:`start` and more than once. The loops are asked to stop
        and given time to finish what they are doing (a blocked stream read returns within
        ``follow_block_ms``); only a loop that does not finish by then is cancelled.
        """
        started = self._background.running
        await self._background.stop(timeout_s=self.sync.follow_block_ms / 1000 + 5.0)
        with contextlib.suppress(Exception):
            await self.flush_stats()
        if started:
            with contextlib.suppress(OSError):
                await self.sync.snapshot()

    # --- validation ----------------------------------------------------------------

    def _resolve(
        self,
        requester: Requester,
        fingerprint: Fingerprint,
        embedding: np.ndarray | None,
        embedding_model: str,
        extra: Sequence[tuple[str, str]] = (),
    ) -> tuple[Namespace, Scope, CacheKeyInput, np.ndarray | None]:
        namespace = self.namespaces.get(requester.namespace)
        scope = strictest(namespace.scope, requester.scope)
        violations = list(extra)
        if not fingerprint.messages:
            violations.append(("fingerprint.messages", "at least one message is required"))
        if not fingerprint.model:
            violations.append(("fingerprint.model", "required: the model or tier as requested"))
        for name in ("temperature", "top_p"):
            value = getattr(fingerprint, name)
            if value is not None and not math.isfinite(value):
                violations.append((f"fingerprint.{name}", f"{value!r} is not a finite number"))
        if scope >= Scope.TENANT and not requester.tenant_id:
            violations.append(("tenant_id", f"required: namespace {namespace.name!r} is {scope.name.lower()}-scoped"))
        if scope == Scope.USER and not requester.user_id:
            violations.append(("user_id", f"required: namespace {namespace.name!r} is user-scoped"))
        for name in ("tenant_id", "user_id"):
            if len(getattr(requester, name)) > MAX_ID_CHARS:
                violations.append((name, f"at most {MAX_ID_CHARS} characters"))
        vector = None
        if embedding is not None and len(embedding):
            v = np.asarray(embedding, dtype=np.float32).reshape(-1)
            if v.shape[0] != self.settings.dim:
                violations.append(("embedding", f"has {v.shape[0]} values; this cache expects {self.settings.dim}"))
            elif not np.all(np.isfinite(v)) or not np.any(v):
                violations.append(("embedding", "must be finite and not all zeros"))
            else:
                vector = normalise(v)
            if not embedding_model:
                violations.append(
                    ("embedding_model", "required with embedding: vectors of different models never match")
                )
        if violations:
            raise InvalidArgument(
                "the cache request is invalid: " + "; ".join(f"{f}: {d}" for f, d in violations),
                violations,
                reason="INVALID_CACHE_REQUEST",
            )
        key_input = CacheKeyInput.build(
            namespace=namespace.name,
            scope=scope,
            tenant_id=requester.tenant_id,
            user_id=requester.user_id,
            fingerprint=fingerprint,
        )
        return namespace, scope, key_input, vector

    # --- lookup --------------------------------------------------------------------

    def _count(self, namespace: str, stat: Stat, *, lookup: bool = False) -> None:
        """Counts ``stat``; ``lookup`` also counts a lookup outcome of the same name in Prometheus."""
        self.stats_buffer.add(namespace, stat)
        if lookup:
            metrics.LOOKUPS.labels(namespace, stat).inc()  # a StrEnum's str() is its value

    async def lookup(self, query: LookupQuery) -> LookupOutcome:
        """Finds a cached answer for ``query``.

        Raises:
            InvalidArgument: The request is malformed (violations name the fields).
            NotFound: The namespace is not configured.
        """
        ns, scope, key_input, vector = self._resolve(
            query.requester, query.fingerprint, query.embedding, query.embedding_model
        )
        key = exact_key(key_input)
        skip = {
            CacheMode.BYPASS: MissReason.BYPASS,
            CacheMode.REFRESH: MissReason.REFRESH,
        }.get(query.mode)
        if skip is None and query.fingerprint.nondeterministic and not ns.allow_nondeterministic:
            skip = MissReason.NONDETERMINISTIC
        if skip is not None:
            self._count(ns.name, Stat.SKIP, lookup=True)
            return LookupOutcome(CacheTier.NOT_CONSULTED, key, miss_reason=skip)

        now = self.clock()
        requester = query.requester
        stale: tuple[Entry, float] | None = None
        reason = MissReason.NOT_FOUND
        if not (query.semantic_only and vector is not None):
            entry = await self.store.get_by_key(key)
            if entry is not None and entry.namespace == ns.name and self._visible(entry, scope, requester):
                if entry.fresh_at(now):
                    self._count(ns.name, Stat.EXACT_HIT, lookup=True)
                    self.stats_buffer.touch(ns.name, entry.entry_id, now)
                    return LookupOutcome(CacheTier.EXACT, key, entry, similarity=1.0)
                if query.allow_stale and entry.servable_stale_at(now):
                    stale = (entry, 1.0)
                reason = MissReason.EXPIRED
            self._count(ns.name, Stat.EXACT_MISS)

        check_reason = ""
        if ns.semantic and vector is not None:
            context = context_key(key_input, query.embedding_model)
            outcome = await self._semantic(ns, scope, requester, query, vector, context, key, now)
            if outcome.tier == CacheTier.SEMANTIC:
                return outcome
            self._count(ns.name, Stat.SEMANTIC_MISS)
            check_reason = outcome.check_reason
            if outcome.entry is not None and stale is None:
                stale = (outcome.entry, outcome.similarity)
            if reason != MissReason.EXPIRED or outcome.miss_reason == MissReason.REJECTED_BY_CHECK:
                reason = outcome.miss_reason

        if stale is not None:
            entry, similarity = stale
            self._count(ns.name, Stat.STALE_HIT, lookup=True)
            return LookupOutcome(CacheTier.STALE, key, entry, similarity=similarity, check_reason=check_reason)
        metrics.LOOKUPS.labels(ns.name, "miss").inc()
        return LookupOutcome(CacheTier.MISS, key, miss_reason=reason, check_reason=check_reason)

    @staticmethod
    def _visible(entry: Entry, scope: Scope, requester: Requester) -> bool:
        return visible(
            entry_scope=entry.scope,
            entry_tenant=entry.tenant_id,
            entry_user=entry.user_id,
            lookup_scope=scope,
            tenant_id=requester.tenant_id,
            user_id=requester.user_id,
        )

    async def _semantic(
        self,
        ns: Namespace,
        scope: Scope,
        requester: Requester,
        query: LookupQuery,
        vector: np.ndarray,
        context: str,
        key: str,
        now: int,
    ) -> LookupOutcome:
        """Tier 2. A SEMANTIC outcome is a hit; otherwise ``entry`` may hold a stale candidate."""
        index = self.sync.indexes.get(ns.name)
        if index is None or len(index) == 0:
            return LookupOutcome(CacheTier.MISS, key, miss_reason=MissReason.NOT_FOUND)
        found = index.search(
            vector,
            context=context_tag(context),
            lookup_scope=scope,
            tenant_id=requester.tenant_id,
            user_id=requester.user_id,
            now_ms=now,
            allow_stale=query.allow_stale,
            threshold=ns.threshold,
        )
        if not found.candidates:
            # Neighbours above the threshold that were filtered out (other scopes, other
            # contexts) are reported as "not found": a miss must not reveal foreign entries.
            below = 0 <= found.best_similarity < ns.threshold
            reason = MissReason.BELOW_THRESHOLD if below else MissReason.NOT_FOUND
            return LookupOutcome(CacheTier.MISS, key, miss_reason=reason)
        best = found.candidates[: self.settings.max_verified]
        entries = await self.store.get_entries([c.entry_id for c in best])
        gone = [(c.entry_id, ns.name) for c in best if c.entry_id not in entries]
        if gone:
            self.sync.remove_local(gone)
        stale: Entry | None = None
        stale_similarity = 0.0
        check_reason = ""
        rejected = False
        rejections: list[Rejection] = []
        for candidate in best:
            entry = entries.get(candidate.entry_id)
            if (
                entry is None
                or entry.namespace != ns.name
                or entry.context != context
                or entry.embedding_model != query.embedding_model
                or not self._visible(entry, scope, requester)
            ):
                continue
            fresh = entry.fresh_at(now)
            if not fresh and not (query.allow_stale and entry.servable_stale_at(now)):
                continue
            if fresh or stale is None:
                score: float | None = None
                if ns.second_check or ns.max_false_hit_rate:
                    verdict = self._decide(ns, query.fingerprint.query, entry.query, candidate.similarity)
                    detail = getattr(verdict, "detail", "")
                    score = getattr(verdict, "score", None)
                    check_reason = f"{verdict.reason}: {detail}" if detail else verdict.reason
                    if not verdict.accept:
                        rejected = True
                        rejections.append(
                            Rejection(entry.entry_id, candidate.similarity, verdict.reason, detail, score)
                        )
                        self._count(ns.name, Stat.CHECK_REJECTION)
                        self._count(ns.name, rejection_stat(verdict.reason))
                        metrics.CHECK_REJECTIONS.labels(ns.name).inc()
                        continue
                if fresh:
                    sample = self.rng.random() < ns.quality_sample_rate
                    if sample and ns.max_false_hit_rate:
                        self._remember_score(ns.name, entry.entry_id, score, candidate.similarity)
                    self._count(ns.name, Stat.SEMANTIC_HIT, lookup=True)
                    self.stats_buffer.touch(ns.name, entry.entry_id, now)
                    return LookupOutcome(
                        CacheTier.SEMANTIC,
                        key,
                        entry,
                        similarity=candidate.similarity,
                        sample_for_quality=sample,
                        check_reason=check_reason,
                        rejections=tuple(rejections),
                    )
                stale, stale_similarity = entry, candidate.similarity
        reason = MissReason.REJECTED_BY_CHECK if rejected else MissReason.NOT_FOUND
        return LookupOutcome(
            CacheTier.MISS,
            key,
            stale,
            similarity=stale_similarity,
            miss_reason=reason,
            check_reason=check_reason,
            rejections=tuple(rejections),
        )

    def _decide(self, ns: Namespace, query: str, cached: str, similarity: float) -> Verdict:
        """The second check for one candidate, under the namespace's false-hit guard when it declares one."""
        if not ns.max_false_hit_rate or self._verifier is not None:
            return self._check(ns)(query, cached, similarity, ns.threshold)
        guard = self.false_hit_guard(ns)
        checker = presets.verifier_for(ns.preset or "default")
        if checker.learned is not None:
            # The guard moves the learned check's probability threshold; the rules still run first.
            verdict = checker.check(query, cached, similarity, threshold=guard.threshold)
            if verdict.reason == verifier.LEARNED_REASON and (verdict.score or 0.0) >= guard.floor:
                return verifier.Verdict(False, "false_hit_guard", verdict.detail, verdict.score)
            return verdict
        if similarity < guard.threshold:
            return verifier.Verdict(False, "false_hit_guard", f"{similarity:.4f} < {guard.threshold:.4f}")
        return checker.check(query, cached, similarity)

    def false_hit_guard(self, ns: Namespace) -> false_hits.FalseHitController:
        """The controller holding a namespace to its declared ``max_false_hit_rate`` (created on first use).

        Its ladder runs over the learned check's probability (from the preset's operating point) when the
        preset has the learned check, else over the cosine (from the namespace's threshold). A changed rate
        or threshold starts a new controller: evidence gathered under other settings does not carry over.
        """
        checker = presets.verifier_for(ns.preset or "default")
        floor = checker.learned_threshold if checker.learned is not None else ns.threshold
        key = (ns.name, ns.max_false_hit_rate, ns.preset, floor)
        guard = self._guards.get(key)
        if guard is None:
            ladder = [round(float(t), 3) for t in np.arange(floor, 0.9951, 0.005)] or [floor]
            guard = self._guards[key] = false_hits.FalseHitController(ns.max_false_hit_rate, ladder)
        return guard

    def _guard_threshold(self, name: str) -> float:
        for (ns_name, *_), guard in self._guards.items():
            if ns_name == name:
                return guard.threshold
        return 0.0

    def _remember_score(self, namespace: str, entry_id: int, score: float | None, similarity: float) -> None:
        self._sampled_scores[(namespace, str(entry_id))] = similarity if score is None else score
        while len(self._sampled_scores) > _SAMPLED_SCORES_KEPT:
            self._sampled_scores.popitem(last=False)

    def _check(self, ns: Namespace) -> Verifier:
        if self._verifier is not None:
            return self._verifier
        found = self._verifiers.get(ns.preset)
        if found is None:
            found = self._verifiers[ns.preset] = verifier_for(ns)
        return found

    # --- store ---------------------------------------------------------------------

    async def put(self, command: StoreCommand) -> StoreOutcome:
        """Stores a complete answer (or declines, saying why).

        Raises:
            InvalidArgument: The request is malformed (violations name the fields).
            NotFound: The namespace is not configured.
        """
        extra: list[tuple[str, str]] = []
        if not command.answer.text:
            extra.append(("text", "required: store only complete, non-empty answers"))
        if len(command.document_ids) > MAX_DOCUMENT_IDS:
            extra.append(("document_ids", f"at most {MAX_DOCUMENT_IDS} ids"))
        if any(not d or len(d) > MAX_ID_CHARS for d in command.document_ids):
            extra.append(("document_ids", f"each id must be 1 to {MAX_ID_CHARS} characters"))
        ns, scope, key_input, vector = self._resolve(
            command.requester, command.fingerprint, command.embedding, command.embedding_model, extra
        )
        key = exact_key(key_input)
        if command.mode == CacheMode.BYPASS:
            self._count(ns.name, Stat.SKIP)
            return StoreOutcome(False, key, skip_reason=SkipReason.BYPASS)
        if command.fingerprint.nondeterministic and not ns.allow_nondeterministic:
            self._count(ns.name, Stat.SKIP)
            return StoreOutcome(False, key, skip_reason=SkipReason.NONDETERMINISTIC)
        now = self.clock()
        expires = now + ns.ttl_ms
        entry = Entry(
            entry_id=0,
            namespace=ns.name,
            key=key,
            context=context_key(key_input, command.embedding_model),
            scope=scope,
            tenant_id=command.requester.tenant_id,
            user_id=command.requester.user_id,
            prompt_template=command.fingerprint.prompt_template,
            prompt_version=command.fingerprint.prompt_version,
            query=command.fingerprint.query,
            embedding_model=command.embedding_model if vector is not None else "",
            created_ms=now,
            expires_ms=expires,
            stale_until_ms=expires + ns.stale_grace_ms,
            document_ids=tuple(dict.fromkeys(command.document_ids)),
            answer=command.answer,
            vector=vector,
        )
        result = await self.store.put(entry, max_entries=ns.max_entries, eviction=ns.eviction.value)
        removed = result.replaced + result.evicted
        if removed:
            self.sync.remove_local(removed)
        if vector is not None:
            self.sync.add_local(ns.name, dataclasses.replace(entry, entry_id=result.entry_id).index_record())
        self._count(ns.name, Stat.STORE)
        metrics.STORES.labels(ns.name).inc()
        for _, evicted_ns in result.evicted:
            self.stats_buffer.add(evicted_ns, Stat.EVICTION)
            metrics.REMOVALS.labels(evicted_ns, "eviction").inc()
        for _, replaced_ns in result.replaced:
            metrics.REMOVALS.labels(replaced_ns, "replaced").inc()
        return StoreOutcome(True, key, result.entry_id, expires, evicted_count=len(result.evicted))

    # --- invalidate ----------------------------------------------------------------

    async def invalidate(self, target: InvalidateTarget) -> int:
        """Removes the entries ``target`` names. Returns how many were removed.

        Raises:
            InvalidArgument: Not exactly one target, or a version without a template.
        """
        given = [
            name
            for name, present in (
                ("document_ids", bool(target.document_ids)),
                ("prompt_template", bool(target.prompt_template)),
                ("namespace", bool(target.namespace)),
                ("all", target.everything),
            )
            if present
        ]
        if len(given) != 1:
            which = ", ".join(given) if given else "none"
            raise InvalidArgument(
                f"set exactly one of document_ids, prompt_template, namespace or all (got {which})",
                [(name, "exactly one target may be set") for name in given or ("all",)],
                reason="INVALID_INVALIDATION_TARGET",
            )
        if target.prompt_version and not target.prompt_template:
            raise InvalidArgument(
                "prompt_version needs prompt_template",
                [("prompt_version", "only meaningful with prompt_template")],
                reason="INVALID_INVALIDATION_TARGET",
            )
        if target.document_ids:
            ids = await self.store.ids_for_documents(list(target.document_ids))
        elif target.prompt_template:
            ids = await self.store.ids_for_template(target.prompt_template, target.prompt_version)
        elif target.namespace:
            ids = await self.store.ids_for_namespace(target.namespace)
        else:
            ids = []
            for ns in await self.store.namespaces():
                ids += await self.store.ids_for_namespace(ns)
        removed = await self.store.delete(ids)
        self.sync.remove_local(removed)
        for _, ns in removed:
            self.stats_buffer.add(ns, Stat.INVALIDATION)
            metrics.REMOVALS.labels(ns, "invalidation").inc()
        log.info("cache invalidated", extra={"target": given[0], "removed": len(removed)})
        return len(removed)

    # --- background ----------------------------------------------------------------

    async def sweep(self) -> int:
        """Deletes entries whose stale grace period ended. Returns how many."""
        total = 0
        while True:
            ids = await self.store.expired_ids(self.clock())
            if not ids:
                return total
            removed = await self.store.delete(ids)
            self.sync.remove_local(removed)
            for _, ns in removed:
                self.stats_buffer.add(ns, Stat.EXPIRY)
                metrics.REMOVALS.labels(ns, "expiry").inc()
            total += len(removed)

    async def flush_stats(self) -> None:
        """Writes pending counters to Redis (kept for the next flush when Redis fails)."""
        async with self._stats_flushing:
            counters, touches = self.stats_buffer.take()
            try:
                await self.store.flush_stats(counters, touches)
            except BaseException:
                self.stats_buffer.give_back(counters, touches)
                raise

    # --- stats and quality -----------------------------------------------------------

    async def stats(self, namespace: str = "") -> list[NamespaceStats]:
        """Figures per namespace: configured ones plus any that still hold entries.

        Raises:
            NotFound: ``namespace`` is neither configured nor holds entries or counters.
        """
        stored = await self.store.namespaces()
        if namespace:
            known = set(self.namespaces.names) | set(stored) | set(await self.store.stats_namespaces())
            if namespace not in known:
                self.namespaces.get(namespace)  # raises NotFound listing the configured ones
            names = [namespace]
        else:
            names = sorted(set(self.namespaces.names) | set(stored))
        counts = await self.store.counts(names)
        async with self._stats_flushing:
            summed = await self.store.read_stats(names)
            pending = {ns: self.stats_buffer.pending(ns) for ns in names}
        out = []
        for ns in names:
            c = dict(summed.get(ns, {}))
            for name, delta in pending[ns].items():
                c[name] = c.get(name, 0) + delta
            samples = int(c.get(Stat.QUALITY_SAMPLES, 0))
            cos_samples = int(c.get(Stat.QUALITY_COS_SAMPLES, 0))
            out.append(
                NamespaceStats(
                    namespace=ns,
                    entry_count=counts.get(ns, 0),
                    indexed_count=self.sync.indexes.count(ns),
                    exact_hit_count=int(c.get(Stat.EXACT_HIT, 0)),
                    exact_miss_count=int(c.get(Stat.EXACT_MISS, 0)),
                    semantic_hit_count=int(c.get(Stat.SEMANTIC_HIT, 0)),
                    semantic_miss_count=int(c.get(Stat.SEMANTIC_MISS, 0)),
                    stale_hit_count=int(c.get(Stat.STALE_HIT, 0)),
                    check_rejection_count=int(c.get(Stat.CHECK_REJECTION, 0)),
                    skip_count=int(c.get(Stat.SKIP, 0)),
                    store_count=int(c.get(Stat.STORE, 0)),
                    eviction_count=int(c.get(Stat.EVICTION, 0)),
                    invalidation_count=int(c.get(Stat.INVALIDATION, 0)),
                    expiry_count=int(c.get(Stat.EXPIRY, 0)),
                    quality_sample_count=samples,
                    quality_token_f1_mean=c.get(Stat.QUALITY_F1_SUM, 0.0) / samples if samples else 0.0,
                    check_rejection_counts={
                        stat.value.removeprefix(REJECTION_PREFIX): int(count)
                        for stat, count in c.items()
                        if stat.value.startswith(REJECTION_PREFIX) and count
                    },
                    false_hit_threshold=self._guard_threshold(ns),
                    quality_embedding_cosine_mean=(
                        c.get(Stat.QUALITY_COS_SUM, 0.0) / cos_samples if cos_samples else 0.0
                    ),
                )
            )
        return out

    def record_quality(self, sample: QualitySample) -> QualityResult:
        """Scores a sampled hit against a fresh answer and exports the agreement.

        Raises:
            InvalidArgument: A text is empty, or the embeddings' dimensions differ.
            NotFound: The namespace is not configured.
        """
        ns = self.namespaces.get(sample.namespace)
        violations = []
        if not sample.cached_text:
            violations.append(("cached_text", "required"))
        if not sample.fresh_text:
            violations.append(("fresh_text", "required"))
        a, b = sample.cached_embedding, sample.fresh_embedding
        has_a, has_b = a is not None and len(a) > 0, b is not None and len(b) > 0
        if has_a != has_b:
            missing = "fresh_embedding" if has_a else "cached_embedding"
            violations.append((missing, "give both embeddings or neither"))
        elif has_a and len(a) != len(b):  # type: ignore[arg-type]
            violations.append(("fresh_embedding", f"has {len(b)} values; cached_embedding has {len(a)}"))  # type: ignore[arg-type]
        if violations:
            raise InvalidArgument(
                "the quality sample is invalid: " + "; ".join(f"{f}: {d}" for f, d in violations),
                violations,
                reason="INVALID_QUALITY_SAMPLE",
            )
        f1 = quality.token_f1(sample.cached_text, sample.fresh_text)
        cos = quality.cosine(a, b) if has_a else None  # type: ignore[arg-type]
        self.stats_buffer.add(ns.name, Stat.QUALITY_SAMPLES)
        self.stats_buffer.add(ns.name, Stat.QUALITY_F1_SUM, f1)
        metrics.QUALITY_AGREEMENT.labels(ns.name, "token_f1").observe(f1)
        if cos is not None:
            self.stats_buffer.add(ns.name, Stat.QUALITY_COS_SAMPLES)
            self.stats_buffer.add(ns.name, Stat.QUALITY_COS_SUM, cos)
            metrics.QUALITY_AGREEMENT.labels(ns.name, "embedding_cosine").observe(cos)
        if ns.max_false_hit_rate:
            # Only samples whose hit this replica served can be placed on the ladder (their score is here).
            score = self._sampled_scores.pop((ns.name, sample.entry_id), None)
            if score is not None:
                agreed = false_hits.answers_agree(sample.cached_text, sample.fresh_text, cos)
                self.false_hit_guard(ns).observe(score, agreed)
        log.info(
            "quality sample",
            extra={"namespace": ns.name, "entry_id": sample.entry_id, "token_f1": f1, "embedding_cosine": cos},
        )
        return QualityResult(token_f1=f1, embedding_cosine=cos)


_SAMPLED_SCORES_KEPT = 10_000


__all__ = ["Cache", "CacheSettings", "Verdict", "Verifier", "accept_all", "verifier_for"]
