"""The gateway's ``WS /v1/audio/stream`` session (UnaMentis' streaming protocol).

One :class:`_Session` per connection: audio frames go into a bounded buffer that a feeder
task drains into the backend service; a pump task sends the service's results back. When
the buffer is full a frame waits for room on the server's clock (the socket is not read
meanwhile, so TCP paces a fast client) and is dropped with ``BUFFER_OVERFLOW`` after
``max_buffer_wait_seconds``. Engine errors are answered with the code of
:data:`sttrouter.wire.gateway.ERROR_TABLE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import fail_after
from sttrouter.errors import STTError
from sttrouter.gateway import protocol as gw
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
            f"the gateway serves at most {limit} sessions; retry later",
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
        self.clock = server.clock
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
                await self.sender.send(gw.Pong(parsed.timestamp, self.server.server_time()))
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
        seconds = len(pcm) / ENGINE_FORMAT.bytes_per_second
        self.audio_seconds += seconds
        self.server.metrics.audio(seconds)
        self.queue.append(pcm)
        self.queued += len(pcm)
        self.wake.set()

    async def _room_for(self, nbytes: int) -> bool:
        """Wait up to ``max_buffer_wait_seconds`` (server clock) for room for ``nbytes``."""
        deadline = self.clock.now() + self.cfg.max_buffer_wait_seconds
        while self.queued + nbytes > self.limit:
            remaining = deadline - self.clock.now()
            if remaining <= 0 or self.failed:
                return False
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                async with fail_after(self.clock, remaining):
                    await self.room.wait()
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
        self.room.set()  # a frame waiting for room gives up now
        code = gw.code_for(exc)
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
