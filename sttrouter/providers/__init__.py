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
    "fake": "sttrouter.testing:FakeSTTService",
}
_custom: dict[str, EngineFactory] = {}


def register_provider(kind: str, factory: EngineFactory) -> None:
    """Register a custom engine kind: endpoints with ``provider = kind`` use ``factory``."""
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
            raise ConfigError(
                f"no adapter is registered for provider {endpoint.provider!r}; "
                "call sttrouter.providers.register_provider first",
                endpoint=endpoint.id,
                field="provider",
            )
        factory = _load(path)
    return factory(endpoint, clock=clock, **options)
