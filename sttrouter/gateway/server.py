"""The streaming gateway: UnaMentis' ``/v1/audio/stream`` plus an OpenAI-compatible endpoint.

An ASGI app (Starlette, served by uvicorn: one app serves the WebSocket protocol and the
HTTP endpoints, and both are well-kept, widely deployed and fast enough — see
``docs/gateway.md``) in front of a *backend*: any :class:`~sttrouter.service.STTService`
factory, one fresh service per session (the offline engine, a GLM-ASR server through
:class:`~sttrouter.providers.glm_server.GLMServerSTTService`, GLM-ASR in-process...).

Routes:

* ``WS /v1/audio/stream`` — the protocol of :mod:`sttrouter.gateway.protocol`;
* ``POST /v1/audio/transcriptions`` — multipart WAV/FLAC in, ``json``/``text``/SSE out
  (vLLM's chunk shape);
* ``GET /health`` (the process is up), ``GET /ready`` (the backend answers its probe),
  ``GET /metrics`` (Prometheus text), ``GET /v1/models``.

Safety: a Bearer token (compared in constant time) when one is configured; limits on the
WebSocket message size, audio frame duration, audio buffered per session
(``BUFFER_OVERFLOW``), concurrent sessions (``RATE_LIMIT_EXCEEDED``) and upload size. Audio
lives in memory only; logs carry session ids, durations and error codes, never audio or text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs

from sttrouter.audio import ENGINE_FORMAT, AudioFormat, Encoding
from sttrouter.errors import (
    AudioFormatError,
    CallerError,
    MissingDependency,
    RateLimited,
    STTError,
)
from sttrouter.gateway import protocol as gw
from sttrouter.gateway.metrics import GatewayMetrics
from sttrouter.results import STTResult
from sttrouter.service import STTService, stream_transcribe
from sttrouter.wire import openai as wire

__all__ = ["Backend", "GatewayConfig", "GatewayServer"]

log = logging.getLogger(__name__)

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


def _error_code(exc: STTError) -> gw.ErrorCode:
    if isinstance(exc, RateLimited):
        return gw.ErrorCode.RATE_LIMIT_EXCEEDED
    if isinstance(exc, AudioFormatError):
        return gw.ErrorCode.AUDIO_FORMAT_ERROR
    if isinstance(exc, CallerError):
        return gw.ErrorCode.INTERNAL_ERROR
    return gw.ErrorCode.MODEL_UNAVAILABLE


class GatewayServer:
    """The gateway application. ``app`` is the ASGI app; serve it with uvicorn or
    :class:`sttrouter.gateway._runner.AppServer`.

    Args:
        backend: makes one service per session.
        config: limits and token.
    """

    def __init__(self, backend: Backend, config: GatewayConfig | None = None) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.metrics = GatewayMetrics()
        self.active = 0
        self._ids = itertools.count(1)
        self._ready: tuple[float, bool, str] | None = None
        self.app = self._build()

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

    # -- HTTP --------------------------------------------------------------------------------
    async def _health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def _readiness(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        now = time.monotonic()
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
            return self._http_error(401, "missing or wrong bearer token", "invalid_api_key")
        return PlainTextResponse(
            self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if not self.authorized(request.headers, request.query_params):
            return self._http_error(401, "missing or wrong bearer token", "invalid_api_key")
        return JSONResponse(
            {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
        )

    def _http_error(self, status: int, message: str, code: str | int | None = None) -> Any:
        from starlette.responses import JSONResponse

        self.metrics.error(f"http_{status}")
        return JSONResponse(
            wire.error_body(message, type=_error_type(status), code=code or status),
            status_code=status,
        )

    async def _transcriptions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

        self.metrics.request("transcription")
        if not self.authorized(request.headers, request.query_params):
            return self._http_error(401, "missing or wrong bearer token", "invalid_api_key")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.max_upload_bytes:
            return self._http_error(413, f"upload is over {self.config.max_upload_bytes} bytes")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.config.max_upload_bytes:
                return self._http_error(413, f"upload is over {self.config.max_upload_bytes} bytes")
        try:
            fields, files = wire.parse_multipart(
                request.headers.get("content-type", ""), bytes(body)
            )
            req = wire.TranscriptionRequest.from_fields(fields)
            upload = files.get("file")
            if upload is None:
                raise ValueError("field 'file' is required")
            pcm, fmt = _decode_upload(upload.data)
        except ValueError as exc:
            return self._http_error(400, str(exc))
        if req.response_format not in ("json", "text"):
            return self._http_error(
                400, f"response_format {req.response_format!r} is not supported; use json or text"
            )
        seconds = fmt.seconds(len(pcm))
        self.metrics.audio(seconds)
        service = self.backend(gw.StreamConfig(language=req.language))
        if req.stream:
            return StreamingResponse(self._sse(service, pcm, fmt), media_type="text/event-stream")
        started = time.monotonic()
        try:
            transcript = await service.transcribe(pcm, fmt)
        except STTError as exc:
            return self._backend_error(exc)
        self.metrics.latency(time.monotonic() - started)
        if req.response_format == "text":
            return PlainTextResponse(transcript.text)
        return JSONResponse(wire.transcription_body(transcript.text, seconds))

    def _backend_error(self, exc: STTError) -> Any:
        log.warning("backend failed a transcription: %s", type(exc).__name__)
        if isinstance(exc, RateLimited):
            return self._http_error(429, "the backend is busy; retry later")
        if isinstance(exc, AudioFormatError):
            return self._http_error(400, exc.message)
        return self._http_error(503, f"the backend failed: {type(exc).__name__}")

    async def _sse(self, service: STTService, pcm: bytes, fmt: AudioFormat) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[STTResult | None] = asyncio.Queue()
        failure: list[STTError] = []

        async def run() -> None:
            try:
                await stream_transcribe(
                    service,
                    pcm,
                    fmt,
                    on_result=lambda r: queue.put_nowait(r) if r.is_final else None,
                )
            except STTError as exc:
                failure.append(exc)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        first = True
        try:
            while (result := await queue.get()) is not None:
                text = result.transcript.strip()
                if text:
                    yield wire.sse_event(wire.stream_chunk("vllm", text if first else " " + text))
                    first = False
            await task
            if failure:
                log.warning(
                    "backend failed a streamed transcription: %s", type(failure[0]).__name__
                )
                self.metrics.error("http_stream")
                yield wire.sse_event(
                    wire.error_body(f"the backend failed: {type(failure[0]).__name__}", code=503)
                )
            else:
                yield wire.sse_event(wire.stream_chunk("vllm", finish_reason="stop"))
            yield wire.sse_done()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # -- the streaming protocol -------------------------------------------------------------
    async def _stream(self, ws: Any) -> None:
        await ws.accept()
        sid = next(self._ids)
        sender = _Sender(ws)
        if not self.authorized(ws.headers, ws.query_params):
            self.metrics.error(gw.ErrorCode.AUTHENTICATION_FAILED)
            await sender.error(gw.ErrorCode.AUTHENTICATION_FAILED, "missing or wrong bearer token")
            await sender.close(1008)
            return
        if self.active >= self.config.max_sessions:
            self.metrics.error(gw.ErrorCode.RATE_LIMIT_EXCEEDED)
            await sender.error(
                gw.ErrorCode.RATE_LIMIT_EXCEEDED,
                f"the gateway serves at most {self.config.max_sessions} sessions; retry later",
            )
            await sender.close(1013)
            return
        self.active += 1
        self.metrics.active_sessions = self.active
        self.metrics.request("stream")
        log.info("session %d opened", sid)
        session = _Session(self, sender, sid)
        try:
            await session.run()
        finally:
            await session.cleanup()
            self.active -= 1
            self.metrics.active_sessions = self.active
            log.info("session %d closed after %.1fs of audio", sid, session.audio_seconds)


def _error_type(status: int) -> str:
    return {401: "AuthenticationError", 413: "BadRequestError", 429: "RateLimitError"}.get(
        status, "BadRequestError" if status < 500 else "ServiceUnavailableError"
    )


def _decode_upload(data: bytes) -> tuple[bytes, AudioFormat]:
    if data[:4] == b"RIFF":
        pcm, rate, channels = wire.wav_pcm(data)
        if not pcm:
            raise ValueError("the WAV file holds no samples")
        return pcm, AudioFormat(rate, channels, Encoding.PCM_S16LE)
    try:
        import numpy as np
        import soundfile
    except ImportError as exc:  # pragma: no cover - soundfile ships with the server extra
        raise ValueError("only WAV uploads are supported without soundfile") from exc
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise ValueError(f"cannot decode the upload ({exc}); send WAV or FLAC") from exc
    if not samples.size:
        raise ValueError("the audio file holds no samples")
    fmt = AudioFormat(int(rate), int(samples.shape[1]), Encoding.PCM_F32LE)
    return np.ascontiguousarray(samples, dtype="<f4").tobytes(), fmt


class _Sender:
    """Serialises sends on one WebSocket; a closed socket swallows further sends."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: gw.ServerMessage) -> None:
        if self.closed:
            return
        async with self.lock:
            try:
                await self.ws.send_text(gw.serialize(message))
            except Exception:  # the client went away
                self.closed = True

    async def error(self, code: gw.ErrorCode, message: str) -> None:
        await self.send(gw.ErrorMessage.of(code, message))

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self.closed = True
        async with self.lock:
            with contextlib.suppress(Exception):
                await self.ws.close(code)


class _Session:
    """One client session of the streaming protocol."""

    def __init__(self, server: GatewayServer, sender: _Sender, sid: int) -> None:
        self.server = server
        self.cfg = server.config
        self.sender = sender
        self.ws = sender.ws
        self.sid = sid
        self.service: STTService | None = None
        self.config = gw.StreamConfig()
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.limit = ENGINE_FORMAT.bytes_for(self.cfg.max_buffer_seconds)
        self.max_frame = ENGINE_FORMAT.bytes_for(self.cfg.max_frame_seconds)
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.ending = False
        self.tasks: list[asyncio.Task[None]] = []
        self.audio_seconds = 0.0
        self.failed = False

    async def run(self) -> None:
        while not self.sender.closed and not self.failed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            binary = message.get("bytes") is not None
            data = message["bytes"] if binary else message.get("text", "")
            try:
                parsed = gw.parse_client(data, binary=binary)
            except gw.ProtocolError as exc:
                await self._error(exc.code, str(exc))
                continue
            if isinstance(parsed, gw.Ping):
                await self.sender.send(gw.Pong(parsed.timestamp, time.time()))
            elif isinstance(parsed, gw.Audio):
                await self._audio(parsed.pcm)
            elif isinstance(parsed, gw.Start):
                await self._start(parsed.config)
            elif self.service is None:  # end before start: nothing to do
                await self.sender.close(1000)
                return
            else:
                await self._end()
                return

    async def _error(self, code: gw.ErrorCode, message: str) -> None:
        self.server.metrics.error(code)
        log.info("session %d: %s", self.sid, code)
        await self.sender.error(code, message)

    async def _start(self, config: gw.StreamConfig) -> None:
        if self.service is not None:
            await self._error(gw.ErrorCode.INVALID_MESSAGE, "the session has already started")
            return
        self.config = config
        service = self.server.backend(config)
        try:
            results = await service.start_streaming(ENGINE_FORMAT)
        except STTError as exc:
            await self._fatal(exc)
            return
        self.service = service
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._feed()), loop.create_task(self._pump(results))]

    async def _audio(self, pcm: bytes) -> None:
        if self.service is None:
            await self._error(gw.ErrorCode.INVALID_MESSAGE, "send a start message before audio")
            return
        if len(pcm) > self.max_frame:
            await self._error(
                gw.ErrorCode.AUDIO_FORMAT_ERROR,
                f"audio frame of {len(pcm) // 32} ms is longer than "
                f"{self.cfg.max_frame_seconds * 1000:.0f} ms; send 20-500 ms frames",
            )
            return
        if self.queued + len(pcm) > self.limit and not await self._room_for(len(pcm)):
            await self._error(
                gw.ErrorCode.BUFFER_OVERFLOW,
                f"more than {self.cfg.max_buffer_seconds:g}s of audio is waiting for the "
                "engine; a frame was dropped — send audio in real time",
            )
            return
        self.audio_seconds += len(pcm) / ENGINE_FORMAT.bytes_per_second
        self.server.metrics.audio(len(pcm) / ENGINE_FORMAT.bytes_per_second)
        self.queue.append(pcm)
        self.queued += len(pcm)
        self.wake.set()

    async def _room_for(self, nbytes: int) -> bool:
        """Wait up to ``max_buffer_wait_seconds`` for the buffer to take ``nbytes`` more."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.max_buffer_wait_seconds
        while self.queued + nbytes > self.limit:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.failed:
                return False
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), remaining)
        return True

    async def _feed(self) -> None:
        assert self.service is not None
        try:
            while True:
                while self.queue:
                    chunk = self.queue.popleft()
                    await self.service.send_audio(chunk)
                    self.queued -= len(chunk)
                    self.room.set()
                if self.ending:
                    await self.service.stop_streaming()
                    return
                self.wake.clear()
                await self.wake.wait()
        except STTError as exc:
            await self._fatal(exc)

    async def _pump(self, results: AsyncIterator[STTResult]) -> None:
        metrics = self.server.metrics
        try:
            async for r in results:
                if not r.is_final and not self.config.interim_results:
                    continue
                if r.latency is not None:
                    metrics.latency(r.latency)
                await self.sender.send(gw.Transcript.from_result(r))
        except STTError as exc:
            await self._fatal(exc)

    async def _fatal(self, exc: STTError) -> None:
        if self.failed:
            return
        self.failed = True
        code = _error_code(exc)
        log.warning("session %d: backend failed (%s)", self.sid, type(exc).__name__)
        await self._error(code, f"the engine failed: {type(exc).__name__}")
        await self.sender.close(1013 if code is gw.ErrorCode.RATE_LIMIT_EXCEEDED else 1011)
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _end(self) -> None:
        self.ending = True
        self.wake.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.close(1011 if self.failed else 1000)

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.service is not None and self.service.is_streaming:
            await self.service.cancel_streaming()
        self.queue.clear()
        await self.sender.close(1011 if self.failed else 1000)
