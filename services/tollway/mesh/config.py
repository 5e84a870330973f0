"""Typed configuration from ``TOLLWAY_*`` environment variables.

Each service declares a frozen dataclass whose field defaults are the documented
defaults; :func:`load_config` fills it from ``TOLLWAY_<SERVICE>_<FIELD>`` and fails at
start-up, naming the variable and its value, on anything it cannot parse or does not
know. Settings every service shares (Redis, logging, tracing) are in :class:`MeshConfig`,
read from ``TOLLWAY_<FIELD>``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from tollway.mesh.frozen import frozen

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration value is missing, malformed or unknown."""


@frozen
class MeshConfig:
    """Settings shared by every service.

    Attributes:
        redis_url: Where all shared state lives (``TOLLWAY_REDIS_URL``).
        log_level: Python logging level name (``TOLLWAY_LOG_LEVEL``).
        log_format: ``json`` (one object a line) or ``text`` (``TOLLWAY_LOG_FORMAT``).
        otel_exporter: ``none``, ``console`` or ``otlp`` (``TOLLWAY_OTEL_EXPORTER``). Spans are
            created and propagated in every case; this only picks where they are sent.
        otel_endpoint: The OTLP/gRPC collector address when exporting with ``otlp``.
        otel_sample_ratio: The share of new traces kept, 0 to 1 (``TOLLWAY_OTEL_SAMPLE_RATIO``); a
            trace that arrives with a ``traceparent`` keeps its caller's decision.
        metrics_host: Interface of the Prometheus endpoint (loopback by default).
        shutdown_grace_s: How long in-flight RPCs may finish after SIGTERM.
        shutdown_drain_delay_s: How long health reports NOT_SERVING before the server stops
            taking new RPCs, so balancers (Envoy health checks, k8s endpoints) stop sending first.
        bind_host: The interface services listen on (``0.0.0.0`` in a pod).
        delegation_secret: The mesh secret that signs on-behalf-of tokens
            (``TOLLWAY_DELEGATION_SECRET``, :mod:`tollway.common.delegation`): a jobs worker
            calls the gateway as the key that submitted the job. Empty: the gateway refuses
            such tokens and the jobs service does not start.
        gc_young_threshold: How many container objects a process may make, net of those freed,
            before the cyclic collector runs (``TOLLWAY_GC_YOUNG_THRESHOLD``; Python's default is
            700). Requests leave almost no cyclic garbage, but work that outlives its request for
            a few tens of milliseconds (budget settlements batched, holds awaiting their record)
            keeps ~70 objects a request alive meanwhile: at 700 the collector then ran every ~10
            requests, walked them, and found nothing (~20 us a request). At 10,000 it runs when
            that much is pending, which only bursts reach.
    """

    redis_url: str = "redis://127.0.0.1:6390/0"
    log_level: str = "INFO"
    log_format: str = "json"
    otel_exporter: str = "none"
    otel_endpoint: str = "127.0.0.1:4317"
    otel_sample_ratio: float = 1.0
    metrics_host: str = "127.0.0.1"
    shutdown_grace_s: float = 10.0
    shutdown_drain_delay_s: float = 0.0
    bind_host: str = "127.0.0.1"
    delegation_secret: str = ""
    gc_young_threshold: int = 10_000

    def __post_init__(self) -> None:
        if self.gc_young_threshold < 100:
            raise ValueError(
                f"Config 'TOLLWAY_GC_YOUNG_THRESHOLD' has value {self.gc_young_threshold!r}. Must be at least "
                "100 (Python's default is 700; a lower value runs the collector on nearly every allocation)."
            )


def _parse(name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _parse(name, raw, inner[0])
    if kind is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"Config {name!r} has value {raw!r}. Not a valid bool (use true or false).")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"Config {name!r} has value {raw!r}. Not a valid {kind.__name__}.") from None
    if origin is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind is str:
        return raw
    raise ConfigError(f"Config {name!r}: unsupported field type {kind!r}")


def load_config(cls: type[T], service: str = "", env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds ``cls`` from the environment.

    Args:
        cls: A frozen dataclass; every field needs a default.
        service: The service name; variables are ``TOLLWAY_<SERVICE>_<FIELD>``. Empty for
            :class:`MeshConfig` (``TOLLWAY_<FIELD>``, unknown names are not checked there,
            since service variables share the prefix).
        env: The environment to read (``os.environ`` by default).
        **overrides: Values that win over the environment (used by tests and the launcher).

    Raises:
        ConfigError: A value does not parse, or a ``TOLLWAY_<SERVICE>_*`` variable names no field.
    """
    env = os.environ if env is None else env
    prefix = f"TOLLWAY_{service.upper()}_" if service else "TOLLWAY_"
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name in fields:
        var = prefix + name.upper()
        if name in overrides:
            values[name] = overrides[name]
        elif var in env:
            values[name] = _parse(var, env[var], hints[name])
    if service:
        known = {prefix + n.upper() for n in fields}
        unknown = sorted(k for k in env if k.startswith(prefix) and k not in known)
        if unknown:
            raise ConfigError(
                f"Unknown config {', '.join(unknown)}. Known keys for {service}: {', '.join(sorted(known))}."
            )
    try:
        cfg = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config for {service or 'mesh'}: {exc}") from None
    return cfg
