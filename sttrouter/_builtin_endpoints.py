"""The built-in endpoints, defined once as TOML data shipped in the package.

``default_registry.toml`` beside this module holds one ``[[endpoint]]`` per built-in engine. It
is the registry used when no config is given, the per-provider defaults an ``[[endpoint]]`` of a
config file starts from, and what the helpers (:func:`offline_endpoint`,
:func:`deepgram_endpoint`, :func:`assemblyai_endpoint`, ``glm_local_endpoint``) build on. Pure
values: the file is read once, and trusted (it ships with the package).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from types import MappingProxyType
from typing import Any

from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint

__all__ = [
    "BUILTIN_REGISTRY_FILE",
    "PROVIDER_DEFAULT_FIELDS",
    "assemblyai_endpoint",
    "builtin_endpoint",
    "builtin_endpoints",
    "builtin_tables",
    "deepgram_endpoint",
    "offline_endpoint",
    "provider_defaults",
]

BUILTIN_REGISTRY_FILE = "default_registry.toml"

PROVIDER_DEFAULT_FIELDS = (
    "location",
    "expected_latency_ms",
    "reliability_score",
    "cost_per_hour",
    "supports_streaming",
    "supported_languages",
    "needs_network",
    "min_tier",
    "max_thermal",
)
"""What an endpoint of a built-in provider kind takes from that kind's built-in entry when it
does not say: what the engine is and needs, not how this deployment reaches or names it. The
optional fields (``memory_gb``, ``max_concurrent_sessions``) are not taken: a config leaves them
out to mean "none", and a dumped registry must load back equal."""


@functools.cache
def builtin_tables() -> tuple[Mapping[str, Any], ...]:
    """The ``[[endpoint]]`` tables of the shipped registry file, in order (read-only)."""
    text = resources.files("sttrouter").joinpath(BUILTIN_REGISTRY_FILE).read_text("utf-8")
    return tuple(MappingProxyType(t) for t in tomllib.loads(text)["endpoint"])


def _endpoint(table: Mapping[str, Any], **fields: Any) -> STTEndpoint:
    kwargs = dict(table)
    if "connection" in kwargs:
        kwargs["connection"] = ConnectionConfig(**kwargs["connection"])
    kwargs.update(fields)
    return STTEndpoint(**kwargs)


def builtin_endpoints() -> tuple[STTEndpoint, ...]:
    """The built-in endpoints, in registry order."""
    return tuple(_endpoint(t) for t in builtin_tables())


def _table_for(provider: str) -> Mapping[str, Any] | None:
    for table in builtin_tables():
        if table["provider"] == provider:
            return table
    return None


def provider_defaults(provider: str) -> dict[str, Any]:
    """The fields (:data:`PROVIDER_DEFAULT_FIELDS`) an endpoint of ``provider`` kind takes
    when it does not give them; empty for a kind without a built-in entry (``fake``, custom)."""
    table = _table_for(provider)
    if table is None:
        return {}
    return {k: table[k] for k in PROVIDER_DEFAULT_FIELDS if k in table}


def builtin_endpoint(provider: str, **fields: Any) -> STTEndpoint:
    """The built-in endpoint of ``provider`` kind, with ``fields`` replaced.

    Raises:
        KeyError: ``provider`` has no built-in entry.
    """
    table = _table_for(provider)
    if table is None:
        raise KeyError(provider)
    return _endpoint(table, **fields)


def offline_endpoint(id: str = "offline", **options: Any) -> STTEndpoint:
    """The endpoint of the built-in offline engine: on device, no network, free, English.

    Args:
        id: the endpoint id.
        **options: engine options (see ``sttrouter.providers.offline``), stored in its
            connection.
    """
    return builtin_endpoint("offline", id=id, connection=ConnectionConfig(options=options))


def _vendor_endpoint(
    provider: str,
    id: str,
    base_url: str | None,
    api_key_env: str | None,
    cost_per_hour: Decimal | str | float | None,
    options: Mapping[str, Any] | None,
    fields: dict[str, Any],
) -> STTEndpoint:
    builtin = builtin_endpoint(provider)
    defaults: dict[str, Any] = {
        "id": id,
        "location": Location.CLOUD if base_url is None else Location.SELF_HOSTED,
        "connection": ConnectionConfig(
            base_url=base_url,
            api_key_env=api_key_env if api_key_env is not None else builtin.connection.api_key_env,
            options=builtin.connection.options if options is None else options,
        ),
    }
    if cost_per_hour is not None:
        defaults["cost_per_hour"] = cost_per_hour
    defaults.update(fields)
    return builtin_endpoint(provider, **defaults)


def deepgram_endpoint(
    id: str = "deepgram",
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    cost_per_hour: Decimal | str | float | None = None,
    options: Mapping[str, Any] | None = None,
    **fields: Any,
) -> STTEndpoint:
    """An :class:`STTEndpoint` for Deepgram, from the built-in ``deepgram`` entry.

    Args:
        id: the endpoint id.
        base_url: a self-hosted Deepgram or a fake server; ``None`` for ``api.deepgram.com``.
        api_key_env: the environment variable holding the key (``DEEPGRAM_API_KEY``).
        cost_per_hour: price per hour of audio (Nova-3's list price by default).
        options: listen options (see ``sttrouter.providers.deepgram``).
        **fields: any other :class:`STTEndpoint` field.
    """
    return _vendor_endpoint("deepgram", id, base_url, api_key_env, cost_per_hour, options, fields)


def assemblyai_endpoint(
    id: str = "assemblyai",
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    cost_per_hour: Decimal | str | float | None = None,
    options: Mapping[str, Any] | None = None,
    **fields: Any,
) -> STTEndpoint:
    """An :class:`STTEndpoint` for AssemblyAI, from the built-in ``assemblyai`` entry.

    Args:
        id: the endpoint id.
        base_url: one host serving ``/v3/ws`` and ``/v2/...`` (a proxy or a fake server);
            ``None`` for AssemblyAI's own hosts.
        api_key_env: the environment variable holding the key (``ASSEMBLYAI_API_KEY``).
        cost_per_hour: price per hour of audio (Universal-Streaming's list price by default).
        options: see ``sttrouter.providers.assemblyai``.
        **fields: any other :class:`STTEndpoint` field.
    """
    return _vendor_endpoint("assemblyai", id, base_url, api_key_env, cost_per_hour, options, fields)
