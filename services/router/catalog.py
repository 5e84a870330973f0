"""The model catalog (``deploy/models.yaml``): which models exist and how to reach them."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tollway.router.providers.base import Deployment

_ENV = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
TIERS = ("small", "medium", "large")


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the model and the key."""


@dataclasses.dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_usd: float = 0.0
    output_usd: float = 0.0
    cached_input_usd: float = 0.0


@dataclasses.dataclass(frozen=True)
class Model:
    """A model requests may name."""

    name: str
    deployments: tuple[Deployment, ...]
    wire: str
    tier: str = "small"
    context_window: int = 4096
    price: Price = Price()


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every model, and aliases (``auto``) pointing at them."""

    models: dict[str, Model]
    aliases: dict[str, str]

    def resolve(self, name: str) -> Model | None:
        """The model ``name`` names, following an alias; None when unknown."""
        return self.models.get(self.aliases.get(name, name))

    def names(self) -> list[str]:
        return sorted([*self.models, *self.aliases])


def _expand(value: str, env: dict[str, str]) -> str:
    return _ENV.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def parse_catalog(doc: dict[str, Any], env: dict[str, str] | None = None) -> Catalog:
    """Builds a catalog from the parsed YAML; ``${VAR:-default}`` is expanded from ``env``."""
    env = dict(os.environ) if env is None else env
    providers = doc.get("providers") or {}
    models: dict[str, Model] = {}
    for name, spec in (doc.get("models") or {}).items():
        where = f"models.{name}"
        pname = spec.get("provider")
        if pname not in providers:
            raise CatalogError(f"{where}.provider is {pname!r}; known providers: {', '.join(providers)}")
        prov = providers[pname]
        wire = prov.get("wire", "openai_compat")
        key_env = prov.get("api_key_env", "")
        deployment = Deployment(
            provider=pname,
            base_url=_expand(str(prov.get("base_url", "")), env),
            upstream_model=str(spec.get("upstream_model", name)),
            api_key=env.get(key_env, "") if key_env else "",
            timeout_s=float(prov.get("timeout_s", 60.0)),
        )
        tier = spec.get("tier", "small")
        if tier not in TIERS:
            raise CatalogError(f"{where}.tier is {tier!r}; use one of {', '.join(TIERS)}")
        price = spec.get("price_per_1m_tokens") or {}
        models[name] = Model(
            name=name,
            deployments=(deployment,),
            wire=wire,
            tier=tier,
            context_window=int(spec.get("context_window", 4096)),
            price=Price(
                input_usd=float(price.get("input", 0.0)),
                output_usd=float(price.get("output", 0.0)),
                cached_input_usd=float(price.get("cached_input", 0.0)),
            ),
        )
    aliases = {str(k): str(v) for k, v in (doc.get("aliases") or {}).items()}
    for alias, target in aliases.items():
        if target not in models:
            raise CatalogError(f"aliases.{alias} points at {target!r}, which is not a model")
    return Catalog(models=models, aliases=aliases)


def load_catalog(path: str | Path) -> Catalog:
    """Reads and parses the catalog file.

    Raises:
        CatalogError: The file is missing or malformed.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc}") from None
    return parse_catalog(doc or {})
