"""A client of UnaMentis' streaming protocol (``/v1/audio/stream``), with reconnect and replay.

:class:`GatewayStream` is one stream: it re-chunks audio into binary frames, maps
``partial``/``final``/``error`` messages to results and typed errors, and when the connection
drops mid-stream it reconnects with exponential backoff (on the injected clock) and replays
the audio no final has covered yet, re-basing the new connection's results. The messages
themselves are in :mod:`sttrouter.gateway.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import attrs

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock, fail_after
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConnectionFailed,
    ConnectTimeout,
    MalformedResponse,
    MissingDependency,
    RateLimited,
    StreamingFailed,
    StreamStalled,
    STTError,
)
from sttrouter.providers._openai_client import http_error, translate_transport
from sttrouter.results import STTResult
from sttrouter.wire import gateway as gw

__all__ = ["MAX_REPLAY_BYTES", "GatewaySettings", "GatewayStream", "translate_ws"]

log = logging.getLogger(__name__)

MAX_REPLAY_BYTES: Final = ENGINE_FORMAT.bytes_for(60.0)
"""At most this much unfinalised audio is kept for a replay after a reconnect."""


def _ws_module() -> Any:
    try:
        from websockets.asyncio import client
    except ImportError as exc:  # pragma: no cover - websockets is a core dependency
        raise MissingDependency("websockets", "glm-server") from exc
    return client


def translate_ws(exc: Exception) -> STTError:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return http_error(status, bytes(exc.response.body or b""), dict(exc.response.headers))
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == 1008:
            return AuthenticationFailed(f"the gateway closed the connection: policy ({exc})")
        if code == 1013:
            return RateLimited(f"the gateway is busy, try again later ({exc})")
        return StreamingFailed(f"the gateway connection closed: {exc}")
    if isinstance(exc, InvalidHandshake):
        return ConnectionFailed(f"WebSocket handshake failed: {exc}")
    if isinstance(exc, TimeoutError):
        return ConnectTimeout("the gateway did not accept the connection in time")
    if isinstance(exc, OSError):
        return ConnectionFailed(f"cannot connect to the gateway: {exc}")
    return translate_transport(exc)


def _error_to_stt(msg: gw.ErrorMessage) -> STTError:
    text = f"gateway error {msg.code}: {msg.message}"
    if msg.code == gw.ErrorCode.AUTHENTICATION_FAILED:
        return AuthenticationFailed(f"{text}; check the token in the endpoint's api_key_env")
    if msg.code == gw.ErrorCode.RATE_LIMIT_EXCEEDED:
        return RateLimited(text)
    if msg.code == gw.ErrorCode.AUDIO_FORMAT_ERROR:
        return AudioFormatError(text)
    return StreamingFailed(text)


@attrs.frozen
class GatewaySettings:
    """How a :class:`GatewayStream` connects.

    Attributes:
        url: ``ws(s)://host[:port]`` (``/v1/audio/stream`` is appended when missing).
        api_key: called at each connect; its result is sent as a Bearer token.
        language: sent in ``start``.
        interim_results: sent in ``start``.
        frame_seconds: audio per binary frame (0.02..0.5).
        reconnect_attempts: reconnects after a drop (and connect retries) before giving up.
        timeout: seconds for a connect, and for the closing finals after ``end``.
    """

    url: str
    api_key: Callable[[], str | None] = lambda: None
    language: str | None = None
    interim_results: bool = True
    frame_seconds: float = 0.1
    reconnect_attempts: int = 3
    timeout: float = 30.0


class GatewayStream:
    """One stream over the gateway protocol, with reconnect-and-replay.

    Args:
        settings: where and how to connect.
        clock: backoff and deadlines run on it.
        emit: awaited with each result, already on this stream's timeline.
        fail: called with the error that ends the stream.
        spawn: runs a coroutine for the life of the stream (its exception fails the stream).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        clock: Clock,
        emit: Callable[[STTResult], Awaitable[None]],
        fail: Callable[[STTError], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.emit = emit
        self.fail = fail
        self.spawn = spawn
        self.url = settings.url.rstrip("/")
        if not self.url.endswith("/v1/audio/stream"):
            self.url += "/v1/audio/stream"
        self.frame_bytes = ENGINE_FORMAT.bytes_for(settings.frame_seconds)
        self.pending = b""  # less than one frame, not sent yet
        self.sent = 0  # bytes sent on the current connection
        self.offset = 0  # bytes of stream audio before the current connection's first byte
        self.replay = bytearray()  # stream audio since the last final (what a reconnect resends)
        self.replay_from = 0  # stream byte offset of replay[0]
        self.conn: Any = None
        self.receiver: asyncio.Task[None] | None = None
        self.ending = False
        self.closed = asyncio.Event()
        self.failure: STTError | None = None
        self.generation = 0
        self.reconnects = 0
        self.dead = False  # the gateway reported a fatal error
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        delay = 0.2
        for attempt in range(self.settings.reconnect_attempts + 1):
            try:
                await self._connect()
                return
            except Exception as exc:
                err = translate_ws(exc)
                if not err.retryable or attempt == self.settings.reconnect_attempts:
                    raise err from exc
                log.info(
                    "gateway connect failed (%s); retrying in %.1fs", type(err).__name__, delay
                )
                await self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        client = _ws_module()
        key = self.settings.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with fail_after(self.clock, self.settings.timeout):
            self.conn = await client.connect(
                self.url,
                additional_headers=headers,
                open_timeout=None,
                compression=None,
                proxy=None,
                max_size=1 << 20,
            )
        config = gw.StreamConfig(
            language=self.settings.language, interim_results=self.settings.interim_results
        )
        await self.conn.send(gw.serialize(gw.Start(config)))
        self.sent = 0
        self.generation += 1
        self.offset = self.replay_from
        self.closed = asyncio.Event()
        self.receiver = self.spawn(self._receive(self.conn, self.closed))
        data = bytes(self.replay)  # resend what no final covered yet
        for i in range(0, len(data), self.frame_bytes):
            await self.conn.send(data[i : i + self.frame_bytes])
            self.sent += min(self.frame_bytes, len(data) - i)

    async def send(self, pcm: bytes) -> None:
        data = self.pending + pcm
        whole = len(data) // self.frame_bytes * self.frame_bytes
        self.pending = data[whole:]
        for i in range(0, whole, self.frame_bytes):
            await self._transmit(data[i : i + self.frame_bytes])

    async def _transmit(self, frame: bytes) -> None:
        """Send a new frame; it stays in the replay buffer until a final covers it."""
        self.replay += frame
        if len(self.replay) > MAX_REPLAY_BYTES:
            drop = len(self.replay) - MAX_REPLAY_BYTES
            del self.replay[:drop]
            self.replay_from += drop
        generation = self.generation
        try:
            await self.conn.send(frame)
            self.sent += len(frame)
        except Exception as exc:
            await self._reconnect(exc, generation)

    async def _reconnect(self, cause: Exception, generation: int) -> None:
        async with self.lock:
            if generation != self.generation:
                return  # someone else already reconnected (and replayed this frame)
            err = translate_ws(cause)
            if self.ending or not err.retryable or self.settings.reconnect_attempts == 0:
                raise err from cause
            log.warning("gateway connection lost (%s); reconnecting", type(err).__name__)
            await self._drop_connection()
            delay = 0.2
            for attempt in range(self.settings.reconnect_attempts):
                await self.clock.sleep(delay)
                try:
                    await self._connect()
                    self.reconnects += 1
                    return
                except Exception as exc:
                    err = translate_ws(exc)
                    if not err.retryable or attempt == self.settings.reconnect_attempts - 1:
                        raise err from exc
                    delay = min(delay * 2, 5.0)

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if self.receiver is not None:
            self.receiver.cancel()
            self.receiver = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                await conn.close()

    async def _receive(self, conn: Any, closed: asyncio.Event) -> None:
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        shift = self.offset / ENGINE_FORMAT.bytes_per_second
        try:
            async for raw in conn:
                msg = gw.parse_server(raw)
                if isinstance(msg, gw.Transcript):
                    result = msg.to_result().shifted(shift)
                    if result.is_final:
                        self._forget_until(result.end)
                    await self.emit(result)
                elif isinstance(msg, gw.ErrorMessage):
                    self._on_error(msg)
            if not self.ending and not self.dead and self.conn is conn:
                # the gateway ended the session on its own (restart, 1000/1001): resume
                self.spawn(self._reconnect(StreamingFailed("closed"), self.generation))
        except ConnectionClosed as exc:
            if not self.ending and not self.dead and self.conn is conn:
                self.spawn(self._reconnect(exc, self.generation))
            elif self.ending and not isinstance(exc, ConnectionClosedOK):
                self.failure = translate_ws(exc)
        except gw.ProtocolError as exc:
            raise MalformedResponse(f"the gateway sent an invalid message: {exc}") from exc
        finally:
            closed.set()

    def _on_error(self, msg: gw.ErrorMessage) -> None:
        if msg.code == gw.ErrorCode.BUFFER_OVERFLOW:
            # the gateway dropped audio: this stream no longer covers every sample
            self.dead = True
            self.fail(StreamingFailed(f"gateway dropped audio ({msg.message})"))
        elif msg.recoverable:
            log.warning("gateway reported %s (recoverable): %s", msg.code, msg.message)
        else:
            self.dead = True
            self.fail(_error_to_stt(msg))

    def _forget_until(self, seconds: float) -> None:
        upto = min(self.replay_from + len(self.replay), ENGINE_FORMAT.bytes_for(max(0.0, seconds)))
        drop = upto - self.replay_from
        if drop > 0:
            del self.replay[:drop]
            self.replay_from = upto

    async def finish(self) -> None:
        if self.pending:
            await self._transmit(self.pending)
            self.pending = b""
        self.ending = True
        closed = self.closed
        try:
            await self.conn.send(gw.serialize(gw.End()))
        except Exception as exc:
            raise translate_ws(exc) from exc
        try:
            async with fail_after(self.clock, self.settings.timeout):
                await closed.wait()
        except TimeoutError as exc:
            raise StreamStalled(
                f"the gateway sent no closing final within {self.settings.timeout:g}s of 'end'"
            ) from exc
        finally:
            await self._drop_connection()
        if self.failure is not None:
            raise self.failure

    async def close(self) -> None:
        self.ending = True
        await self._drop_connection()
