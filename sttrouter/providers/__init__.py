"""Engine adapters, one module per engine, and the factory that builds one for an endpoint.

Adapters import their optional dependencies inside their module, so importing
``sttrouter.providers`` costs nothing; :func:`create_service` imports only the adapter the
endpoint needs and raises :class:`~sttrouter.errors.MissingDependency` naming the extra when
its SDK is not installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint, register_provider_kind
from sttrouter.errors import ConfigError
from sttrouter.service import STTService

__all__ = ["EngineFactory", "create_service", "register_provider"]

EngineFactory = Callable[..., STTService]
"""``factory(endpoint, *, clock=None, **options) -> STTService``."""

_BUILTIN: dict[str, str] = {
    "offline": "sttrouter.providers.offline:OfflineSTTService",
    "deepgram": "sttrouter.providers.deepgram:DeepgramSTTService",
    "assemblyai": "sttrouter.providers.assemblyai:AssemblyAISTTService",
    "glm_server": "sttrouter.providers.glm_server:GLMServerSTTService",
    "glm_local": "sttrouter.providers.glm_local:GLMLocalSTTService",
}
_custom: dict[str, EngineFactory] = {}


def register_provider(kind: str, factory: EngineFactory, *, replace: bool = False) -> None:
    """Register a custom engine: endpoints with ``provider = kind`` validate (in code and in
    TOML) and :func:`create_service` builds them with ``factory``.

    This is the one way to add an engine. ``factory`` is called as
    ``factory(endpoint, clock=clock, **options)`` and returns an
    :class:`~sttrouter.service.STTService` (a :class:`~sttrouter.service.BaseSTTService`
    subclass whose ``__init__`` takes ``(endpoint, *, clock=None)`` fits as it is).

    Args:
        kind: the provider name, lower_snake_case.
        factory: builds one service for an endpoint.
        replace: allow registering a kind again (or over a built-in one) with another factory.

    Raises:
        ConfigError: ``kind`` is not lower_snake_case, or is already registered to another
            factory and ``replace`` is false.
    """
    taken = _custom.get(kind)
    if not replace and (kind in _BUILTIN or (taken is not None and taken is not factory)):
        raise ConfigError(
            f"provider kind {kind!r} is already registered; pass replace=True to replace it",
            field="provider",
        )
    register_provider_kind(kind)
    _custom[kind] = factory


def _load(path: str) -> EngineFactory:
    module, _, name = path.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module), name)
    return factory


def create_service(
    endpoint: STTEndpoint, *, clock: Clock | None = None, **options: Any
) -> STTService:
    """Build the adapter for ``endpoint`` (a fresh instance: one stream at a time each)."""
    factory = _custom.get(endpoint.provider)
    if factory is None:
        path = _BUILTIN.get(endpoint.provider)
        if path is None:
            hint = (
                "import sttrouter.testing to register the fake engine"
                if endpoint.provider == "fake"
                else "register one with sttrouter.register_provider(kind, factory)"
            )
            raise ConfigError(
                f"no engine is registered for provider {endpoint.provider!r}; {hint}",
                endpoint=endpoint.id,
                field="provider",
            )
        factory = _load(path)
    return factory(endpoint, clock=clock, **options)
