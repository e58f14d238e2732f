"""sttrouter inside voice-agent frameworks.

* :mod:`sttrouter.integrations.livekit` — an ``stt.STT`` for LiveKit Agents 1.8
  (``pip install "sttrouter[livekit]"``).
* :mod:`sttrouter.integrations.pipecat` — an ``STTService`` for Pipecat 1.14
  (``pip install "sttrouter[pipecat]"``).

Each plugin is a thin face over a :class:`~sttrouter.RoutingContext`: every stream the
framework opens becomes one routed session, so a failover replays the audio the failed engine
had not finalised instead of dropping it. ``import sttrouter`` imports neither framework;
import the plugin module you need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sttrouter.context import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AuthenticationFailed,
    CallerError,
    EndpointMisconfigured,
    QuotaExceeded,
    RateLimited,
    STTError,
)
from sttrouter.panel.device import Conditions
from sttrouter.service import STTService

__all__ = ["SessionSource", "http_status", "open_session"]

SessionSource = Callable[[], STTService]
"""Makes the service for one framework stream. Usually the plugin asks its
:class:`~sttrouter.RoutingContext` for a routed session; any factory of fresh
:class:`~sttrouter.STTService` instances works too (one instance per stream)."""


def open_session(
    source: RoutingContext | SessionSource,
    *,
    language: str | None = None,
    conditions: Conditions | None = None,
    chain: Sequence[STTEndpoint | str] | None = None,
) -> STTService:
    """The service for one stream: a routed session of ``source`` when it is a routing
    context (deciding for ``conditions`` and ``language``, or along ``chain``), else
    ``source()``."""
    if isinstance(source, RoutingContext):
        return source.session(conditions, language=language, chain=chain)
    return source()


def http_status(error: STTError) -> int | None:
    """The HTTP status that says the same as ``error`` to a framework that classifies
    failures by status (``None``: a connection-level failure with no status)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return None


_STATUS: tuple[tuple[type[STTError], int], ...] = (
    (AuthenticationFailed, 401),
    (QuotaExceeded, 402),
    (RateLimited, 429),
    (EndpointMisconfigured, 400),
    (CallerError, 400),
)
