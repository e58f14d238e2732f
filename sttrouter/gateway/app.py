"""The gateway application: routes, auth, readiness, health, metrics and limits.

An ASGI app (Starlette, served by uvicorn: one app serves the WebSocket protocol and the
HTTP endpoints, and both are well-kept, widely deployed and fast enough — see
``docs/gateway.md``) in front of a *backend*: any :class:`~sttrouter.service.STTService`
factory, one fresh service per session (the offline engine, a GLM-ASR server through
:class:`~sttrouter.providers.glm_server.GLMServerSTTService`, GLM-ASR in-process...).

Routes:

* ``WS /v1/audio/stream`` — the protocol of :mod:`sttrouter.gateway.protocol`
  (:mod:`sttrouter.gateway.websocket`);
* ``POST /v1/audio/transcriptions`` — multipart WAV/FLAC in, ``json``/``text``/SSE out
  (:mod:`sttrouter.gateway.http`);
* ``GET /health`` (the process is up), ``GET /ready`` (the backend answers its probe),
  ``GET /metrics`` (Prometheus text), ``GET /v1/models``.

Safety: a Bearer token (compared in constant time) when one is configured; limits on the
WebSocket message size, audio frame duration, audio buffered per session
(``BUFFER_OVERFLOW``), concurrent sessions (``RATE_LIMIT_EXCEEDED``) and upload size. Audio
lives in memory only; logs carry session ids, durations and error codes, never audio or text.

Time: every deadline, timestamp and wait of the server runs on its injected
:class:`~sttrouter.clock.Clock` (the system clock by default), so tests drive it with
``sttrouter.testing.FakeClock``.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.errors import MissingDependency
from sttrouter.gateway import http, websocket
from sttrouter.gateway import protocol as gw
from sttrouter.gateway.metrics import GatewayMetrics
from sttrouter.service import STTService
from sttrouter.wire import openai as wire

__all__ = ["Backend", "GatewayConfig", "GatewayServer"]

Backend = Callable[[gw.StreamConfig], STTService]
"""Makes a fresh service for one session (or one HTTP transcription). A backend object with
an ``async aclose()`` method is closed when the server shuts down."""


@attrs.frozen
class GatewayConfig:
    """Limits and credentials of a gateway.

    Attributes:
        token: when set, clients must send ``Authorization: Bearer <token>``.
        max_sessions: concurrent streaming sessions; more get ``RATE_LIMIT_EXCEEDED``.
        max_message_bytes: largest WebSocket message; bigger ones close the socket (1009).
        max_frame_seconds: longest audio frame accepted (the protocol says 500 ms).
        max_buffer_seconds: audio a session may have waiting for its backend.
        max_buffer_wait_seconds: when that buffer is full, how long a frame waits for room
            (the socket is not read meanwhile, so TCP paces a client that sends faster than
            real time) before it is dropped with ``BUFFER_OVERFLOW``.
        max_upload_bytes: largest ``/v1/audio/transcriptions`` body.
        model: the model name ``/v1/models`` reports.
        ready_cache_seconds: how long a ``/ready`` probe result is reused.
    """

    token: str | None = None
    max_sessions: int = 100
    max_message_bytes: int = 1 << 20
    max_frame_seconds: float = gw.MAX_FRAME_SECONDS
    max_buffer_seconds: float = 10.0
    max_buffer_wait_seconds: float = 1.0
    max_upload_bytes: int = wire.MAX_UPLOAD_BYTES
    model: str = "sttrouter"
    ready_cache_seconds: float = 5.0


def _starlette() -> Any:
    try:
        import starlette.applications as apps
    except ImportError as exc:
        raise MissingDependency("starlette", "server") from exc
    return apps


class GatewayServer:
    """The gateway application. ``app`` is the ASGI app; serve it with uvicorn or
    :class:`sttrouter.gateway._runner.AppServer`.

    Args:
        backend: makes one service per session.
        config: limits and token.
        clock: deadlines, waits and timestamps run on it (the system clock by default).
    """

    def __init__(
        self,
        backend: Backend,
        config: GatewayConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._epoch = time.time() - self.clock.now()  # wall time at the clock's zero
        self.metrics = GatewayMetrics()
        self.active = 0
        self._ids = itertools.count(1)
        self._ready: tuple[float, bool, str] | None = None
        self.app = self._build()

    def server_time(self) -> float:
        """Seconds since the epoch, advanced by the server's clock (a pong's ``server_time``)."""
        return self._epoch + self.clock.now()

    def next_session_id(self) -> int:
        return next(self._ids)

    def _build(self) -> Any:
        apps = _starlette()
        from starlette.routing import Route, WebSocketRoute

        return apps.Starlette(
            lifespan=self._lifespan,
            routes=[
                WebSocketRoute("/v1/audio/stream", self._stream),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/ready", self._readiness, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ],
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        yield
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the backend holds (an HTTP pool); called when the server shuts down."""
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()

    # -- auth --------------------------------------------------------------------------------
    def authorized(self, headers: Any, query: Any) -> bool:
        """True when no token is configured or the request carries it (constant-time)."""
        if self.config.token is None:
            return True
        offered = ""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered = auth[7:].strip()
        elif query.get("token"):
            offered = query.get("token")  # allowed, but it ends up in access logs
        return hmac.compare_digest(offered.encode(), self.config.token.encode())

    # -- routes ------------------------------------------------------------------------------
    async def _stream(self, ws: Any) -> None:
        await websocket.serve_session(self, ws)

    async def _transcriptions(self, request: Any) -> Any:
        return await http.transcriptions(self, request)

    async def _health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def _readiness(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        now = self.clock.now()
        if self._ready is None or now - self._ready[0] > self.config.ready_cache_seconds:
            try:
                await self.backend(gw.StreamConfig()).probe()
                self._ready = (now, True, "ok")
            except Exception as exc:
                self._ready = (now, False, type(exc).__name__)
        _, ok, why = self._ready
        return JSONResponse({"status": "ready" if ok else why}, status_code=200 if ok else 503)

    async def _metrics(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        if not self.authorized(request.headers, request.query_params):
            return http.unauthorized(self)
        return PlainTextResponse(
            self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if not self.authorized(request.headers, request.query_params):
            return http.unauthorized(self)
        return JSONResponse(
            {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
        )
