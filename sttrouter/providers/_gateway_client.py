"""A client of UnaMentis' streaming protocol (``/v1/audio/stream``): one connection, no replay.

:class:`GatewayStream` is one stream: it re-chunks audio into binary frames and maps
``partial``/``final``/``error`` messages to results and typed errors. A connection that drops
mid-stream fails the stream like every other adapter's; a
:class:`~sttrouter.session.RoutedSession` with a backup endpoint replays the audio no final
covered (keeping replay and retry in one layer, not two nested ones). The messages are in
:mod:`sttrouter.wire.gateway`; the error mappings are the shared tables of
:mod:`sttrouter.wire.errors` (close codes, HTTP statuses) and
:data:`sttrouter.wire.gateway.ERROR_TABLE` (the gateway's error codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock, fail_after
from sttrouter.errors import (
    ConnectionFailed,
    ConnectTimeout,
    MalformedResponse,
    MissingDependency,
    StreamingFailed,
    StreamStalled,
    STTError,
)
from sttrouter.providers._openai_client import http_error, translate_transport
from sttrouter.results import STTResult
from sttrouter.wire import gateway as gw
from sttrouter.wire.errors import from_close_code

__all__ = ["GatewaySettings", "GatewayStream", "translate_ws", "warn_reconnect_attempts"]

log = logging.getLogger(__name__)

VENDOR = "the gateway"


def _ws_module() -> Any:
    try:
        from websockets.asyncio import client
    except ImportError as exc:  # pragma: no cover - websockets is a core dependency
        raise MissingDependency("websockets", "glm-server") from exc
    return client


def warn_reconnect_attempts(endpoint_id: str | None = None) -> None:
    """Warn that the ``reconnect_attempts`` option no longer does anything (kept one release)."""
    where = f" of endpoint {endpoint_id!r}" if endpoint_id else ""
    warnings.warn(
        f"the gateway option 'reconnect_attempts'{where} is deprecated and ignored: a dropped "
        "gateway connection now fails the stream; route through a RoutedSession with a backup "
        "endpoint, which replays the audio no final covered",
        DeprecationWarning,
        stacklevel=3,
    )


def translate_ws(exc: Exception) -> STTError:
    """The typed error for a WebSocket failure (rejected upgrade, close code, socket error)."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return http_error(status, bytes(exc.response.body or b""), dict(exc.response.headers))
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        mapped = from_close_code(code, reason, vendor=VENDOR)
        return mapped or StreamingFailed(f"{VENDOR} closed the stream before it ended ({exc})")
    if isinstance(exc, InvalidHandshake):
        return ConnectionFailed(f"WebSocket handshake failed: {exc}")
    if isinstance(exc, TimeoutError):
        return ConnectTimeout("the gateway did not accept the connection in time")
    if isinstance(exc, OSError):
        return ConnectionFailed(f"cannot connect to the gateway: {exc}")
    return translate_transport(exc)


@attrs.frozen
class GatewaySettings:
    """How a :class:`GatewayStream` connects.

    Attributes:
        url: ``ws(s)://host[:port]`` (``/v1/audio/stream`` is appended when missing).
        api_key: called at each connect; its result is sent as a Bearer token.
        language: sent in ``start``.
        interim_results: sent in ``start``.
        punctuate: sent in ``start``.
        frame_seconds: audio per binary frame (0.02..0.5).
        reconnect_attempts: deprecated and ignored (see :func:`warn_reconnect_attempts`).
        timeout: seconds for a connect, and for the closing finals after ``end``.
    """

    url: str
    api_key: Callable[[], str | None] = lambda: None
    language: str | None = None
    interim_results: bool = True
    punctuate: bool = True
    frame_seconds: float = 0.1
    reconnect_attempts: int | None = None
    timeout: float = 30.0


class GatewayStream:
    """One stream over the gateway protocol, on one connection.

    Args:
        settings: where and how to connect.
        clock: deadlines run on it.
        emit: awaited with each result.
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
        self.conn: Any = None
        self.receiver: asyncio.Task[None] | None = None
        self.ending = False
        self.closed = asyncio.Event()
        self.failure: STTError | None = None
        self.dead = False  # the stream has failed; later messages are ignored

    async def open(self) -> None:
        """Connect and send ``start``; a failure is raised as a typed error (no retry here)."""
        client = _ws_module()
        key = self.settings.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        try:
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
                language=self.settings.language,
                interim_results=self.settings.interim_results,
                punctuate=self.settings.punctuate,
            )
            await self.conn.send(gw.serialize(gw.Start(config)))
        except Exception as exc:
            await self.close()
            raise translate_ws(exc) from exc
        self.receiver = self.spawn(self._receive(self.conn))

    async def send(self, pcm: bytes) -> None:
        data = self.pending + pcm
        whole = len(data) // self.frame_bytes * self.frame_bytes
        self.pending = data[whole:]
        for i in range(0, whole, self.frame_bytes):
            await self._transmit(data[i : i + self.frame_bytes])

    async def _transmit(self, frame: bytes) -> None:
        try:
            await self.conn.send(frame)
        except Exception as exc:
            raise translate_ws(exc) from exc

    async def _receive(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        try:
            async for raw in conn:
                msg = gw.parse_server(raw)
                if isinstance(msg, gw.Transcript):
                    await self.emit(msg.to_result())
                elif isinstance(msg, gw.ErrorMessage):
                    self._on_error(msg)
            if not self.ending and not self.dead:
                # the gateway ended the session on its own (a restart: 1000/1001/1012)
                self._die(StreamingFailed(f"{VENDOR} closed the stream before it ended"))
        except ConnectionClosed as exc:
            if not self.ending:
                self._die(translate_ws(exc))
            elif not isinstance(exc, ConnectionClosedOK):
                self.failure = translate_ws(exc)
        except gw.ProtocolError as exc:
            raise MalformedResponse(f"the gateway sent an invalid message: {exc}") from exc
        finally:
            self.closed.set()

    def _die(self, err: STTError) -> None:
        if not self.dead:
            self.dead = True
            self.fail(err)

    def _on_error(self, msg: gw.ErrorMessage) -> None:
        if msg.recoverable and msg.code != gw.ErrorCode.BUFFER_OVERFLOW:
            log.warning("gateway reported %s (recoverable): %s", msg.code, msg.message)
            return
        # a dropped frame (BUFFER_OVERFLOW) means this stream no longer covers every sample
        self._die(gw.error_for(msg.code, msg.message))

    async def finalize(self) -> None:
        """Send what is pending, then ask the gateway to end the utterance now."""
        if self.pending:
            await self._transmit(self.pending)
            self.pending = b""
        try:
            await self.conn.send(gw.serialize(gw.Finalize()))
        except Exception as exc:
            raise translate_ws(exc) from exc

    async def finish(self) -> None:
        if self.pending:
            await self._transmit(self.pending)
            self.pending = b""
        self.ending = True
        try:
            await self.conn.send(gw.serialize(gw.End()))
        except Exception as exc:
            raise translate_ws(exc) from exc
        try:
            async with fail_after(self.clock, self.settings.timeout):
                await self.closed.wait()
        except TimeoutError as exc:
            raise StreamStalled(
                f"the gateway sent no closing final within {self.settings.timeout:g}s of 'end'"
            ) from exc
        finally:
            await self.close()
        if self.failure is not None:
            raise self.failure

    async def close(self) -> None:
        self.ending = True
        conn, self.conn = self.conn, None
        if self.receiver is not None:
            self.receiver.cancel()
            self.receiver = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                await conn.close()
