"""The gateway application: routes, auth, readiness, health, metrics and limits.

An ASGI app (Starlette, served by uvicorn: one app serves the WebSocket protocol and the
HTTP endpoints, and both are well-kept, widely deployed and fast enough — see
``docs/gateway.md``) in front of a *backend*: any :class:`~sttrouter.service.STTService`
factory, one fresh service per session (the offline engine, a GLM-ASR server through
:class:`~sttrouter.providers.glm_server.GLMServerSTTService`, GLM-ASR in-process...).

Routes:

* ``WS /v1/audio/stream`` — the protocol of :mod:`sttrouter.gateway.protocol`
  (:mod:`sttrouter.gateway.websocket`);
* ``POST /v1/audio/transcriptions`` — OpenAI's transcription API: multipart audio in;
  ``json``, ``text``, ``verbose_json``, ``srt``, ``vtt`` or OpenAI's SSE events out
  (:mod:`sttrouter.gateway.http`);
* ``GET /health`` (the process is up), ``GET /ready`` (the backend answers its probe and has
  not failed for its configuration; 503 with the reason otherwise),
  ``GET /metrics`` (Prometheus text), ``GET /v1/models`` (the model names a request may ask
  for). Unknown paths and methods get OpenAI-shaped JSON errors (404, 405).

Engine work never runs on the event loop: engines run their blocking calls in threads, and
the server bounds that pool (``engine_threads``, one per core by default) and admits work in
front of it — concurrent sessions (``max_sessions``) and HTTP transcriptions
(``max_requests``) beyond the limit are refused at once (``RATE_LIMIT_EXCEEDED``, HTTP 503
with ``Retry-After``), never queued without limit. Upload parsing and decoding run in a
thread too.

Safety: a Bearer token (compared in constant time) when one is configured; limits on the
WebSocket message size, audio frame duration, audio buffered per session, start/idle
timeouts and session length, concurrent sessions and upload size. Audio lives in memory
only; the access log (logger ``sttrouter.gateway.access``, one JSON object a line) carries
method, path, status, duration and session ids, never audio, transcripts or query strings.

Time: every deadline, timestamp and wait of the server runs on its injected
:class:`~sttrouter.clock.Clock` (the system clock by default), so tests drive it with
``sttrouter.testing.FakeClock``.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.errors import (
    AudioFormatError,
    CallerError,
    MissingDependency,
    STTError,
    UnsupportedOption,
)
from sttrouter.gateway import http, websocket
from sttrouter.gateway import protocol as gw
from sttrouter.gateway.metrics import GatewayMetrics
from sttrouter.service import STTService
from sttrouter.wire import openai as wire

__all__ = ["Backend", "GatewayConfig", "GatewayServer"]

Backend = Callable[[gw.StreamConfig], STTService]
"""Makes a fresh service for one session (or one HTTP transcription). A backend object with
an ``async aclose()`` method is closed when the server shuts down."""

access_log = logging.getLogger("sttrouter.gateway.access")
log = logging.getLogger(__name__)


def _cores() -> int:
    return max(2, os.cpu_count() or 2)


@attrs.frozen
class GatewayConfig:
    """Limits and credentials of a gateway.

    Attributes:
        token: when set, clients must send ``Authorization: Bearer <token>``.
        max_sessions: concurrent streaming sessions; more get ``RATE_LIMIT_EXCEEDED``.
        max_message_bytes: largest WebSocket message; bigger ones close the socket (1009).
        max_frame_seconds: longest audio frame accepted (the protocol says 500 ms).
        max_buffer_seconds: audio a session may have waiting for its backend. When it is
            full the server stops reading that socket, so TCP slows a client that sends
            faster than the engine takes audio: every frame is transcribed.
        max_buffer_wait_seconds: how long a frame waits for room while the engine takes no
            audio at all (a stalled engine); only then is it dropped with
            ``BUFFER_OVERFLOW``. Any progress of the engine restarts the wait.
        max_upload_bytes: largest ``/v1/audio/transcriptions`` body (OpenAI's 25 MiB).
        model: the model name of the backend (``/v1/models``; requests may name it).
        ready_cache_seconds: how long a ``/ready`` probe result is reused.
        start_timeout_seconds: a connection that sends no ``start`` within this time gets
            an ``INVALID_MESSAGE`` error and is closed (it holds a session slot).
        idle_timeout_seconds: a started session that receives nothing (audio, ping) for
            this long is ended: its last results are sent and it is closed.
        max_session_seconds: the longest a session may stay open; then it is ended the same
            way.
        max_requests: HTTP transcriptions running at once; more get 503 with
            ``Retry-After``.
        engine_threads: threads for engines' blocking work (decoding); ``None`` leaves the
            async library's default.
        retry_after_seconds: the ``Retry-After`` a refused request is given.
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
    start_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0
    max_session_seconds: float = 4 * 3600.0
    max_requests: int = attrs.field(factory=lambda: 2 * _cores())
    engine_threads: int | None = attrs.field(factory=_cores)
    retry_after_seconds: int = 1


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
        models: more model names a request may ask for, each with its backend (e.g. one
            per endpoint of a registry); ``config.model`` always names ``backend``.
    """

    def __init__(
        self,
        backend: Backend,
        config: GatewayConfig | None = None,
        *,
        clock: Clock | None = None,
        models: Mapping[str, Backend] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.models: dict[str, Backend] = {self.config.model: backend, **(models or {})}
        self._epoch = time.time() - self.clock.now()  # wall time at the clock's zero
        self.metrics = GatewayMetrics()
        self.active = 0
        self.requests = 0
        self._ids = itertools.count(1)
        self._ready: tuple[float, bool, str] | None = None
        self._broken: str | None = None
        self.app = self._build()

    def server_time(self) -> float:
        """Seconds since the epoch, advanced by the server's clock (a pong's ``server_time``)."""
        return self._epoch + self.clock.now()

    def next_session_id(self) -> int:
        return next(self._ids)

    def backend_failed(self, exc: STTError) -> None:
        """Note a backend failure: one that says the backend is misconfigured (a missing
        model, a bad option) makes ``/ready`` answer 503 with its message until the backend
        works again."""
        if isinstance(exc, CallerError) and not isinstance(
            exc,
            AudioFormatError | UnsupportedOption,  # the request's fault, not the backend's
        ):
            self._broken = exc.message

    def backend_worked(self) -> None:
        self._broken = None

    def _build(self) -> Any:
        apps = _starlette()
        from starlette.exceptions import HTTPException
        from starlette.routing import Route, WebSocketRoute

        async def http_error(request: Any, exc: HTTPException) -> Any:
            return http.error_response(self, exc.status_code, str(exc.detail), headers=exc.headers)

        async def crash(request: Any, exc: Exception) -> Any:
            log.exception("request failed: %s", type(exc).__name__)
            return http.error_response(self, 500, "the gateway failed on its side", "server_error")

        return _AccessLog(
            apps.Starlette(
                lifespan=self._lifespan,
                exception_handlers={HTTPException: http_error, Exception: crash},
                routes=self._routes(Route, WebSocketRoute),
            )
        )

    def _routes(self, Route: Any, WebSocketRoute: Any) -> list[Any]:
        return [
            WebSocketRoute("/v1/audio/stream", self._stream),
            Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/ready", self._readiness, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self.bound_engine_threads()
        yield
        await self.aclose()

    def bound_engine_threads(self) -> None:
        """Size the worker-thread pool engines run their blocking calls in (this loop's)."""
        if self.config.engine_threads is not None:
            import anyio.to_thread

            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = self.config.engine_threads

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
            except STTError as exc:
                self._ready = (now, False, f"{type(exc).__name__}: {exc.message}")
            except Exception as exc:
                self._ready = (now, False, type(exc).__name__)
        _, ok, why = self._ready
        if ok and self._broken is not None:
            ok, why = False, self._broken
        # routing state shared across replicas: its trouble is reported, not fatal (routing
        # goes on from the local view)
        state = getattr(self.backend, "state_status", None)
        extra = {"state": state()} if callable(state) else {}
        if ok:
            return JSONResponse({"status": "ready", **extra})
        return JSONResponse({"status": "not_ready", "reason": why, **extra}, status_code=503)

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
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "sttrouter"}
                    for name in self.models
                ],
            }
        )


class _AccessLog:
    """ASGI middleware: one JSON line per request or WebSocket session on
    ``sttrouter.gateway.access`` — method, path (never the query string, which may hold a
    token), status or close code, milliseconds, client address. No audio, no text."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "websocket.close":
                status.append(message.get("code", 1000))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            client = scope.get("client") or ("", 0)
            record = {
                "kind": kind,
                "method": scope.get("method", "GET"),
                "path": scope.get("path", ""),
                "status": status[0] if status else None,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "client": client[0],
            }
            access_log.info(json.dumps(record, separators=(",", ":")))
