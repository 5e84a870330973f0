"""The model catalog (``deploy/models.yaml``): which models exist and how to reach them.

The file is the one source of models, their deployments and keys, tiers, capabilities,
prices, provider limits, fallback chains and the ``auto`` routing tiers. It is parsed
strictly (an unknown key or a dangling model name fails, naming the key and value) and
reloaded while the router runs: :class:`CatalogSource` swaps in a new version only when
it parses, so a bad edit never takes the router down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.mesh import schema
from tollway.mesh.frozen import frozen
from tollway.mesh.schema import SchemaError

log = logging.getLogger("tollway.common.catalog")

_ENV = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
TIERS = ("small", "medium", "large")
WIRES = ("openai_compat", "anthropic", "gemini")
# What a request may need beyond plain text. Sampling several choices (n > 1) and token
# log-probabilities are not listed: no Tollway API carries them, so the public surfaces
# refuse them with a 400 instead of pretending (see tollway.common.capabilities).
CAPABILITIES = ("tools", "json")
# Defaults for the timeouts a provider entry may leave out (seconds).
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_STALL_TIMEOUT_S = 30.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


class CatalogError(SchemaError):
    """The catalog file is malformed; the message names the key and the value."""


@frozen
class Deployment:
    """One place a model can be called: a base URL and key serving one upstream model.

    Attributes:
        provider: The provider's name, as the catalog and call records say it.
        base_url: The API root, e.g. ``https://api.openai.com/v1``.
        upstream_model: The model name the provider expects.
        api_key: The secret, read from the environment variable the catalog names.
        timeout_s: Longest wait for one read of a whole-answer (non-streamed) call: its
            response head or the next piece of its body.
        name: The deployment's name within its model ("default", "eu", "key2").
        model: The catalog model it serves.
        weight: Its share of the model's traffic among healthy deployments (relative).
        first_token_timeout_s: Longest wait from sending the request to the first output of a
            stream (connecting included); past it the router falls through to the next
            deployment or model. 0 means ``timeout_s``.
        default_max_tokens: Sent when the request sets none and the wire requires a value
            (Anthropic).
        wire: The adapter that speaks to it ("openai_compat", "anthropic", "gemini").
        api_key_env: The environment variable the key comes from; "" when none is needed.
        connect_timeout_s: Longest wait for the TCP (and TLS) connection.
        stall_timeout_s: Longest silence between two reads of a stream once it has begun
            (between tokens). A provider that stops sending (a stopped process keeps its
            connection open) ends the stream with an in-band error after this long.
        capabilities: What this deployment can do beyond text ("tools", "json"); None means
            the model's. A deployment may state its own (a self-hosted replica may lack the
            tool calling that the hosted one has).
        rpm: The provider's requests-per-minute limit for this deployment (its key or
            region); 0 means none. The router keeps every replica's calls under it.
        tpm: The provider's tokens-per-minute limit (prompt + max output tokens, as
            providers count it when a request arrives); 0 means none.
        stream_whole_answers: Ask for a stream even when the caller wants the answer only once
            it is whole (``Complete``). False (the default) asks for a whole answer, one body to
            read instead of an event per token, as a direct call would; its wait is then
            ``timeout_s``, since a whole answer has no first token to time. True keeps
            ``first_token_timeout_s`` in force for such calls too, at the cost of reading the
            stream.
    """

    provider: str
    base_url: str
    upstream_model: str
    api_key: str = ""
    timeout_s: float = 60.0
    name: str = "default"
    model: str = ""
    weight: float = 1.0
    first_token_timeout_s: float = 0.0
    default_max_tokens: int = 1024
    wire: str = "openai_compat"
    api_key_env: str = ""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    capabilities: frozenset[str] | None = None
    rpm: int = 0
    tpm: int = 0
    stream_whole_answers: bool = False

    @property
    def key(self) -> str:
        """The breaker and balancer identity: ``provider/model/name``."""
        return f"{self.provider}/{self.model or self.upstream_model}/{self.name}"

    @property
    def missing_key(self) -> bool:
        """A key is required (``api_key_env`` is set) but the variable is empty: never call it."""
        return bool(self.api_key_env) and not self.api_key

    @property
    def ttft_timeout_s(self) -> float:
        """The first-token timeout in force (``first_token_timeout_s``, else ``timeout_s``)."""
        return self.first_token_timeout_s or self.timeout_s


@frozen
class Price:
    """US dollars per million tokens.

    ``cache_write_input_usd`` is what a prompt token written to the provider's cache costs
    (Anthropic bills 1.25x input); it defaults to the input price.
    """

    input_usd: float = 0.0
    output_usd: float = 0.0
    cached_input_usd: float = 0.0
    cache_write_input_usd: float | None = None

    def cost_usd_micros(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_input_tokens: int = 0
    ) -> int:
        """The cost in millionths of a dollar (tokens x dollars per million is exactly that)."""
        write_price = self.input_usd if self.cache_write_input_usd is None else self.cache_write_input_usd
        plain = max(0, input_tokens - cached_input_tokens - cache_write_input_tokens)
        return round(
            plain * self.input_usd
            + cached_input_tokens * self.cached_input_usd
            + cache_write_input_tokens * write_price
            + output_tokens * self.output_usd
        )


@frozen
class Limits:
    """The provider's limits for this model: requests and tokens per minute (0 = not stated)."""

    rpm: int = 0
    tpm: int = 0


@frozen
class Model:
    """A model requests may name.

    Attributes:
        deployments: Where it can be called; load-balanced by weight and health.
        tier: "small", "medium" or "large", for ``auto`` routing.
        capabilities: What at least one of its deployments supports beyond text ("tools",
            "json"): the union of the deployments' capabilities.
        fallbacks: Models to fall through to, in order, when every deployment fails and
            the request's policy allows another model (see ``Routing.model_fallback``).
    """

    name: str
    deployments: tuple[Deployment, ...]
    tier: str = "small"
    context_window: int = 4096
    max_output_tokens: int = 4096
    price: Price = Price()
    capabilities: frozenset[str] = frozenset()
    limits: Limits = Limits()
    fallbacks: tuple[str, ...] = ()

    @property
    def wire(self) -> str:
        return self.deployments[0].wire

    def deployment_capabilities(self, deployment: Deployment) -> frozenset[str]:
        """What ``deployment`` (one of this model's) can do: its own list, else the model's."""
        return self.capabilities if deployment.capabilities is None else deployment.capabilities

    def missing_key_envs(self) -> list[str]:
        """The environment variables whose absence leaves deployments without a key, in order."""
        return list(dict.fromkeys(d.api_key_env for d in self.deployments if d.missing_key))

    @property
    def provider(self) -> str:
        return self.deployments[0].provider


@frozen
class Routing:
    """How ``auto`` is routed.

    Attributes:
        tiers: The model serving each tier; empty means ``auto`` is a plain alias.
        classifier: "heuristic", or "package.module:factory" returning a ComplexityClassifier.
        cascade: Whether ``auto`` requests try the small tier first by default.
        last_resort: A model appended to every fallback chain (the self-hosted one).
        model_fallback: Whether a request that names a model may be answered by another
            model (its ``fallbacks``, then ``last_resort``) when none of its deployments
            can answer. False (the default) keeps a named request on its model's own
            deployments; a request may still opt in (``allow_model_fallback``). ``auto``
            requests name no model, so their chain is always followed.
    """

    tiers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    classifier: str = "heuristic"
    cascade: bool = False
    last_resort: str = ""
    model_fallback: bool = False


@frozen
class Catalog:
    """Every model, the aliases pointing at them, and the routing of ``auto``."""

    models: Mapping[str, Model]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    routing: Routing = Routing()
    version: str = ""

    def resolve(self, name: str) -> Model | None:
        """The model ``name`` names, following an alias; None when unknown."""
        return self.models.get(self.aliases.get(name, name))

    def names(self) -> list[str]:
        """Every name :meth:`resolve` resolves: models and aliases (not tiered ``auto``)."""
        return sorted({*self.models, *self.aliases})

    def chain(self, first: Model) -> list[Model]:
        """``first``, its fallbacks in order, then the last resort; each model once."""
        out: list[Model] = []
        for name in (first.name, *first.fallbacks, self.routing.last_resort):
            model = self.models.get(name) if name else None
            if model is not None and model not in out:
                out.append(model)
        return out

    def deployments(self) -> list[Deployment]:
        """Every deployment of every model (for breaker listings)."""
        return [d for m in self.models.values() for d in m.deployments]


def _expand(value: str, env: Mapping[str, str]) -> str:
    return _ENV.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


# --- the file's shape (read by tollway.mesh.schema; the domain values above are built from it)


@frozen
class _ProviderSpec:
    wire: str = dataclasses.field(default="openai_compat", metadata=schema.rule(choices=WIRES, noun="a wire format"))
    base_url: str = ""
    api_key_env: str = ""
    timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    first_token_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.0))
    connect_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    stall_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    stream_whole_answers: bool | None = None


@frozen
class _LimitsSpec:
    rpm: int = dataclasses.field(default=0, metadata=schema.rule(low=0))
    tpm: int = dataclasses.field(default=0, metadata=schema.rule(low=0))


@frozen
class _DeploymentSpec:
    # None: inherited from the model or its provider.
    name: str | None = None
    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    weight: float = dataclasses.field(default=1.0, metadata=schema.rule(low=0.0))
    timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    first_token_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.0))
    connect_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    stall_timeout_s: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.001))
    stream_whole_answers: bool | None = None
    # None: the model's capabilities.
    capabilities: tuple[str, ...] | None = dataclasses.field(
        default=None, metadata=schema.rule(choices=CAPABILITIES, noun="a capability")
    )
    # None: the model's limits (each deployment is its own key or region, limited on its own).
    limits: _LimitsSpec | None = None


@frozen
class _PriceSpec:
    input: float = dataclasses.field(default=0.0, metadata=schema.rule(low=0.0))
    output: float = dataclasses.field(default=0.0, metadata=schema.rule(low=0.0))
    cached_input: float = dataclasses.field(default=0.0, metadata=schema.rule(low=0.0))
    cache_write_input: float | None = dataclasses.field(default=None, metadata=schema.rule(low=0.0))


@frozen
class _ModelSpec:
    provider: str | None = None
    upstream_model: str | None = None
    tier: str = dataclasses.field(default="small", metadata=schema.rule(choices=TIERS, noun="a tier"))
    context_window: int = dataclasses.field(default=4096, metadata=schema.rule(low=1))
    max_output_tokens: int = dataclasses.field(default=4096, metadata=schema.rule(low=1))
    capabilities: tuple[str, ...] = dataclasses.field(
        default=(), metadata=schema.rule(choices=CAPABILITIES, noun="a capability")
    )
    price_per_1m_tokens: _PriceSpec = _PriceSpec()
    limits: _LimitsSpec = _LimitsSpec()
    fallbacks: tuple[str, ...] = ()
    deployments: tuple[_DeploymentSpec, ...] = ()


@frozen
class _RoutingSpec:
    tiers: dict[str, str] = dataclasses.field(default_factory=dict)
    classifier: str = ""
    cascade: bool = False
    last_resort: str = ""
    model_fallback: bool = False


@frozen
class _CatalogSpec:
    providers: dict[str, _ProviderSpec] = dataclasses.field(default_factory=dict)
    models: dict[str, _ModelSpec] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    routing: _RoutingSpec = _RoutingSpec()
    # Per deployment key ("provider/model/name"): the limits of one key or region, set
    # apart from the model entry (an operator's override); wins over the entry's own.
    deployment_limits: dict[str, _LimitsSpec] = dataclasses.field(default_factory=dict)


def _first(*values: Any) -> Any:
    """The first value that is set (not None): the deployment's, else the model's or provider's."""
    return next((v for v in values if v is not None), None)


def _deployments(
    r: schema.Reader, name: str, spec: _ModelSpec, providers: Mapping[str, _ProviderSpec], env: Mapping[str, str]
) -> tuple[Deployment, ...]:
    where = f"models.{name}"
    raw_deps = spec.deployments or (_DeploymentSpec(),)
    out: list[Deployment] = []
    for i, dep in enumerate(raw_deps):
        dw = f"{where}.deployments[{i}]"
        pname = _first(dep.provider, spec.provider)
        if pname not in providers:
            raise r.fail(
                f"{dw}.provider" if dep.provider is not None else f"{where}.provider",
                pname,
                f"is not a provider; known: {', '.join(providers) or '(none)'}",
            )
        prov = providers[pname]
        key_env = _first(dep.api_key_env, prov.api_key_env)
        dep_name = _first(dep.name, "default" if len(raw_deps) == 1 else f"d{i}")
        if dep_name in {d.name for d in out}:
            raise r.fail(f"{dw}.name", dep_name, "is used twice in this model")
        out.append(
            Deployment(
                provider=pname,
                base_url=_expand(_first(dep.base_url, prov.base_url), env),
                upstream_model=_first(dep.upstream_model, spec.upstream_model, name),
                api_key=env.get(key_env, "") if key_env else "",
                api_key_env=key_env,
                timeout_s=_first(dep.timeout_s, prov.timeout_s, DEFAULT_TIMEOUT_S),
                name=dep_name,
                model=name,
                weight=dep.weight,
                first_token_timeout_s=_first(dep.first_token_timeout_s, prov.first_token_timeout_s, 0.0),
                default_max_tokens=spec.max_output_tokens,
                wire=prov.wire,
                connect_timeout_s=_first(dep.connect_timeout_s, prov.connect_timeout_s, DEFAULT_CONNECT_TIMEOUT_S),
                stall_timeout_s=_first(dep.stall_timeout_s, prov.stall_timeout_s, DEFAULT_STALL_TIMEOUT_S),
                stream_whole_answers=_first(dep.stream_whole_answers, prov.stream_whole_answers, False),
                capabilities=frozenset(spec.capabilities if dep.capabilities is None else dep.capabilities),
                rpm=(dep.limits or spec.limits).rpm,
                tpm=(dep.limits or spec.limits).tpm,
            )
        )
    return tuple(out)


def _with_deployment_limits(
    r: schema.Reader, models: dict[str, Model], limits: Mapping[str, _LimitsSpec]
) -> dict[str, Model]:
    """``models`` with the ``deployment_limits`` overrides applied; a key naming no deployment fails."""
    known = {d.key for m in models.values() for d in m.deployments}
    for key in limits:
        if key not in known:
            raise r.fail(
                "deployment_limits",
                key,
                f"is not a deployment (provider/model/name); known: {', '.join(sorted(known)) or '(none)'}",
            )
    if not limits:
        return models
    out: dict[str, Model] = {}
    for name, model in models.items():
        deps = tuple(
            dataclasses.replace(d, rpm=limits[d.key].rpm, tpm=limits[d.key].tpm) if d.key in limits else d
            for d in model.deployments
        )
        out[name] = dataclasses.replace(model, deployments=deps)
    return out


def parse_catalog(doc: Any, env: Mapping[str, str] | None = None, source: str = "models.yaml") -> Catalog:
    """Builds a catalog from the parsed YAML; ``${VAR:-default}`` is expanded from ``env``.

    Raises:
        CatalogError: A key is unknown, a value has the wrong type, or a name dangles.
    """
    env = os.environ if env is None else env
    r = schema.Reader(source, CatalogError)
    spec = r.read(_CatalogSpec, doc)

    models: dict[str, Model] = {}
    for name, m in spec.models.items():
        if not _NAME.match(name):
            raise r.fail(f"models.{name}", name, "is not a valid model name")
        p = m.price_per_1m_tokens
        deployments = _deployments(r, name, m, spec.providers, env)
        models[name] = Model(
            name=name,
            deployments=deployments,
            tier=m.tier,
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            price=Price(p.input, p.output, p.cached_input, p.cache_write_input),
            capabilities=frozenset().union(*(d.capabilities or () for d in deployments)),
            limits=Limits(rpm=m.limits.rpm, tpm=m.limits.tpm),
            fallbacks=m.fallbacks,
        )

    for name, model in models.items():
        for fb in model.fallbacks:
            if fb not in models:
                raise r.fail(f"models.{name}.fallbacks", fb, "is not a model in this catalog")
    models = _with_deployment_limits(r, models, spec.deployment_limits)
    for alias, target in spec.aliases.items():
        if target not in models:
            raise r.fail(f"aliases.{alias}", target, "is not a model in this catalog")
    routing = spec.routing
    for tier, target in routing.tiers.items():
        if tier not in TIERS:
            raise r.fail("routing.tiers", tier, f"is not a tier; use {', '.join(TIERS)}")
        if target not in models:
            raise r.fail(f"routing.tiers.{tier}", target, "is not a model in this catalog")
    if routing.last_resort and routing.last_resort not in models:
        raise r.fail("routing.last_resort", routing.last_resort, "is not a model in this catalog")
    return Catalog(
        models=models,
        aliases=dict(spec.aliases),
        routing=Routing(
            tiers=dict(routing.tiers),
            classifier=routing.classifier or "heuristic",
            cascade=routing.cascade,
            last_resort=routing.last_resort,
            model_fallback=routing.model_fallback,
        ),
    )


def load_catalog(path: str | Path, env: Mapping[str, str] | None = None) -> Catalog:
    """Reads and parses the catalog file.

    Raises:
        CatalogError: The file is missing or malformed; the message names it.
    """
    doc = schema.load_yaml(path, what="the model catalog", error=CatalogError)
    catalog = parse_catalog(doc.data, env, source=str(path))
    return dataclasses.replace(catalog, version=hashlib.sha256(doc.text.encode()).hexdigest()[:12])


class CatalogSource:
    """The current catalog, reloaded when its file changes.

    Readers take ``source.current`` once per request, so a request never sees two versions.
    """

    def __init__(self, path: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.path: Path | None = Path(path)
        self._env = env
        self._stamp = self._stat()
        self.current = load_catalog(path, env)
        self.last_error = ""

    @classmethod
    def fixed(cls, catalog: Catalog) -> CatalogSource:
        """A source that always returns ``catalog`` (no file, no reload)."""
        source = cls.__new__(cls)
        source.path, source._env, source._stamp = None, None, (0, 0)
        source.current, source.last_error = catalog, ""
        return source

    def _stat(self) -> tuple[int, int]:
        if self.path is None:
            return (0, 0)
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def reload_if_changed(self) -> bool:
        """Loads the file again if it changed; keeps the old catalog when the new one is bad.

        Returns:
            True when a new catalog was swapped in.
        """
        stamp = self._stat()
        if self.path is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            catalog = load_catalog(self.path, self._env)
        except CatalogError as exc:
            self.last_error = str(exc)
            log.error("catalog reload failed; keeping version %s: %s", self.current.version, exc)
            raise
        if catalog.version == self.current.version:
            return False
        log.info("catalog reloaded", extra={"version": catalog.version, "models": len(catalog.models)})
        self.current, self.last_error = catalog, ""
        return True
