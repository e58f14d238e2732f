"""Deepgram adapter on the official ``deepgram-sdk`` 7.x async client (extra ``deepgram``).

Streaming uses ``client.listen.v1.connect`` (WebSocket ``/v1/listen``); batch uses the
prerecorded ``POST /v1/listen``; :meth:`DeepgramSTTService.probe` lists the key's projects,
which bills nothing. Point ``endpoint.connection.base_url`` at a self-hosted Deepgram or at
:class:`sttrouter.testing.FakeDeepgramServer`; ``http(s)://`` and ``ws(s)://`` both work.

Options (``endpoint.connection.options``): ``model`` (default ``nova-3``), ``language``,
``interim_results`` (default true), ``punctuate`` (default true), ``smart_format``,
``endpointing`` (ms, default 300, ``false`` to turn off), ``utterance_end_ms``,
``vad_events``, ``keepalive_seconds`` (default 5), ``connect_timeout`` (10),
``finish_timeout`` (10), ``request_timeout`` (60), ``max_frame_seconds`` (1),
``probe_path`` (a health route for self-hosted Deepgram, which has no projects API).

Stream options (:class:`~sttrouter.options.StreamOptions` given to ``start_streaming``)
override the endpoint's for one stream: ``language``, ``punctuate``, ``interim_results``
(the ``interim_results`` query parameter) and ``keywords`` (one ``keyterm`` parameter each,
Nova-3's keyterm prompting). ``finalize()`` sends ``Finalize``; Deepgram answers with a final
(``from_finalize``) for the audio it holds.

Mapping to :class:`~sttrouter.results.STTResult`:

* ``Results``: ``is_final`` → ``is_final``, ``speech_final`` → ``is_end_of_utterance``,
  words with their times and confidences, language from ``languages`` or the option.
  Empty interims (silence) are dropped.
* ``SpeechStarted``: an empty interim at the speech onset.
* ``UtteranceEnd``: an empty, zero-length final with ``is_end_of_utterance`` at
  ``last_word_end`` — only when the previous final did not already end the utterance.
* ``Metadata``: ends the stream after ``CloseStream``; nothing is emitted.
* Unknown message types (a bare dict) are skipped. A message the SDK could not parse (it
  yields ``None``) is logged at WARNING and counted in ``dropped_messages``.
* Values no engine may send (a NaN, infinite or negative time or duration) are
  :class:`~sttrouter.errors.MalformedResponse`, so the stream fails over.

Audio goes out in WebSocket messages of at most ``max_frame_seconds`` (≤ 1 s, the default)
whatever the size of the caller's chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs
import httpx

from sttrouter._builtin_endpoints import deepgram_endpoint
from sttrouter.audio import AudioFormat
from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConnectionFailed,
    ConnectTimeout,
    MalformedResponse,
    MissingDependency,
    QuotaExceeded,
    StreamingFailed,
    STTError,
)
from sttrouter.results import STTResult, Transcript, WordTimestamp
from sttrouter.service import BaseSTTService
from sttrouter.wire import deepgram as wire
from sttrouter.wire._common import http_and_ws, positive_number, to_wav
from sttrouter.wire.errors import from_close_code, from_http_status, mentions_quota

with warnings.catch_warnings():
    # deepgram-sdk 7.x's async client imports websockets.legacy (and its InvalidStatusCode),
    # which websockets >= 14 deprecates at import time; the SDK still works. Ignore exactly
    # those two, here and only here, so applications (and our tests) running with -W error
    # can use this adapter without a filter of their own.
    warnings.filterwarnings(
        "ignore", message="websockets.legacy is deprecated", category=DeprecationWarning
    )
    warnings.filterwarnings(
        "ignore",
        message="websockets.exceptions.InvalidStatusCode is deprecated",
        category=DeprecationWarning,
    )
    try:
        # websocket_compat, raw_client and socket_client are imported lazily by the SDK on
        # first use; importing them here keeps their deprecation warnings inside this filter
        # instead of at the first connect.
        import websockets.exceptions as ws_exc
        from deepgram import AsyncDeepgramClient
        from deepgram.core import websocket_compat as _compat  # noqa: F401
        from deepgram.core.api_error import ApiError
        from deepgram.environment import DeepgramClientEnvironment
        from deepgram.listen.v1 import raw_client as _raw_client  # noqa: F401
        from deepgram.listen.v1 import socket_client as _socket_client  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency("deepgram-sdk", "deepgram") from exc

__all__ = ["DEFAULT_COST_PER_HOUR", "DeepgramSTTService", "deepgram_endpoint", "to_stt_result"]

log = logging.getLogger(__name__)

DEFAULT_COST_PER_HOUR: Decimal = deepgram_endpoint().cost_per_hour
"""Nova-3 streaming, US$ per hour of audio (UnaMentis' price table)."""

VENDOR = "Deepgram"

ABORT_CLOSE_SECONDS = 2.0
"""How long an abort waits for the close handshake before leaving the TCP close to
websockets (which ends it on its own)."""


def to_stt_result(msg: wire.Results, language: str | None = None) -> STTResult:
    """A ``Results`` message as an :class:`STTResult` (times on the stream's timeline)."""
    words = tuple(WordTimestamp(w.text, w.start, w.end, w.confidence) for w in msg.words)
    lang = next(iter(msg.languages), None) or next(
        (w.language for w in msg.words if w.language), None
    )
    return STTResult(
        transcript=msg.transcript,
        is_final=msg.is_final,
        is_end_of_utterance=msg.is_final and msg.speech_final,
        confidence=msg.confidence,
        start=msg.start,
        duration=msg.duration,
        words=words,
        language=lang or language,
    )


class DeepgramSTTService(BaseSTTService):
    """Deepgram streaming and batch transcription through ``deepgram-sdk``.

    Args:
        endpoint: a ``provider="deepgram"`` endpoint (see :func:`deepgram_endpoint`).
        clock: drives KeepAlive and deadlines (tests pass a ``FakeClock``).
    """

    supported_options = frozenset({"language", "keywords", "punctuate"})

    def __init__(self, endpoint: STTEndpoint, *, clock: Clock | None = None) -> None:
        super().__init__(endpoint, clock=clock)
        opts = endpoint.connection.options
        self.listen_options = wire.ListenOptions.from_options(opts)
        self.keepalive_seconds = positive_number(opts, "keepalive_seconds", 5.0)
        self.connect_timeout = positive_number(opts, "connect_timeout", 10.0)
        self.finish_timeout = positive_number(opts, "finish_timeout", 10.0)
        self.request_timeout = positive_number(opts, "request_timeout", 60.0)
        self.max_frame_seconds = min(1.0, positive_number(opts, "max_frame_seconds", 1.0))
        fmt = self.engine_format
        self._max_frame_bytes = max(fmt.frame_bytes, fmt.bytes_for(self.max_frame_seconds))
        self._cm: Any = None
        self._conn: Any = None
        self._closing = False
        self._aborted = False
        self._metadata_seen = False
        self._done = asyncio.Event()
        self._last_activity = 0.0
        self._utterance_open = False
        self._stream_listen = self.listen_options
        self.request_id: str | None = None
        """The ``request_id`` of the last stream's ``Metadata``."""

    # -- client --------------------------------------------------------------------------
    def _client(self, http: Any = None) -> Any:
        """An SDK client; REST calls pass their own ``httpx.AsyncClient`` and close it.

        Retries are off (``max_retries=0``): a router fails over faster than the SDK's
        1 s / 2 s backoff, and retries a transient endpoint later itself.
        """
        conn = self.endpoint.connection
        # Self-hosted Deepgram without auth: the SDK still wants some key.
        key = conn.api_key() if conn.api_key_env else "unused"
        kwargs: dict[str, Any] = {"api_key": key, "max_retries": 0}
        if http is not None:
            kwargs["httpx_client"] = http
        if conn.base_url:
            rest, ws = http_and_ws(conn.base_url)
            kwargs["environment"] = DeepgramClientEnvironment(
                base=rest, production=ws, agent=ws, agent_rest=rest
            )
        return AsyncDeepgramClient(**kwargs)

    # -- streaming hooks -----------------------------------------------------------------
    def stream_listen_options(self) -> tuple[wire.ListenOptions, dict[str, Any]]:
        """The listen options of the current stream (the endpoint's, overridden by the
        stream's :class:`~sttrouter.options.StreamOptions`) and the SDK's keyword arguments."""
        asked = self.stream_options
        opts = self.listen_options
        changes: dict[str, Any] = {}
        if asked.language is not None:
            changes["language"] = asked.language
        if asked.punctuate is not None:
            changes["punctuate"] = asked.punctuate
        if not asked.interim_results:
            changes["interim_results"] = False
        opts = attrs.evolve(opts, **changes)
        kwargs = opts.sdk_kwargs()
        if asked.keywords:
            kwargs["keyterm"] = list(asked.keywords)
        return opts, kwargs

    async def _open(self) -> None:
        client = self._client()
        self._stream_listen, kwargs = self.stream_listen_options()
        cm = client.listen.v1.connect(**kwargs)
        try:
            async with fail_after(self.clock, self.connect_timeout):
                conn = await cm.__aenter__()
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"Deepgram did not accept the WebSocket within {self.connect_timeout:g}s",
                endpoint_id=self.endpoint.id,
            ) from exc
        self._cm, self._conn = cm, conn
        self._closing = False
        self._metadata_seen = False
        self._done = asyncio.Event()
        self._utterance_open = False
        self._last_activity = self.clock.now()
        self._aborted = False
        self._spawn(self._receive(conn))
        self._spawn(self._keepalive())

    async def _send(self, pcm: bytes) -> None:
        # one WebSocket message carries at most max_frame_seconds of audio: a 45 s chunk
        # as one 1.4 MB frame is over the common 1 MiB server limit
        size = self._max_frame_bytes
        for i in range(0, len(pcm), size):
            await self._conn.send_media(pcm[i : i + size])
        self._last_activity = self.clock.now()

    async def _finish(self) -> None:
        self._closing = True
        await self._conn.send_finalize()
        await self._conn.send_close_stream()
        try:
            async with fail_after(self.clock, self.finish_timeout):
                await self._done.wait()
        except TimeoutError:
            self._fail(
                StreamingFailed(
                    f"Deepgram sent no Metadata within {self.finish_timeout:g}s of CloseStream",
                    endpoint_id=self.endpoint.id,
                )
            )
        await self._close()

    async def _abort(self) -> None:
        self._closing = self._aborted = True
        await self._close(ABORT_CLOSE_SECONDS)

    async def _finalize(self) -> None:
        """Deepgram's ``Finalize``: it answers with a final (``from_finalize``) for the audio
        it holds, or nothing when it holds none."""
        if self._conn is not None and not self._closing:
            await self._conn.send_finalize()

    async def _close(self, wait: float | None = None) -> None:
        """Close the socket (the SDK's context exit: the close handshake, then the TCP
        close, which websockets finishes on its own if the wait here is cut short)."""
        cm, self._cm, self._conn = self._cm, None, None
        if cm is not None:
            try:
                async with fail_after(self.clock, wait or self.finish_timeout):
                    await cm.__aexit__(None, None, None)
            except Exception as exc:  # closing a broken socket; the stream's error stands
                log.debug("closing the Deepgram socket failed: %s", self._redact(repr(exc)))

    async def _keepalive(self) -> None:
        """Send KeepAlive whenever no audio went out for ``keepalive_seconds``."""
        while not self._closing:
            due = self._last_activity + self.keepalive_seconds
            await self.clock.sleep(max(0.0, due - self.clock.now()))
            if self._closing or self._conn is None:
                return
            if self.clock.now() - self._last_activity >= self.keepalive_seconds - 1e-9:
                await self._conn.send_keep_alive()
                self._last_activity = self.clock.now()

    async def _receive(self, conn: Any) -> None:
        # recv() rather than ``async for``: the SDK's iterator skips frames that are not JSON
        # with a log line, recv() raises, so a garbled stream fails over instead of stalling.
        try:
            while True:
                try:
                    msg = await conn.recv()
                except ws_exc.ConnectionClosedOK:
                    break
                await self._handle(msg)
        finally:
            self._done.set()
        if self._aborted:
            return
        if not self._closing or not self._metadata_seen:
            raise StreamingFailed(
                "Deepgram closed the stream before it sent Metadata for CloseStream",
                endpoint_id=self.endpoint.id,
            )

    async def _handle(self, msg: Any) -> None:
        if msg is None:
            # deepgram-sdk yields None for a message it could not fit to its schema (an
            # unknown type, or a Results with broken fields): count and log it; the session's
            # coverage audit finds the speech it may have held
            self._dropped("deepgram-sdk yielded None for a message it could not parse")
            return
        if isinstance(msg, bytes | bytearray):
            self._dropped(f"a binary message of {len(msg)} bytes")
            return
        raw = msg if isinstance(msg, Mapping) else msg.dict()
        parsed = wire.parse_server_message(raw)
        if isinstance(parsed, wire.Results):
            if not parsed.is_final and not parsed.transcript:
                return
            result = to_stt_result(parsed, self._stream_listen.language)
            if result.is_final:
                self._utterance_open = not result.is_end_of_utterance and bool(result.transcript)
            await self._emit(result)
        elif isinstance(parsed, wire.SpeechStarted):
            await self._emit(STTResult("", is_final=False, start=parsed.timestamp))
        elif isinstance(parsed, wire.UtteranceEnd):
            if self._utterance_open:
                self._utterance_open = False
                await self._emit(
                    STTResult(
                        "", is_final=True, is_end_of_utterance=True, start=parsed.last_word_end
                    )
                )
        elif isinstance(parsed, wire.Metadata):
            self.request_id = parsed.request_id
            self._metadata_seen = True
        elif isinstance(parsed, wire.Error):
            raise self._in_band(parsed)
        else:
            log.debug("skipping Deepgram message of type %r", parsed.type)

    def _in_band(self, err: wire.Error) -> STTError:
        text = " ".join(p for p in (err.variant, err.code or "", err.description) if p)
        eid = self.endpoint.id
        if "DATA-0000" in text:
            return AudioFormatError(f"Deepgram could not decode the audio: {text}", endpoint_id=eid)
        if mentions_quota(text):
            return QuotaExceeded(f"Deepgram: {text}; top up the account", endpoint_id=eid)
        low = text.lower()
        if "auth" in low or "credential" in low:
            return AuthenticationFailed(f"Deepgram: {text}", endpoint_id=eid)
        return StreamingFailed(f"Deepgram sent an error: {text}", endpoint_id=eid)

    # -- batch and probe -----------------------------------------------------------------
    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript:
        opts = self.listen_options
        kwargs: dict[str, Any] = {"model": opts.model}
        for name in ("language", "punctuate", "smart_format"):
            if getattr(opts, name) is not None:
                kwargs[name] = getattr(opts, name)
        async with (
            httpx.AsyncClient(timeout=self.request_timeout) as http,
            fail_after(self.clock, self.request_timeout),
        ):
            response = await self._client(http).listen.v1.media.transcribe_file(
                request=to_wav(data, fmt), **kwargs
            )
        parsed = wire.parse_prerecorded(response.dict())
        words = tuple(WordTimestamp(w.text, w.start, w.end, w.confidence) for w in parsed.words)
        duration = fmt.seconds(len(data))
        result = STTResult(
            transcript=parsed.transcript,
            is_final=True,
            is_end_of_utterance=True,
            confidence=parsed.channels[0][1] if parsed.channels else None,
            start=words[0].start if words else 0.0,
            duration=(words[-1].end - words[0].start) if words else duration,
            words=words,
            language=opts.language,
        )
        return Transcript((result,), duration=duration)

    async def probe(self) -> None:
        """Check reachability and the key without billing anything.

        By default lists the key's projects (``GET /v1/projects``) through the SDK. A
        self-hosted Deepgram has no projects API: set the ``probe_path`` option to its health
        route (a ``GET`` answered with 2xx when healthy).
        """
        path = self.endpoint.connection.option("probe_path")
        try:
            async with (
                httpx.AsyncClient(timeout=self.connect_timeout) as http,
                fail_after(self.clock, self.connect_timeout),
            ):
                if path is None:
                    await self._client(http).manage.v1.projects.list()
                    return
                response = await http.get(self._rest_url(str(path)), headers=self._auth())
        except Exception as exc:
            raise self._error(exc) from self._cause(exc)
        if not response.is_success:
            raise from_http_status(
                response.status_code,
                response.text[:200],
                vendor=VENDOR,
                endpoint_id=self.endpoint.id,
                key_env=self.endpoint.connection.api_key_env,
            )

    def _rest_url(self, path: str) -> str:
        base = self.endpoint.connection.base_url
        root = http_and_ws(base)[0] if base else "https://api.deepgram.com"
        return root + "/" + path.lstrip("/")

    def _auth(self) -> dict[str, str]:
        conn = self.endpoint.connection
        return {"Authorization": f"Token {conn.api_key()}"} if conn.api_key_env else {}

    # -- errors --------------------------------------------------------------------------
    def _translate(self, exc: Exception) -> STTError:
        eid = self.endpoint.id
        key_env = self.endpoint.connection.api_key_env
        if isinstance(exc, ApiError) and exc.status_code is not None:
            body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
            return from_http_status(
                exc.status_code, body, vendor=VENDOR, endpoint_id=eid, key_env=key_env
            )
        if isinstance(exc, ws_exc.ConnectionClosed):
            rcvd = exc.rcvd
            code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "no close")
            mapped = from_close_code(code, reason, vendor=VENDOR, endpoint_id=eid, key_env=key_env)
            return mapped or StreamingFailed("Deepgram closed the stream", endpoint_id=eid)
        if isinstance(exc, json.JSONDecodeError):
            return MalformedResponse(
                f"Deepgram sent a message that is not JSON: {exc}", endpoint_id=eid
            )
        if isinstance(exc, TimeoutError):
            return ConnectTimeout(f"Deepgram did not answer in time: {exc}", endpoint_id=eid)
        if isinstance(exc, OSError | ws_exc.InvalidHandshake | ws_exc.InvalidMessage):
            return ConnectionFailed(
                f"cannot reach Deepgram at {self._where()}: {exc}", endpoint_id=eid
            )
        if isinstance(exc, httpx.TransportError):
            return ConnectionFailed(
                f"cannot reach Deepgram at {self._where()}: {exc!r}", endpoint_id=eid
            )
        return super()._translate(exc)

    def _where(self) -> str:
        return self.endpoint.connection.base_url or "api.deepgram.com"
