"""What an endpoint is: an engine, where it runs, what it needs and what it costs.

Pure values. API keys are never stored: a :class:`ConnectionConfig` names the environment
variable that holds the key and reads it only when a connection is made.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import attrs

from sttrouter.errors import ConfigError, EndpointMisconfigured

__all__ = [
    "ConnectionConfig",
    "DeviceTier",
    "Location",
    "NetworkStatus",
    "Provider",
    "STTEndpoint",
    "ThermalState",
    "known_provider_kinds",
]


class _Ranked(enum.StrEnum):
    """A string enum whose members are ordered by declaration."""

    @property
    def rank(self) -> int:
        return list(type(self)).index(self)


class DeviceTier(_Ranked):
    """How capable the device is, weakest first (so ``tier.rank >= min_tier.rank`` means able)."""

    UNSUPPORTED = "unsupported"
    PRO_STANDARD = "pro_standard"
    PRO_MAX = "pro_max"
    ULTRA = "ultra"


class NetworkStatus(_Ranked):
    """Network reachability, best first."""

    CONNECTED = "connected"
    CONSTRAINED = "constrained"
    DISCONNECTED = "disconnected"


class ThermalState(_Ranked):
    """Thermal pressure, coolest first (as iOS ``ProcessInfo.ThermalState``)."""

    NOMINAL = "nominal"
    FAIR = "fair"
    SERIOUS = "serious"
    CRITICAL = "critical"


class Provider(enum.StrEnum):
    """Built-in engine kinds. Custom engines are added with ``sttrouter.register_provider``."""

    GLM_SERVER = "glm_server"
    GLM_LOCAL = "glm_local"
    DEEPGRAM = "deepgram"
    ASSEMBLYAI = "assemblyai"
    OFFLINE = "offline"
    FAKE = "fake"


_custom_kinds: set[str] = set()
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def register_provider_kind(name: str) -> None:
    """Allow ``provider = name`` in endpoints. Internal: ``sttrouter.register_provider`` calls
    it while registering the engine's factory, so a kind that validates can also be built."""
    if not _KIND_RE.match(name):
        raise ConfigError(f"provider kind {name!r} must be lower_snake_case")
    _custom_kinds.add(name)


def known_provider_kinds() -> frozenset[str]:
    return frozenset({p.value for p in Provider} | _custom_kinds)


class Location(enum.StrEnum):
    """Where the engine runs."""

    ON_DEVICE = "on_device"
    LOCAL_SERVER = "local_server"
    SELF_HOSTED = "self_hosted"
    CLOUD = "cloud"


_SCHEMES = frozenset({"http", "https", "ws", "wss"})
_INSECURE = frozenset({"http", "ws"})


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _freeze_options(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen
class ConnectionConfig:
    """How to reach an endpoint.

    Attributes:
        base_url: ``http(s)://`` or ``ws(s)://`` URL; ``None`` for in-process engines and SDK
            defaults.
        api_key_env: the *name* of the environment variable holding the API key.
        options: provider-specific settings (model, language, mode, ...).
        allow_insecure: permit plain ``http``/``ws`` to a host that is not loopback.
    """

    base_url: str | None = None
    api_key_env: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_options)
    allow_insecure: bool = False

    def __attrs_post_init__(self) -> None:
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in _SCHEMES or not parts.hostname:
                raise ConfigError(
                    f"base_url {self.base_url!r} must be an absolute http, https, ws or wss URL",
                    field="base_url",
                )
            if (
                parts.scheme in _INSECURE
                and not self.allow_insecure
                and not is_loopback_host(parts.hostname)
            ):
                raise ConfigError(
                    f"base_url {self.base_url!r} sends audio unencrypted to a host that is not "
                    f"loopback; use https/wss, or set allow_insecure = true if you mean it",
                    field="base_url",
                )
        if self.api_key_env is not None and not re.match(
            r"^[A-Za-z_][A-Za-z0-9_]*$", self.api_key_env
        ):
            raise ConfigError(
                f"api_key_env {self.api_key_env!r} must be the NAME of an environment variable "
                "(for example DEEPGRAM_API_KEY), never the key itself",
                field="api_key_env",
            )

    def has_api_key(self, environ: Mapping[str, str] | None = None) -> bool:
        """True when no key is needed or the named variable is set and non-empty."""
        if self.api_key_env is None:
            return True
        env = os.environ if environ is None else environ
        return bool(env.get(self.api_key_env))

    def secrets(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The secret values configured now (the API key when set): what error messages,
        event reasons and logs must never contain."""
        if self.api_key_env is None:
            return ()
        env = os.environ if environ is None else environ
        key = env.get(self.api_key_env)
        return (key,) if key else ()

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Read the key from the environment now. Never log or store the returned value."""
        if self.api_key_env is None:
            return None
        env = os.environ if environ is None else environ
        key = env.get(self.api_key_env)
        if not key:
            raise EndpointMisconfigured(
                f"environment variable {self.api_key_env} is not set; export the API key there"
            )
        return key

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.base_url is not None:
            d["base_url"] = self.base_url
        if self.api_key_env is not None:
            d["api_key_env"] = self.api_key_env
        if self.allow_insecure:
            d["allow_insecure"] = True
        if self.options:
            d["options"] = dict(self.options)
        return d


def _to_decimal(value: Decimal | str | int | float) -> Decimal:
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(
            f"cost_per_hour {value!r} is not a number", field="cost_per_hour"
        ) from None


def _check_provider(_inst: object, _attr: object, value: str) -> None:
    if value not in known_provider_kinds():
        choices = ", ".join(sorted(known_provider_kinds()))
        raise ConfigError(
            f"unknown provider {value!r}; use one of {choices} "
            "or register a custom engine with sttrouter.register_provider(kind, factory)",
            field="provider",
        )


def _check_nonneg(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{attr.name} must not be negative, got {value}", field=attr.name)


def _check_unit(_inst: object, _attr: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"reliability_score must lie in 0..1, got {value}", field="reliability_score"
        )


def _check_id(_inst: object, _attr: object, value: str) -> None:
    if not value or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:#-]*$", value):
        raise ConfigError(
            f"endpoint id {value!r} must be non-empty letters, digits, '_', '-', '.', ':' or "
            "'#' (a pool's replicas are named pool#1, pool#2, ...)",
            field="id",
        )


def _languages(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    return frozenset(str(v).lower() for v in value)


def _provider_str(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


@attrs.frozen
class STTEndpoint:
    """One engine the router may send audio to.

    Attributes:
        id: unique id in a registry.
        provider: engine kind (:class:`Provider` value or a registered custom kind).
        location: where it runs.
        expected_latency_ms: typical final latency.
        reliability_score: 0..1, a prior used to break ties.
        cost_per_hour: price of one hour of audio (``Decimal``).
        supports_streaming: whether it can serve a streaming session, natively or through
            the segmenter (as ``glm_server`` and ``glm_local`` do); the router offers a
            ``False`` endpoint only to batch decisions (``streaming=False``).
        supported_languages: lower-case BCP-47 codes; empty means any language.
        needs_network: the device must be online to use it.
        min_tier: weakest device tier that can use it (on-device engines).
        max_thermal: hottest thermal state at which it may be used.
        memory_gb: memory the engine needs on the device or host, when it runs in-process.
        max_concurrent_sessions: admission limit; ``None`` for unlimited.
        connection: how to reach it.
        pool: the logical endpoint this one is a replica of (``None``: not pooled). Replicas
            of one pool serve the same engine; routers keep them next to each other in a
            chain, least loaded first.
        weight: a replica's share among equally loaded siblings (higher goes first).
    """

    id: str = attrs.field(validator=_check_id)
    provider: str = attrs.field(converter=_provider_str, validator=_check_provider)
    location: Location = attrs.field(default=Location.CLOUD, converter=Location)
    display_name: str = ""
    expected_latency_ms: float = attrs.field(default=300.0, validator=_check_nonneg)
    reliability_score: float = attrs.field(default=0.99, validator=_check_unit)
    cost_per_hour: Decimal = attrs.field(
        default=Decimal(0), converter=_to_decimal, validator=_check_nonneg
    )
    supports_streaming: bool = True
    supported_languages: frozenset[str] = attrs.field(factory=frozenset, converter=_languages)
    needs_network: bool = True
    min_tier: DeviceTier = attrs.field(default=DeviceTier.UNSUPPORTED, converter=DeviceTier)
    max_thermal: ThermalState = attrs.field(default=ThermalState.CRITICAL, converter=ThermalState)
    memory_gb: float | None = attrs.field(default=None, validator=_check_nonneg)
    max_concurrent_sessions: int | None = attrs.field(default=None, validator=_check_nonneg)
    connection: ConnectionConfig = attrs.field(factory=ConnectionConfig)
    pool: str | None = attrs.field(default=None)
    weight: float = attrs.field(default=1.0, validator=_check_nonneg)

    @property
    def name(self) -> str:
        return self.display_name or self.id

    def supports_language(self, language: str | None) -> bool:
        if language is None or not self.supported_languages:
            return True
        lang = language.lower()
        return lang in self.supported_languages or lang.split("-")[0] in self.supported_languages
