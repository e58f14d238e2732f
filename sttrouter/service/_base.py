"""``BaseSTTService``: the machinery every adapter shares (see the package docstring)."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from typing import Any

import anyio
import attrs

from sttrouter.audio import ENGINE_FORMAT, AudioChunk, AudioFormat
from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AlreadyStreaming,
    AudioFormatError,
    NotStreaming,
    StreamingFailed,
    STTError,
    UnsupportedOption,
)
from sttrouter.metrics import STTMetrics
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult, Transcript
from sttrouter.service._batch import load_input, stream_transcribe
from sttrouter.service._channel import StreamState, results_of
from sttrouter.service._contract import AudioInput, AudioStream
from sttrouter.wire.errors import redact

__all__ = ["BaseSTTService"]

log = logging.getLogger("sttrouter.service")


class _State(enum.Enum):
    IDLE = "idle"
    STREAMING = "streaming"
    STOPPING = "stopping"


class BaseSTTService:
    """Shared machinery for :class:`STTService` implementations (see the module docstring).

    Class attributes an adapter may override:
        engine_format: what ``_send`` receives (default 16 kHz mono s16le).
        result_buffer: capacity of the result channel; a consumer that does not read makes
            the engine wait once it is full.
        batch_chunk_seconds: chunk length when ``transcribe`` streams a clip.
    """

    engine_format: AudioFormat = ENGINE_FORMAT
    result_buffer: int = 1024
    batch_chunk_seconds: float = 0.1
    supported_options: frozenset[str] = frozenset()
    """Stream options (names from :data:`sttrouter.options.OPTION_NAMES`) this engine honours;
    ``language`` is further checked against the endpoint's ``supported_languages``."""

    def __init__(self, endpoint: STTEndpoint, *, clock: Clock | None = None) -> None:
        self.endpoint = endpoint
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._metrics = STTMetrics(endpoint.cost_per_hour)
        self._state = _State.IDLE
        self._stream: StreamState | None = None
        self.dropped_messages = 0
        """Messages from the engine this service dropped (each logged at WARNING)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint.id!r}, state={self._state.value})"

    # -- public surface -------------------------------------------------------------------
    @property
    def metrics(self) -> STTMetrics:
        return self._metrics

    @property
    def cost_per_hour(self) -> Decimal:
        return self.endpoint.cost_per_hour

    @property
    def is_streaming(self) -> bool:
        return self._state is not _State.IDLE

    @property
    def stream_options(self) -> StreamOptions:
        """The options of the current stream (defaults when none is running)."""
        return self._stream.options if self._stream is not None else _DEFAULT_OPTIONS

    def check_options(self, options: StreamOptions) -> None:
        """Raise :class:`UnsupportedOption` for the first option this engine cannot honour."""
        for name, value in options.requested().items():
            if name not in self.supported_options:
                raise UnsupportedOption(name, value, endpoint_id=self.endpoint.id)
        if not self.endpoint.supports_language(options.language):
            raise UnsupportedOption("language", options.language, endpoint_id=self.endpoint.id)

    async def start_streaming(
        self, audio_format: AudioFormat = ENGINE_FORMAT, options: StreamOptions | None = None
    ) -> AsyncIterator[STTResult]:
        options = options or _DEFAULT_OPTIONS
        if not isinstance(audio_format, AudioFormat):
            raise AudioFormatError(
                f"start_streaming takes an AudioFormat, got {type(audio_format).__name__} "
                f"{audio_format!r}; e.g. AudioFormat(sample_rate=16000) for 16 kHz mono s16le",
                endpoint_id=self.endpoint.id,
            )
        if self._state is not _State.IDLE:
            raise AlreadyStreaming(
                f"{self.endpoint.id} is already streaming; stop or cancel the current stream "
                "first, or use one service instance per stream",
                endpoint_id=self.endpoint.id,
            )
        self.check_options(options)
        stream = StreamState(audio_format, self.engine_format, self.result_buffer, options)
        self._stream = stream
        self._state = _State.STREAMING
        try:
            await self._open()
        except BaseException as exc:
            await self._teardown(stream)
            if isinstance(exc, Exception):
                raise self._error(exc) from self._cause(exc)
            raise
        return results_of(stream)

    async def send_audio(self, chunk: AudioChunk) -> None:
        stream = self._stream
        if (
            stream is not None
            and stream.passthrough
            and type(chunk) is bytes
            and chunk
            and not len(chunk) % stream.frame_bytes
            and stream.failure is None
        ):
            # the per-chunk fast path: whole frames already in the engine format need no
            # validation or conversion, only metrics and the engine's ``_send``
            now = self.clock.now()
            seconds = len(chunk) / stream.bytes_per_second
            self._metrics.audio_sent(seconds, now)
            stream.mark(seconds, now)
            try:
                await self._send(chunk)
            except Exception as exc:
                self._fail(exc)
                assert stream.failure is not None
                raise stream.failure from self._cause(exc)
            if stream.failure is not None:
                raise stream.failure
            return
        stream = self._require_stream("send_audio")
        if stream.failure is not None:
            raise stream.failure
        data = stream.converter.convert(chunk)
        self._metrics.audio_sent(
            stream.source.seconds(_nbytes(chunk, stream.source)), self.clock.now()
        )
        await self._push(stream, data)

    async def finalize(self) -> None:
        """Force a final for the audio sent so far; the stream stays open.

        Does nothing when no stream is running or the stream already failed."""
        stream = self._stream
        if stream is None or self._state is not _State.STREAMING or stream.failure is not None:
            return
        await self._call(stream, self._finalize())

    async def stop_streaming(self) -> STTResult | None:
        stream = self._require_stream("stop_streaming")
        if self._state is _State.STOPPING:
            raise NotStreaming(f"{self.endpoint.id}: stop_streaming is already in progress")
        self._state = _State.STOPPING
        finished = False
        try:
            if stream.failure is None:
                await self._push(stream, stream.converter.flush())
                await self._call(stream, self._finish())
                finished = stream.failure is None
        finally:
            if not finished:  # failed, timed out or cancelled: the connection is closed too
                await self._abort_quietly()
            await self._teardown(stream)
        if stream.failure is not None:
            raise stream.failure
        return stream.last_final

    async def cancel_streaming(self) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            await self._abort_quietly()
        finally:
            await self._teardown(stream)

    async def _abort_quietly(self) -> None:
        """``_abort``, shielded from cancellation; a failure to close is only logged."""
        try:
            with anyio.CancelScope(shield=True):
                await self._abort()
        except Exception as exc:  # closing a broken connection may fail; nothing to report
            log.debug("%s: closing failed: %s", self.endpoint.id, self._redact(repr(exc)))

    async def transcribe(
        self, audio: AudioInput, audio_format: AudioFormat | None = None
    ) -> Transcript:
        """Transcribe a whole clip or file.

        An engine with a batch call implements ``_transcribe``; this method records its
        latency, audio, cost and errors and translates its exceptions, once for every engine.
        An engine without one streams the clip through this service, finals only, and the
        stream path records the same.
        """
        data, fmt = load_input(audio, audio_format)
        seconds = fmt.seconds(len(data))
        started = self.clock.now()
        try:
            transcript = await self._transcribe(data, fmt)
        except Exception as exc:
            self._metrics.audio_sent(seconds, started)
            self._metrics.error()
            raise self._error(exc) from self._cause(exc)
        if transcript is None:
            return await stream_transcribe(
                self, data, fmt, chunk_seconds=self.batch_chunk_seconds, options=_BATCH_OPTIONS
            )
        self._metrics.audio_sent(seconds, started)
        now = self.clock.now()
        results = []
        for r in transcript.results:
            latency = r.latency if r.latency is not None else now - started
            eid = r.endpoint_id or self.endpoint.id
            r = attrs.evolve(r, latency=latency, timestamp=r.timestamp or now, endpoint_id=eid)
            self._metrics.result_received(
                latency=latency, is_final=r.is_final, words=_word_count(r), now=now
            )
            results.append(r)
        return Transcript.from_results(
            results, duration=transcript.duration, language=transcript.language
        )

    @asynccontextmanager
    async def stream(self, audio_format: AudioFormat = ENGINE_FORMAT) -> AsyncIterator[AudioStream]:
        results = await self.start_streaming(audio_format)
        handle = AudioStream(self, results)
        try:
            yield handle
        except BaseException:
            await self.cancel_streaming()
            raise
        else:
            if not handle.stopped and self.is_streaming:
                await self.stop_streaming()

    async def probe(self) -> None:
        """Default: nothing to check (in-process engines). Network adapters override."""

    # -- hooks for adapters ---------------------------------------------------------------
    async def _open(self) -> None:
        """Connect. Raise an :class:`STTError` when the engine cannot be used."""

    async def _send(self, pcm: bytes) -> None:
        raise NotImplementedError

    async def _finish(self) -> None:
        """Flush, emit the remaining results and close."""

    async def _abort(self) -> None:
        """Close immediately."""

    async def _finalize(self) -> None:
        """Ask the engine to finalise the audio sent so far (default: nothing to do, for
        engines that finalise every chunk on their own)."""

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript | None:
        """The engine's batch call: ``data`` (in ``fmt``) in, a :class:`Transcript` out.

        Put every final the engine produced in it, empty ones too (each is counted, then
        ``transcribe`` keeps those with text); a result's ``latency`` defaults to the whole
        call's. Return ``None`` (the default) to have the clip streamed through this service
        instead. Raise what the engine raises: ``transcribe`` records and translates it.
        """
        return None

    def _translate(self, exc: Exception) -> STTError:
        """Map a foreign exception to the most specific :class:`STTError` (adapters extend)."""
        if isinstance(exc, STTError):
            if exc.endpoint_id is None:
                exc.endpoint_id = self.endpoint.id
            return exc
        return StreamingFailed(
            f"unexpected {type(exc).__name__}: {exc}", endpoint_id=self.endpoint.id
        )

    # -- helpers for adapters -------------------------------------------------------------
    @property
    def stream_seconds(self) -> float:
        """Seconds of engine-format audio sent in the current stream."""
        return self._stream.engine_seconds if self._stream else 0.0

    async def _emit(self, result: STTResult) -> None:
        """Deliver one result (times on this stream's timeline)."""
        stream = self._stream
        if stream is None or stream.failure is not None:
            return
        if not result.is_final and not stream.options.interim_results:
            return
        now = self.clock.now()
        latency = result.latency
        if latency is None:
            latency = stream.latency_for(result.end, now)
        # a composite (RoutedSession) passes on the endpoint that really produced the result
        eid = result.endpoint_id or self.endpoint.id
        result = attrs.evolve(result, latency=latency, timestamp=now, endpoint_id=eid)
        self._metrics.result_received(
            latency=latency, is_final=result.is_final, words=_word_count(result), now=now
        )
        if result.is_final:
            stream.last_final = result
            stream.forget_before(result.end)
        await stream.send.send(result)  # dropped if the stream was already closed

    def _fail(self, error: BaseException) -> None:
        """Fail the current stream: the result iterator and the next call raise ``error``
        (translated and scrubbed of secrets by :meth:`_error`)."""
        stream = self._stream
        if stream is None or stream.failure is not None:
            return
        stream.failure = self._error(error)
        self._metrics.error()
        stream.send.close()

    def _error(self, exc: BaseException) -> STTError:
        """The one translation boundary: ``exc`` as the most specific :class:`STTError`
        (:meth:`_translate`), with this endpoint's id, and every configured secret value
        scrubbed from its message, whatever the text came from (a close reason or a 401
        body can echo the ``Authorization`` header)."""
        if isinstance(exc, Exception):
            err = self._translate(exc)
        else:  # pragma: no cover - BaseExceptions are re-raised, never translated
            err = StreamingFailed(f"unexpected {type(exc).__name__}")
        if err.endpoint_id is None:
            err.endpoint_id = self.endpoint.id
        clean = self._redact(err.message)
        if clean != err.message:
            err.message = clean
            err.args = (clean,)
        return err

    def _redact(self, text: str) -> str:
        """``text`` with this endpoint's secret values (its API key) replaced."""
        secrets = self.endpoint.connection.secrets()
        return redact(text, secrets) if secrets else text

    def _cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain as a translated error's cause, or ``None`` when its text holds
        a secret (a logged traceback shows the cause too)."""
        text = f"{exc} {exc!r}"
        return exc if self._redact(text) == text else None

    def _dropped(self, what: str) -> None:
        """Count and log (WARNING) a message the engine sent that this adapter, or the
        vendor's SDK before it, dropped; never silently. What it held is the coverage
        audit's to find (the session replays or reports the span)."""
        self.dropped_messages += 1
        log.warning(
            "%s dropped a message from the engine (%d so far): %s",
            self.endpoint.id,
            self.dropped_messages,
            self._redact(what),
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` for the life of the stream; an exception from it fails the stream."""
        stream = self._stream
        assert stream is not None, "_spawn outside a stream"
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        # a task cancelled before its first step never awaits coro: close it (no warning)
        task.add_done_callback(lambda _t: coro.close())
        stream.tasks.add(task)
        task.add_done_callback(stream.tasks.discard)
        return task

    async def _guard(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception as exc:
            self._fail(exc)

    # -- internals ------------------------------------------------------------------------
    def _require_stream(self, what: str) -> StreamState:
        if self._stream is None or self._state is _State.IDLE:
            raise NotStreaming(
                f"{what} called on {self.endpoint.id} with no stream running; "
                "call start_streaming first",
                endpoint_id=self.endpoint.id,
            )
        return self._stream

    async def _push(self, stream: StreamState, data: bytes) -> None:
        if not data:
            return
        stream.mark(stream.target.seconds(len(data)), self.clock.now())
        await self._call(stream, self._send(data))
        if stream.failure is not None:
            raise stream.failure

    async def _call(self, stream: StreamState, coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception as exc:
            self._fail(exc)
            assert stream.failure is not None
            raise stream.failure from self._cause(exc)

    async def _teardown(self, stream: StreamState) -> None:
        for task in list(stream.tasks):
            task.cancel()
        for task in list(stream.tasks):
            with anyio.CancelScope(shield=True):
                with suppress(asyncio.CancelledError, Exception):
                    await task
        stream.send.close()
        if self._stream is stream:
            self._stream = None
            self._state = _State.IDLE


_DEFAULT_OPTIONS = StreamOptions()
_BATCH_OPTIONS = StreamOptions(interim_results=False)  # a transcript keeps finals only


def _nbytes(chunk: AudioChunk, fmt: AudioFormat) -> int:
    if isinstance(chunk, bytes | bytearray | memoryview):
        return len(chunk)
    frames = chunk.shape[0] if chunk.ndim else 0
    return int(frames) * fmt.frame_bytes


def _word_count(result: STTResult) -> int:
    return len(result.words) if result.words else len(result.transcript.split())
