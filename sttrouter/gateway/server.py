"""The gateway's public entry points, kept at their original import path.

The application lives in :mod:`sttrouter.gateway.app` (app, auth, readiness, health),
:mod:`sttrouter.gateway.http` (the OpenAI-compatible ``/v1/audio/transcriptions``) and
:mod:`sttrouter.gateway.websocket` (the ``/v1/audio/stream`` session).
"""

from sttrouter.gateway.app import Backend, GatewayConfig, GatewayServer

__all__ = ["Backend", "GatewayConfig", "GatewayServer"]
