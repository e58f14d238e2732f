"""The endpoint registry: the set of engines a router may choose from, loadable from TOML.

File format (one ``[[endpoint]]`` table per engine, in preference-neutral order)::

    [[endpoint]]
    id = "deepgram"
    display_name = "Deepgram Nova-3"
    provider = "deepgram"              # glm_server, glm_local, deepgram, assemblyai, offline,
                                       # fake, or a kind registered with
                                       # sttrouter.register_provider
    location = "cloud"                 # on_device, local_server, self_hosted, cloud
    expected_latency_ms = 300
    reliability_score = 0.99           # 0..1
    cost_per_hour = "0.258"            # a string keeps the Decimal exact; numbers work too
    supports_streaming = true
    supported_languages = []           # empty: any language
    needs_network = true
    min_tier = "unsupported"           # weakest device tier that can run it
    max_thermal = "critical"           # hottest thermal state it may be used at
    memory_gb = 2.5                    # optional: memory an in-process engine needs
    max_concurrent_sessions = 50       # optional

    [endpoint.connection]
    base_url = "wss://api.deepgram.com/v1/listen"
    api_key_env = "DEEPGRAM_API_KEY"   # the NAME of the variable; never the key
    allow_insecure = false             # permit ws:// / http:// to a non-loopback host
    [endpoint.connection.options]      # provider-specific, free-form
    model = "nova-3"

A *pool* — one logical endpoint served by several replicas — is an ``[[endpoint]]`` with
``replicas = ["http://a:8000", "http://b:8000"]`` or ``[[endpoint.replica]]`` tables (``url``,
optional ``weight``, ``max_concurrent_sessions`` and ``id``); each replica becomes an endpoint
of its own (``glm#1``, ``glm#2``, ...; see :mod:`sttrouter.panel.pools`).

Budgets per tenant and period are ``[[budget]]`` tables (see :mod:`sttrouter.panel.budgets`)::

    [[budget]]
    tenant = "*"
    period = "day"
    limit_usd = "5.00"
    on_exhausted = "free_only"

An endpoint of a built-in provider kind takes what it leaves out of ``location``,
``expected_latency_ms``, ``reliability_score``, ``cost_per_hour``, ``supports_streaming``,
``supported_languages``, ``needs_network``, ``min_tier`` and ``max_thermal`` from that kind's
built-in entry (the default registry): ``id = "x"`` and ``provider = "offline"`` make an
on-device, English-only endpoint that needs no network; a Deepgram or AssemblyAI entry without a
price costs the vendor's list price (0.258 and 0.37 US$ per hour).

Every problem raises :class:`~sttrouter.errors.ConfigError` naming the file, the endpoint and
the field. API keys never live in a config: a field that looks like one (``api_key``,
``token``, ``secret``, ``password``, credentials in a URL) is rejected with a message pointing
to ``api_key_env``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sttrouter._builtin_endpoints import builtin_endpoints, provider_defaults
from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel import _toml
from sttrouter.panel.budgets import Budget, budgets_from_dicts
from sttrouter.panel.device import DeviceTier, ThermalState
from sttrouter.panel.pools import Replica, expand_pool, pool_to_dict, replicas_from_dict

__all__ = [
    "EndpointRegistry",
    "default_registry",
    "endpoint_from_dict",
    "endpoint_to_dict",
    "endpoints_from_dict",
]

_SECRET_WORDS = ("api_key", "apikey", "key", "token", "secret", "password", "passwd", "auth")


def _looks_secret(name: str) -> bool:
    n = name.lower().replace("-", "_")
    if n in ("api_key_env", "key_env"):
        return False
    return any(n == w or n.endswith("_" + w) or n.startswith(w + "_") for w in _SECRET_WORDS) or (
        n in ("authorization", "bearer", "credentials")
    )


def _secret_error(name: str, source: str, endpoint: str | None) -> ConfigError:
    return ConfigError(
        f"{name!r} looks like a secret; API keys never go in a config file: set "
        'api_key_env = "SOME_ENV_VAR" in [endpoint.connection] and export the key in that '
        "environment variable",
        source=source,
        endpoint=endpoint,
        field=name,
    )


# field name -> (type description, checker) for loose input at the file boundary
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list | tuple | frozenset | set) and all(isinstance(x, str) for x in v)


_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "id": ("a string", lambda v: isinstance(v, str)),
    "display_name": ("a string", lambda v: isinstance(v, str)),
    "provider": ("a string", lambda v: isinstance(v, str)),
    "location": ("a string", lambda v: isinstance(v, str)),
    "expected_latency_ms": ("a number", _is_number),
    "reliability_score": ("a number", _is_number),
    "cost_per_hour": (
        "a number or a decimal string",
        lambda v: _is_number(v) or isinstance(v, str | Decimal),
    ),
    "supports_streaming": ("true or false", lambda v: isinstance(v, bool)),
    "supported_languages": ("a list of strings", _is_str_list),
    "needs_network": ("true or false", lambda v: isinstance(v, bool)),
    "min_tier": ("a string", lambda v: isinstance(v, str)),
    "max_thermal": ("a string", lambda v: isinstance(v, str)),
    "memory_gb": ("a number", _is_number),
    "max_concurrent_sessions": (
        "an integer",
        lambda v: isinstance(v, int) and not isinstance(v, bool),
    ),
    "connection": ("a table", lambda v: isinstance(v, Mapping)),
}
_ENUMS: dict[str, type[Any]] = {
    "location": Location,
    "min_tier": DeviceTier,
    "max_thermal": ThermalState,
}
_CONN_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "base_url": ("a string", lambda v: isinstance(v, str)),
    "api_key_env": ("a string", lambda v: isinstance(v, str)),
    "allow_insecure": ("true or false", lambda v: isinstance(v, bool)),
    "options": ("a table", lambda v: isinstance(v, Mapping)),
}


def _unknown(
    name: str, known: Iterable[str], where: str, source: str, eid: str | None
) -> ConfigError:
    if _looks_secret(name):
        return _secret_error(name, source, eid)
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown key in {where}{hint} (known: {', '.join(sorted(known))})",
        source=source,
        endpoint=eid,
        field=name,
    )


def _strip_field_prefix(exc: ConfigError) -> str:
    msg = exc.message
    if exc.field:
        prefix = f"field {exc.field!r}: "
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _scan_options(options: Mapping[str, Any], source: str, eid: str | None, path: str) -> None:
    for key, value in options.items():
        name = f"{path}.{key}"
        if isinstance(value, Mapping):
            _scan_options(value, source, eid, name)
        elif isinstance(value, str) and _looks_secret(str(key)):
            raise _secret_error(name, source, eid)


def _check_url_secrets(url: str, source: str, eid: str | None) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(
            "base_url carries credentials (user:password@); put the key in an environment "
            "variable and name it with api_key_env",
            source=source,
            endpoint=eid,
            field="connection.base_url",
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _looks_secret(name):
            raise ConfigError(
                f"base_url carries {name!r} in its query string; put the key in an environment "
                "variable and name it with api_key_env",
                source=source,
                endpoint=eid,
                field="connection.base_url",
            )


def _connection_from_dict(
    data: Mapping[str, Any], source: str, eid: str | None
) -> ConnectionConfig:
    for key, value in data.items():
        if key not in _CONN_CHECKS:
            raise _unknown(key, _CONN_CHECKS, "[endpoint.connection]", source, eid)
        what, ok = _CONN_CHECKS[key]
        if not ok(value):
            raise ConfigError(
                f"must be {what}, got {value!r}",
                source=source,
                endpoint=eid,
                field=f"connection.{key}",
            )
    if "options" in data:
        _scan_options(data["options"], source, eid, "connection.options")
    if "base_url" in data:
        _check_url_secrets(data["base_url"], source, eid)
    try:
        return ConnectionConfig(**data)
    except ConfigError as exc:
        raise ConfigError(
            _strip_field_prefix(exc),
            source=source,
            endpoint=eid,
            field=f"connection.{exc.field}" if exc.field else "connection",
        ) from None


def endpoint_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> STTEndpoint:
    """Build one endpoint from a loose mapping (a ``[[endpoint]]`` table), validating every key.

    Raises:
        ConfigError: naming ``source``, the endpoint id and the field.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"an endpoint must be a table, got {data!r}", source=source)
    raw_id = data.get("id")
    eid = raw_id if isinstance(raw_id, str) else None
    if "id" not in data:
        raise ConfigError("every endpoint needs an id", source=source, field="id")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _CHECKS:
            raise _unknown(key, _CHECKS, "[[endpoint]]", source, eid)
        what, ok = _CHECKS[key]
        if not ok(value):
            raise ConfigError(
                f"must be {what}, got {value!r}", source=source, endpoint=eid, field=key
            )
        enum_type = _ENUMS.get(key)
        if enum_type is not None and value not in {m.value for m in enum_type}:
            choices = ", ".join(m.value for m in enum_type)
            raise ConfigError(
                f"{value!r} is not one of {choices}", source=source, endpoint=eid, field=key
            )
        if key == "connection":
            value = _connection_from_dict(value, source, eid)
        kwargs[key] = value
    # a field left out takes the built-in value of its provider kind (an offline entry is
    # on-device and English; a Deepgram entry has Deepgram's price)
    provider = kwargs.get("provider")
    if isinstance(provider, str):
        kwargs = {**provider_defaults(provider), **kwargs}
    try:
        return STTEndpoint(**kwargs)
    except ConfigError as exc:
        raise ConfigError(
            _strip_field_prefix(exc), source=source, endpoint=eid, field=exc.field
        ) from None


def endpoints_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>"
) -> tuple[STTEndpoint, ...]:
    """The endpoints of one ``[[endpoint]]`` table: itself, or its replicas when it declares
    ``replicas`` / ``[[endpoint.replica]]`` (a pool)."""
    if not isinstance(data, Mapping) or not ({"replica", "replicas"} & set(data)):
        return (endpoint_from_dict(data, source=source),)
    raw_id = data.get("id")
    eid = raw_id if isinstance(raw_id, str) else None
    if "replica" in data and "replicas" in data:
        raise ConfigError(
            "give the replicas either as replicas = [urls] or as [[endpoint.replica]] tables",
            source=source,
            endpoint=eid,
            field="replica",
        )
    raw = data.get("replica", data.get("replicas"))
    replicas = replicas_from_dict(raw, source=source, endpoint=eid)
    base = endpoint_from_dict(
        {k: v for k, v in data.items() if k not in ("replica", "replicas")}, source=source
    )
    try:
        return expand_pool(base, replicas)
    except ConfigError as exc:
        raise ConfigError(
            _strip_field_prefix(exc), source=source, endpoint=eid, field=f"replica.{exc.field}"
        ) from None


def endpoint_to_dict(ep: STTEndpoint) -> dict[str, Any]:
    """The ``[[endpoint]]`` table for ``ep``: every field, ``None`` ones left out, no secret."""
    d: dict[str, Any] = {
        "id": ep.id,
        "display_name": ep.display_name or None,
        "provider": ep.provider,
        "location": ep.location.value,
        "expected_latency_ms": ep.expected_latency_ms,
        "reliability_score": ep.reliability_score,
        "cost_per_hour": str(ep.cost_per_hour),
        "supports_streaming": ep.supports_streaming,
        "supported_languages": sorted(ep.supported_languages),
        "needs_network": ep.needs_network,
        "min_tier": ep.min_tier.value,
        "max_thermal": ep.max_thermal.value,
        "memory_gb": ep.memory_gb,
        "max_concurrent_sessions": ep.max_concurrent_sessions,
    }
    conn = ep.connection.to_dict()
    if conn:
        d["connection"] = conn
    return {k: v for k, v in d.items() if v is not None}


class EndpointRegistry:
    """An ordered set of endpoints, unique by id.

    Registration order is kept: it is the last tie-break of routing. :attr:`version` grows on
    every change, so routers can cache what they compile from a registry.

    Args:
        endpoints: initial endpoints, registered in order.
        source: where the endpoints came from (named in errors).
    """

    def __init__(self, endpoints: Iterable[STTEndpoint] = (), *, source: str = "<code>") -> None:
        self._endpoints: dict[str, STTEndpoint] = {}
        self.source = source
        self.version = 0
        self.state: dict[str, Any] = {}
        """The file's ``[state]`` table (where routing state is shared), read by the state
        layer; empty for in-memory state."""
        self.budgets: tuple[Budget, ...] = ()
        """The file's ``[[budget]]`` tables (a :class:`~sttrouter.panel.budgets.BudgetBook`
        is built from them)."""
        for ep in endpoints:
            self.register(ep)

    # --- mutation -------------------------------------------------------------------------
    def register(self, endpoint: STTEndpoint, *, replace: bool = False) -> None:
        """Add ``endpoint``. A second endpoint with the same id is an error unless ``replace``."""
        if not isinstance(endpoint, STTEndpoint):
            raise TypeError(f"expected STTEndpoint, got {type(endpoint).__name__}")
        if endpoint.id in self._endpoints and not replace:
            raise ConfigError(
                "duplicate endpoint id; ids must be unique in a registry",
                source=self.source,
                endpoint=endpoint.id,
                field="id",
            )
        clash = endpoint.pool in self._endpoints or any(
            ep.pool == endpoint.id for ep in self._endpoints.values()
        )
        if clash:
            raise ConfigError(
                "a pool and an endpoint cannot share an id (a pool's id names its replicas "
                "in policies)",
                source=self.source,
                endpoint=endpoint.id,
                field="id",
            )
        self._endpoints[endpoint.id] = endpoint
        self.version += 1

    def register_pool(
        self, endpoint: STTEndpoint, replicas: Sequence[Replica | str]
    ) -> tuple[STTEndpoint, ...]:
        """Register pool ``endpoint.id``: one endpoint per replica (``<id>#1``, ...), each
        ``endpoint`` with the replica's url, weight and limit. Returns the replicas."""
        members = expand_pool(endpoint, replicas)
        for ep in members:
            self.register(ep)
        return members

    def pool(self, name: str) -> tuple[STTEndpoint, ...]:
        """The replicas of pool ``name``, in declaration order (empty when there is none)."""
        return tuple(ep for ep in self._endpoints.values() if ep.pool == name)

    def unregister(self, endpoint_id: str) -> STTEndpoint:
        """Remove and return the endpoint; ``KeyError`` if it is not registered."""
        ep = self._endpoints.pop(endpoint_id)
        self.version += 1
        return ep

    # --- lookup ---------------------------------------------------------------------------
    def get(self, endpoint_id: str) -> STTEndpoint | None:
        return self._endpoints.get(endpoint_id)

    def __getitem__(self, endpoint_id: str) -> STTEndpoint:
        return self._endpoints[endpoint_id]

    def __iter__(self) -> Iterator[STTEndpoint]:
        return iter(tuple(self._endpoints.values()))

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self._endpoints

    @property
    def endpoints(self) -> tuple[STTEndpoint, ...]:
        """All endpoints, in registration order."""
        return tuple(self._endpoints.values())

    def __repr__(self) -> str:
        return f"EndpointRegistry({list(self._endpoints)!r}, source={self.source!r})"

    # --- config files ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> EndpointRegistry:
        """Build a registry from ``{"endpoint": [ {...}, ... ]}`` (the parsed TOML shape)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a table, got {type(data).__name__}", source=source)
        for key in data:
            if key not in ("endpoint", "state", "budget"):
                if key == "endpoints":
                    raise ConfigError(
                        "write each endpoint as an [[endpoint]] table (singular)",
                        source=source,
                        field=key,
                    )
                raise ConfigError(
                    "unknown top-level key; a registry file holds only [[endpoint]] and [[budget]] "
                    "tables and an optional [state] table",
                    source=source,
                    field=key,
                )
        items = data.get("endpoint", [])
        if isinstance(items, Mapping) or not isinstance(items, list | tuple):
            raise ConfigError(
                "endpoints must be an array of tables: write [[endpoint]], not [endpoint]",
                source=source,
                field="endpoint",
            )
        reg = cls(source=source)
        for item in items:
            for ep in endpoints_from_dict(item, source=source):
                reg.register(ep)
        reg.budgets = budgets_from_dicts(data.get("budget", []), source=source)
        state = data.get("state", {})
        if not isinstance(state, Mapping):
            raise ConfigError("[state] must be a table", source=source, field="state")
        reg.state = dict(state)
        return reg

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EndpointRegistry:
        """Load and validate a TOML registry file."""
        data, source = _toml.load_file(path)
        return cls.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.state:
            out["state"] = dict(self.state)
        out["endpoint"] = []
        done: set[str] = set()
        for ep in self._endpoints.values():
            if ep.pool is None:
                out["endpoint"].append(endpoint_to_dict(ep))
            elif ep.pool not in done:
                done.add(ep.pool)
                out["endpoint"].append(pool_to_dict(self.pool(ep.pool), endpoint_to_dict(ep)))
        if self.budgets:
            out["budget"] = [b.to_dict() for b in self.budgets]
        return out

    def dumps(self) -> str:
        """The registry as TOML text (never contains a key: only ``api_key_env`` names)."""
        return _toml.dumps(self.to_dict(), header="sttrouter endpoint registry")

    def dump(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.dumps())


def default_registry() -> EndpointRegistry:
    """The built-in registry used when no config is given (the same endpoints as
    ``examples/endpoints.toml``): on-device GLM, self-hosted GLM server, Deepgram, AssemblyAI and
    the offline pocketsphinx engine, read from the TOML data shipped in the package.
    """
    return EndpointRegistry(builtin_endpoints(), source="<default registry>")
