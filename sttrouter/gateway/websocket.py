"""The gateway's ``WS /v1/audio/stream`` session (UnaMentis' streaming protocol).

One :class:`_Session` per connection: audio frames go into a bounded buffer that a feeder
task drains into the backend service; a pump task sends the service's results back.

Flow control: when the buffer (``max_buffer_seconds``) is full, the session stops reading
its socket until the engine has taken audio, so TCP slows a client that sends faster than
the engine transcribes, and every frame is transcribed. Only when the engine takes no audio
at all for ``max_buffer_wait_seconds`` (server clock) is a frame dropped with
``BUFFER_OVERFLOW``.

``start`` negotiates the audio: ``sample_rate``, ``channels`` and ``encoding`` (PCM16 or
float32 LE) are converted to the engine's format; ``language``, ``interim_results`` and
``punctuate: false`` go to the engine as stream options, honoured or refused. A refused
``start`` gets one error and a close — never an error per following frame.

Timeouts on the server clock: no ``start`` within ``start_timeout_seconds`` → an
``INVALID_MESSAGE`` error and close 1008; nothing received for ``idle_timeout_seconds`` or a
session older than ``max_session_seconds`` → the session ends as on ``end`` (last finals,
close 1000 with the reason). Engine errors are answered with the code of
:data:`sttrouter.wire.gateway.ERROR_TABLE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sttrouter.audio import ENGINE_FORMAT, AudioFormat
from sttrouter.clock import fail_after
from sttrouter.errors import (
    AudioFormatError,
    CallerError,
    ConfigError,
    STTError,
    UnsupportedOption,
)
from sttrouter.gateway import protocol as gw
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult
from sttrouter.service import STTService

if TYPE_CHECKING:
    from sttrouter.gateway.app import GatewayServer

__all__ = ["serve_session"]

log = logging.getLogger(__name__)


async def serve_session(server: GatewayServer, ws: Any) -> None:
    """Accept one WebSocket, check its token and the session limit, run the session."""
    await ws.accept()
    sid = server.next_session_id()
    sender = _Sender(ws)
    if not server.authorized(ws.headers, ws.query_params):
        server.metrics.error(gw.ErrorCode.AUTHENTICATION_FAILED)
        await sender.error(gw.ErrorCode.AUTHENTICATION_FAILED, "missing or wrong bearer token")
        await sender.close(1008)
        return
    limit = server.config.max_sessions
    if server.active >= limit:
        server.metrics.error(gw.ErrorCode.RATE_LIMIT_EXCEEDED)
        await sender.error(
            gw.ErrorCode.RATE_LIMIT_EXCEEDED,
            f"the gateway serves at most {limit} sessions; retry after "
            f"{server.config.retry_after_seconds} s",
        )
        await sender.close(1013)
        return
    server.active += 1
    server.metrics.active_sessions = server.active
    server.metrics.request("stream")
    log.info("session %d opened", sid)
    session = _Session(server, sender, sid)
    try:
        await session.run()
    finally:
        await session.cleanup()
        server.active -= 1
        server.metrics.active_sessions = server.active
        log.info("session %d closed after %.1fs of audio", sid, session.audio_seconds)


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

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        async with self.lock:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)


_CUT = b""
"""In the audio queue: call the engine's ``finalize`` here."""


class _Session:
    """One client session of the streaming protocol."""

    def __init__(self, server: GatewayServer, sender: _Sender, sid: int) -> None:
        self.server = server
        self.cfg = server.config
        self.clock = server.clock
        self.sender = sender
        self.ws = sender.ws
        self.sid = sid
        self.service: STTService | None = None
        self.config = gw.StreamConfig()
        self.fmt = ENGINE_FORMAT
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self._limits(ENGINE_FORMAT)
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.ending = False
        self.tasks: list[asyncio.Task[None]] = []
        self.audio_seconds = 0.0
        self.failed = False
        self.opened = self.clock.now()
        self.last_message = self.opened
        self.expired: str | None = None

    def _limits(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self.limit = fmt.bytes_for(self.cfg.max_buffer_seconds)
        self.max_frame = fmt.bytes_for(self.cfg.max_frame_seconds)

    # -- the receive loop ---------------------------------------------------------------------
    async def run(self) -> None:
        main = asyncio.current_task()
        assert main is not None
        watchdog = asyncio.get_running_loop().create_task(self._watch(main))
        try:
            await self._receive_loop()
        except asyncio.CancelledError:
            if self.expired is None:
                raise
            main.uncancel()
            await self._expire(self.expired)
        finally:
            watchdog.cancel()
            with contextlib.suppress(BaseException):
                await watchdog

    async def _receive_loop(self) -> None:
        while not self.sender.closed and not self.failed:
            message = await self.ws.receive()
            self.last_message = self.clock.now()
            if message["type"] == "websocket.disconnect":
                return
            binary = message.get("bytes") is not None
            data = message["bytes"] if binary else message.get("text", "")
            try:
                parsed = gw.parse_client(data, binary=binary)
            except gw.ProtocolError as exc:
                await self._error(exc.code, str(exc))
                if exc.message_type == "start" and self.service is None:
                    await self.sender.close(1008, "start refused")
                    return
                continue
            if isinstance(parsed, gw.Ping):
                await self.sender.send(gw.Pong(parsed.timestamp, self.server.server_time()))
            elif isinstance(parsed, gw.Audio):
                await self._audio(parsed.pcm)
            elif isinstance(parsed, gw.Start):
                await self._start(parsed.config)
            elif isinstance(parsed, gw.Finalize):
                await self._finalize()
            elif self.service is None:  # end before start: nothing to do
                await self.sender.close(1000)
                return
            else:
                await self._end()
                return

    async def _watch(self, main: asyncio.Task[Any]) -> None:
        """Cancel the receive loop when a timeout of the session expires."""
        cfg = self.cfg
        while not self.ending:
            if self.service is None:
                deadline, why = self.opened + cfg.start_timeout_seconds, "start"
            else:
                deadline, why = self.last_message + cfg.idle_timeout_seconds, "idle"
            if self.opened + cfg.max_session_seconds < deadline:
                deadline, why = self.opened + cfg.max_session_seconds, "max_duration"
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                self.expired = why
                main.cancel()
                return
            await self.clock.sleep(remaining)

    async def _expire(self, why: str) -> None:
        cfg = self.cfg
        log.info("session %d: %s timeout", self.sid, why)
        self.server.metrics.error(f"timeout_{why}")
        if why == "start":
            await self._error(
                gw.ErrorCode.INVALID_MESSAGE,
                f"no start message within {cfg.start_timeout_seconds:g} s; closing",
            )
            await self.sender.close(1008, "start timeout")
            return
        reason = (
            f"idle for {cfg.idle_timeout_seconds:g} s"
            if why == "idle"
            else f"session longer than {cfg.max_session_seconds:g} s"
        )
        await self._end(reason)

    async def _error(self, code: gw.ErrorCode, message: str) -> None:
        self.server.metrics.error(code)
        log.info("session %d: %s", self.sid, code)
        await self.sender.error(code, message)

    # -- messages -------------------------------------------------------------------------------
    async def _start(self, config: gw.StreamConfig) -> None:
        if self.service is not None:
            await self._error(gw.ErrorCode.INVALID_MESSAGE, "the session has already started")
            return
        try:
            fmt = AudioFormat(config.sample_rate, config.channels, config.encoding)
            options = StreamOptions(
                language=config.language,
                interim_results=config.interim_results,
                punctuate=None if config.punctuate else False,
            )
        except (AudioFormatError, ConfigError) as exc:
            code = (
                gw.ErrorCode.AUDIO_FORMAT_ERROR
                if isinstance(exc, AudioFormatError)
                else gw.ErrorCode.INVALID_MESSAGE
            )
            await self._refuse(code, exc.message)
            return
        self.config = config
        self._limits(fmt)
        service = self.server.backend(config)
        try:
            results = await service.start_streaming(fmt, options)
        except UnsupportedOption as exc:
            await self._refuse(gw.ErrorCode.INVALID_MESSAGE, exc.message)
            return
        except AudioFormatError as exc:
            await self._refuse(gw.ErrorCode.AUDIO_FORMAT_ERROR, exc.message)
            return
        except STTError as exc:
            await self._fatal(exc)
            return
        self.service = service
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._feed()), loop.create_task(self._pump(results))]

    async def _refuse(self, code: gw.ErrorCode, message: str) -> None:
        """A ``start`` the session cannot serve: one error, then close."""
        self.failed = True
        await self._error(code, f"start refused: {message}")
        await self.sender.close(1008 if code is gw.ErrorCode.INVALID_MESSAGE else 1003)

    async def _finalize(self) -> None:
        """Queue a cut: the feeder calls the engine's ``finalize`` after the audio before it."""
        if self.service is None:
            await self._error(gw.ErrorCode.INVALID_MESSAGE, "send a start message first")
            return
        self.queue.append(_CUT)
        self.wake.set()

    async def _audio(self, pcm: bytes) -> None:
        if not pcm:
            return  # an empty frame carries nothing (and is the feeder's cut marker)
        if self.service is None:
            await self._error(gw.ErrorCode.INVALID_MESSAGE, "send a start message before audio")
            return
        if len(pcm) % self.fmt.frame_bytes:
            await self._error(
                gw.ErrorCode.AUDIO_FORMAT_ERROR,
                f"audio frame of {len(pcm)} bytes is not whole {self.fmt} frames",
            )
            return
        if len(pcm) > self.max_frame:
            await self._error(
                gw.ErrorCode.AUDIO_FORMAT_ERROR,
                f"audio frame of {self.fmt.seconds(len(pcm)) * 1000:.0f} ms is longer than "
                f"{self.cfg.max_frame_seconds * 1000:.0f} ms; send 20-500 ms frames",
            )
            return
        if self.queued + len(pcm) > self.limit and not await self._room_for(len(pcm)):
            if self.failed:
                return
            await self._error(
                gw.ErrorCode.BUFFER_OVERFLOW,
                f"the engine took no audio for {self.cfg.max_buffer_wait_seconds:g} s with "
                f"{self.cfg.max_buffer_seconds:g} s waiting; a frame was dropped",
            )
            return
        seconds = self.fmt.seconds(len(pcm))
        self.audio_seconds += seconds
        self.server.metrics.audio(seconds)
        self.queue.append(pcm)
        self.queued += len(pcm)
        self.wake.set()

    async def _room_for(self, nbytes: int) -> bool:
        """Wait for room for ``nbytes`` while the socket is not read (TCP paces the client).

        Gives up only when the engine takes no audio for ``max_buffer_wait_seconds``."""
        while self.queued + nbytes > self.limit:
            if self.failed:
                return False
            self.room.clear()
            try:
                async with fail_after(self.clock, self.cfg.max_buffer_wait_seconds):
                    await self.room.wait()
            except TimeoutError:
                return False
            self.last_message = self.clock.now()  # a paced client is not idle
        return True

    async def _feed(self) -> None:
        assert self.service is not None
        try:
            while True:
                while self.queue:
                    chunk = self.queue.popleft()
                    if chunk == _CUT:
                        await self.service.finalize()
                        continue
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
            self.server.backend_worked()
        except STTError as exc:
            await self._fatal(exc)

    async def _fatal(self, exc: STTError) -> None:
        if self.failed:
            return
        self.failed = True
        self.server.backend_failed(exc)
        self.room.set()  # a frame waiting for room gives up now
        code = gw.code_for(exc)
        log.warning("session %d: backend failed (%s)", self.sid, type(exc).__name__)
        if isinstance(exc, CallerError):  # the backend's configuration: say what is wrong
            await self._error(code, f"the engine is misconfigured: {exc.message}")
        else:
            await self._error(code, f"the engine failed: {type(exc).__name__}")
        await self.sender.close(1013 if code is gw.ErrorCode.RATE_LIMIT_EXCEEDED else 1011)
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _end(self, reason: str = "") -> None:
        self.ending = True
        self.wake.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.close(1011 if self.failed else 1000, reason)

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.service is not None and self.service.is_streaming:
            await self.service.cancel_streaming()
        self.service = None
        self.queue.clear()
        await self.sender.close(1011 if self.failed else 1000)
