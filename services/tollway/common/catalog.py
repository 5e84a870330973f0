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

import yaml

log = logging.getLogger("tollway.common.catalog")

_ENV = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
TIERS = ("small", "medium", "large")
WIRES = ("openai_compat", "anthropic", "gemini")
CAPABILITIES = ("tools", "json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")

_PROVIDER_KEYS = {"wire", "base_url", "api_key_env", "timeout_s", "first_token_timeout_s"}
_MODEL_KEYS = {
    "provider",
    "upstream_model",
    "tier",
    "context_window",
    "max_output_tokens",
    "capabilities",
    "price_per_1m_tokens",
    "limits",
    "fallbacks",
    "deployments",
}
_DEPLOYMENT_KEYS = {
    "name",
    "provider",
    "base_url",
    "api_key_env",
    "upstream_model",
    "weight",
    "timeout_s",
    "first_token_timeout_s",
}
_PRICE_KEYS = {"input", "output", "cached_input", "cache_write_input"}
_ROUTING_KEYS = {"tiers", "classifier", "cascade", "last_resort"}


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the key and the value."""


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One place a model can be called: a base URL and key serving one upstream model.

    Attributes:
        provider: The provider's name, as the catalog and call records say it.
        base_url: The API root, e.g. ``https://api.openai.com/v1``.
        upstream_model: The model name the provider expects.
        api_key: The secret, read from the environment variable the catalog names.
        timeout_s: Longest wait for any read: the response headers, the first chunk, or the
            next chunk of a stream. A stalled stream fails after this long.
        name: The deployment's name within its model ("default", "eu", "key2").
        model: The catalog model it serves.
        weight: Its share of the model's traffic among healthy deployments (relative).
        first_token_timeout_s: Longest wait from the request to the first output; past it the
            router gives up on this deployment and falls through. 0 means ``timeout_s``.
        default_max_tokens: Sent when the request sets none and the wire requires a value
            (Anthropic).
        wire: The adapter that speaks to it ("openai_compat", "anthropic", "gemini").
        api_key_env: The environment variable the key comes from; "" when none is needed.
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
        return self.first_token_timeout_s or self.timeout_s



@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class Limits:
    """The provider's limits for this model: requests and tokens per minute (0 = not stated)."""

    rpm: int = 0
    tpm: int = 0


@dataclasses.dataclass(frozen=True)
class Model:
    """A model requests may name.

    Attributes:
        deployments: Where it can be called; load-balanced by weight and health.
        tier: "small", "medium" or "large", for ``auto`` routing.
        capabilities: What it supports beyond text ("tools", "json").
        fallbacks: Models to fall through to, in order, when every deployment fails.
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

    @property
    def provider(self) -> str:
        return self.deployments[0].provider


@dataclasses.dataclass(frozen=True)
class Routing:
    """How ``auto`` is routed.

    Attributes:
        tiers: The model serving each tier; empty means ``auto`` is a plain alias.
        classifier: "heuristic", or "package.module:factory" returning a ComplexityClassifier.
        cascade: Whether ``auto`` requests try the small tier first by default.
        last_resort: A model appended to every fallback chain (the self-hosted one).
    """

    tiers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    classifier: str = "heuristic"
    cascade: bool = False
    last_resort: str = ""


@dataclasses.dataclass(frozen=True)
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


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, value: Any, why: str) -> CatalogError:
        return CatalogError(f"{self.source}: {where}: {value!r} {why}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, value, "must be a mapping")
        return value

    def keys(self, raw: dict[str, Any], where: str, allowed: set[str]) -> None:
        for key in raw:
            if key not in allowed:
                raise CatalogError(
                    f"{self.source}: {where}.{key}: unknown key (known here: {', '.join(sorted(allowed))})"
                )

    def number(self, raw: dict[str, Any], where: str, key: str, default: float, lo: float = 0.0) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise self.fail(f"{where}.{key}", value, f"must be a number >= {lo}")
        return float(value)

    def integer(self, raw: dict[str, Any], where: str, key: str, default: int, lo: int = 0) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(f"{where}.{key}", value, f"must be an integer >= {lo}")
        return value

    def name_list(self, raw: dict[str, Any], where: str, key: str) -> tuple[str, ...]:
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}", value, "must be a list of names")
        return tuple(value)


def parse_catalog(doc: Any, env: Mapping[str, str] | None = None, source: str = "models.yaml") -> Catalog:
    """Builds a catalog from the parsed YAML; ``${VAR:-default}`` is expanded from ``env``.

    Raises:
        CatalogError: A key is unknown, a value has the wrong type, or a name dangles.
    """
    env = os.environ if env is None else env
    r = _Reader(source)
    root = r.mapping(doc, "the document")
    r.keys(root, "(root)", {"providers", "models", "aliases", "routing"})
    providers = r.mapping(root.get("providers"), "providers")
    for pname, prov in providers.items():
        r.keys(r.mapping(prov, f"providers.{pname}"), f"providers.{pname}", _PROVIDER_KEYS)
        wire = prov.get("wire", "openai_compat")
        if wire not in WIRES:
            raise r.fail(f"providers.{pname}.wire", wire, f"is not a wire format; use one of {', '.join(WIRES)}")

    models: dict[str, Model] = {}
    for name, spec in r.mapping(root.get("models"), "models").items():
        where = f"models.{name}"
        if not _NAME.match(str(name)):
            raise r.fail(where, name, "is not a valid model name")
        spec = r.mapping(spec, where)
        r.keys(spec, where, _MODEL_KEYS)
        tier = spec.get("tier", "small")
        if tier not in TIERS:
            raise r.fail(f"{where}.tier", tier, f"is not a tier; use one of {', '.join(TIERS)}")
        caps = r.name_list(spec, where, "capabilities")
        for cap in caps:
            if cap not in CAPABILITIES:
                raise r.fail(f"{where}.capabilities", cap, f"is unknown; use {', '.join(CAPABILITIES)}")
        price = r.mapping(spec.get("price_per_1m_tokens"), f"{where}.price_per_1m_tokens")
        r.keys(price, f"{where}.price_per_1m_tokens", _PRICE_KEYS)
        pw = f"{where}.price_per_1m_tokens"
        limits = r.mapping(spec.get("limits"), f"{where}.limits")
        r.keys(limits, f"{where}.limits", {"rpm", "tpm"})
        raw_deps = spec.get("deployments") or [{}]
        if not isinstance(raw_deps, list):
            raise r.fail(f"{where}.deployments", raw_deps, "must be a list")
        deployments: list[Deployment] = []
        for i, raw in enumerate(raw_deps):
            dw = f"{where}.deployments[{i}]"
            raw = r.mapping(raw, dw)
            r.keys(raw, dw, _DEPLOYMENT_KEYS)
            pname = raw.get("provider", spec.get("provider"))
            if pname not in providers:
                raise r.fail(
                    f"{dw}.provider" if "provider" in raw else f"{where}.provider",
                    pname,
                    f"is not a provider; known: {', '.join(providers) or '(none)'}",
                )
            prov = providers[pname] or {}
            merged = {**prov, **raw}
            key_env = merged.get("api_key_env", "")
            dep_name = str(raw.get("name", "default" if len(raw_deps) == 1 else f"d{i}"))
            if dep_name in {d.name for d in deployments}:
                raise r.fail(f"{dw}.name", dep_name, "is used twice in this model")
            deployments.append(
                Deployment(
                    provider=str(pname),
                    base_url=_expand(str(merged.get("base_url", "")), env),
                    upstream_model=str(raw.get("upstream_model", spec.get("upstream_model", name))),
                    api_key=env.get(key_env, "") if key_env else "",
                    api_key_env=str(key_env or ""),
                    timeout_s=r.number(merged, dw, "timeout_s", 60.0, 0.001),
                    name=dep_name,
                    model=str(name),
                    weight=r.number(raw, dw, "weight", 1.0),
                    first_token_timeout_s=r.number(merged, dw, "first_token_timeout_s", 0.0),
                    default_max_tokens=r.integer(spec, where, "max_output_tokens", 4096, 1),
                    wire=str(prov.get("wire", "openai_compat")),
                )
            )
        models[str(name)] = Model(
            name=str(name),
            deployments=tuple(deployments),
            tier=tier,
            context_window=r.integer(spec, where, "context_window", 4096, 1),
            max_output_tokens=r.integer(spec, where, "max_output_tokens", 4096, 1),
            price=Price(
                input_usd=r.number(price, pw, "input", 0.0),
                output_usd=r.number(price, pw, "output", 0.0),
                cached_input_usd=r.number(price, pw, "cached_input", 0.0),
                cache_write_input_usd=r.number(price, pw, "cache_write_input", 0.0)
                if "cache_write_input" in price
                else None,
            ),
            capabilities=frozenset(caps),
            limits=Limits(
                rpm=r.integer(limits, f"{where}.limits", "rpm", 0), tpm=r.integer(limits, f"{where}.limits", "tpm", 0)
            ),
            fallbacks=r.name_list(spec, where, "fallbacks"),
        )

    for name, model in models.items():
        for fb in model.fallbacks:
            if fb not in models:
                raise r.fail(f"models.{name}.fallbacks", fb, "is not a model in this catalog")
    aliases = {str(k): str(v) for k, v in r.mapping(root.get("aliases"), "aliases").items()}
    for alias, target in aliases.items():
        if target not in models:
            raise r.fail(f"aliases.{alias}", target, "is not a model in this catalog")
    raw_routing = r.mapping(root.get("routing"), "routing")
    r.keys(raw_routing, "routing", _ROUTING_KEYS)
    tiers = {str(k): str(v) for k, v in r.mapping(raw_routing.get("tiers"), "routing.tiers").items()}
    for tier, target in tiers.items():
        if tier not in TIERS:
            raise r.fail("routing.tiers", tier, f"is not a tier; use {', '.join(TIERS)}")
        if target not in models:
            raise r.fail(f"routing.tiers.{tier}", target, "is not a model in this catalog")
    last = str(raw_routing.get("last_resort") or "")
    if last and last not in models:
        raise r.fail("routing.last_resort", last, "is not a model in this catalog")
    cascade = raw_routing.get("cascade", False)
    if not isinstance(cascade, bool):
        raise r.fail("routing.cascade", cascade, "must be true or false")
    routing = Routing(
        tiers=tiers, classifier=str(raw_routing.get("classifier") or "heuristic"), cascade=cascade, last_resort=last
    )
    return Catalog(models=models, aliases=aliases, routing=routing)


def load_catalog(path: str | Path, env: Mapping[str, str] | None = None) -> Catalog:
    """Reads and parses the catalog file.

    Raises:
        CatalogError: The file is missing or malformed; the message names it.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    catalog = parse_catalog(doc or {}, env, source=str(path))
    return dataclasses.replace(catalog, version=hashlib.sha256(text.encode()).hexdigest()[:12])


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
