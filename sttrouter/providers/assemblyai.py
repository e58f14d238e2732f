"""AssemblyAI adapter on the official ``assemblyai`` SDK 1.8 (extra ``assemblyai``).

Streaming uses the asyncio v3 client ``AsyncStreamingClient`` (not the threaded one, whose
reader thread dies silently under warnings-as-errors). Batch uses the v2 REST flow: upload,
create a transcript, poll it (the poll interval runs on the service's clock).
:meth:`AssemblyAISTTService.probe` lists one transcript, which bills nothing. Point
``endpoint.connection.base_url`` at :class:`sttrouter.testing.FakeAssemblyAIServer` (or any
host serving both APIs); with no base URL the SDK's hosts are used.

Options (``endpoint.connection.options``): ``speech_model``, ``format_turns`` (default true),
``end_of_turn_confidence_threshold``, ``min_turn_silence``, ``max_turn_silence``,
``keyterms_prompt``, ``language_detection``, ``chunk_ms`` (100; every audio message is
re-cut to this length, 50..1000), ``begin_timeout`` (5 s), ``connect_timeout`` (5 s),
``finish_timeout`` (10 s), ``poll_interval`` (3 s), ``request_timeout`` (60 s),
``batch_timeout`` (900 s).

Mapping to :class:`~sttrouter.results.STTResult`: a ``Turn`` with ``end_of_turn`` that is
formatted (or any end-of-turn ``Turn`` when ``format_turns`` is off) is the final, with
``is_end_of_utterance``; every other ``Turn`` is an interim. Word times arrive in integer
milliseconds and become seconds. ``connect()`` never raises in this SDK: a failure arrives
through the ``Error`` event, or as no ``Begin`` within ``begin_timeout``.

Stream options (:class:`~sttrouter.options.StreamOptions`) override the endpoint's for one
stream: ``keywords`` become ``keyterms_prompt``, ``punctuate`` sets ``format_turns`` and
``language`` is sent as ``language_codes`` (its primary subtag: ``en-US`` → ``en``; the
English-only model accepts English only). ``finalize()`` sends ``ForceEndpoint``, which ends
the current turn with a final.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from sttrouter._builtin_endpoints import assemblyai_endpoint
from sttrouter.audio import ENGINE_FORMAT, AudioFormat
from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
    MalformedResponse,
    MissingDependency,
    StreamingFailed,
    STTError,
)
from sttrouter.results import STTResult, Transcript, WordTimestamp
from sttrouter.service import BaseSTTService
from sttrouter.wire import assemblyai as wire
from sttrouter.wire._common import as_bool, http_and_ws, positive_number, to_wav
from sttrouter.wire.errors import from_close_code, from_http_status

try:
    import assemblyai as aai
    import httpx
    from assemblyai.prerecorded.v2 import async_api
    from assemblyai.streaming import v3 as streaming
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("assemblyai", "assemblyai") from exc

__all__ = [
    "DEFAULT_COST_PER_HOUR",
    "AssemblyAISTTService",
    "assemblyai_endpoint",
    "turn_to_result",
]

log = logging.getLogger(__name__)

DEFAULT_COST_PER_HOUR: Decimal = assemblyai_endpoint().cost_per_hour
"""Universal streaming, US$ per hour of audio (UnaMentis' price table)."""

VENDOR = "AssemblyAI"
_MIN_CHUNK_BYTES = ENGINE_FORMAT.bytes_for(wire.MIN_CHUNK_MS / 1000)
_PARAM_OPTIONS = (
    "speech_model",
    "end_of_turn_confidence_threshold",
    "min_turn_silence",
    "max_turn_silence",
    "keyterms_prompt",
    "language_detection",
)


def _ms_words(words: tuple[wire.Word, ...]) -> tuple[WordTimestamp, ...]:
    return tuple(WordTimestamp(w.text, w.start / 1000, w.end / 1000, w.confidence) for w in words)


def turn_to_result(turn: wire.Turn, *, format_turns: bool, after: float = 0.0) -> STTResult:
    """A ``Turn`` as an :class:`STTResult`.

    Args:
        turn: the parsed message.
        format_turns: whether the session asked for formatted turns (then only the formatted
            end-of-turn message is final).
        after: where a turn without words is placed (the end of the previous final).
    """
    final = turn.end_of_turn and (turn.turn_is_formatted or not format_turns)
    words = _ms_words(turn.words)
    start = words[0].start if words else after
    end = words[-1].end if words else after
    confidence = sum(w.confidence for w in turn.words) / len(turn.words) if turn.words else None
    return STTResult(
        transcript=turn.transcript,
        is_final=final,
        is_end_of_utterance=final,
        confidence=confidence,
        start=start,
        duration=max(0.0, end - start),
        words=words,
        language=turn.language_code,
    )


class AssemblyAISTTService(BaseSTTService):
    """AssemblyAI Universal Streaming (v3) and batch transcription through ``assemblyai``.

    Args:
        endpoint: a ``provider="assemblyai"`` endpoint (see :func:`assemblyai_endpoint`).
        clock: drives the Begin deadline, finish deadline and batch polling.
    """

    supported_options = frozenset({"language", "keywords", "punctuate"})

    def __init__(self, endpoint: STTEndpoint, *, clock: Clock | None = None) -> None:
        super().__init__(endpoint, clock=clock)
        opts = endpoint.connection.options
        self.format_turns = as_bool("format_turns", opts.get("format_turns", True))
        self._format_turns = self.format_turns
        chunk_ms = int(positive_number(opts, "chunk_ms", 100))
        if not wire.MIN_CHUNK_MS <= chunk_ms <= wire.MAX_CHUNK_MS:
            raise ConfigError(
                f"option chunk_ms must lie in {wire.MIN_CHUNK_MS}..{wire.MAX_CHUNK_MS}, "
                f"got {chunk_ms}",
                field="chunk_ms",
            )
        self.chunk_ms = chunk_ms
        self.begin_timeout = positive_number(opts, "begin_timeout", 5.0)
        self.connect_timeout = positive_number(opts, "connect_timeout", 5.0)
        self.finish_timeout = positive_number(opts, "finish_timeout", 10.0)
        self.poll_interval = positive_number(opts, "poll_interval", 3.0)
        self.request_timeout = positive_number(opts, "request_timeout", 60.0)
        self.batch_timeout = positive_number(opts, "batch_timeout", 900.0)
        self._params = {k: opts[k] for k in _PARAM_OPTIONS if opts.get(k) is not None}
        self._client: Any = None
        self._connect_error: STTError | None = None
        self._settled = asyncio.Event()
        self._terminated = False
        self._began = False
        self._last_end = 0.0
        self._rechunker = wire.Rechunker(ENGINE_FORMAT.bytes_per_second, 2, chunk_ms)
        self.session_id: str | None = None
        """The id of the last stream's ``Begin``."""

    # -- hosts ---------------------------------------------------------------------------
    def _hosts(self) -> tuple[str | None, str | None]:
        """``(rest_base_url, streaming_api_host)``; ``None`` keeps the SDK's default."""
        base = self.endpoint.connection.base_url
        if not base:
            return None, None
        return http_and_ws(base)

    def _key(self) -> str:
        key = self.endpoint.connection.api_key()
        if key is None:
            raise ConfigError(
                "AssemblyAI needs an API key; set connection.api_key_env",
                endpoint=self.endpoint.id,
                field="api_key_env",
            )
        return key

    # -- streaming hooks -----------------------------------------------------------------
    async def _open(self) -> None:
        key = self._key()
        _, ws_host = self._hosts()
        settings: dict[str, Any] = {
            "api_key": key,
            "connect_timeout": self.connect_timeout,
            "max_connection_retries": 0,  # the router fails over instead
            "terminate_timeout": self.finish_timeout,
        }
        if ws_host:
            settings["api_host"] = ws_host
        options = streaming.StreamingClientOptions(**settings)
        client = streaming.AsyncStreamingClient(options)
        self._client = client
        self._settled = asyncio.Event()
        self._terminated = False
        self._began = False
        self._last_end = 0.0
        self._rechunker = wire.Rechunker(ENGINE_FORMAT.bytes_per_second, 2, self.chunk_ms)
        self._connect_error = None
        E = streaming.StreamingEvents
        client.on(E.Begin, self._on_begin)
        client.on(E.Turn, self._on_turn)
        client.on(E.Termination, self._on_termination)
        client.on(E.Error, self._on_error)
        params = streaming.StreamingParameters(
            sample_rate=ENGINE_FORMAT.sample_rate,
            encoding=streaming.Encoding.pcm_s16le,
            **self.stream_params(),
        )
        await client.connect(params)  # never raises: failures arrive through on_error
        try:
            async with fail_after(self.clock, self.begin_timeout):
                await self._settled.wait()
        except TimeoutError:
            await self._close(terminate=False)
            raise ConnectTimeout(
                f"AssemblyAI sent no Begin within {self.begin_timeout:g}s of connecting",
                endpoint_id=self.endpoint.id,
            ) from None
        error = self._take_connect_error()
        if error is not None:
            await self._close(terminate=False)
            raise error

    def stream_params(self) -> dict[str, Any]:
        """The v3 connection parameters of the current stream: the endpoint's options,
        overridden by the stream's :class:`~sttrouter.options.StreamOptions`."""
        asked = self.stream_options
        params: dict[str, Any] = {**self._params, "format_turns": self.format_turns}
        if asked.punctuate is not None:
            params["format_turns"] = asked.punctuate
        if asked.keywords:
            params["keyterms_prompt"] = list(asked.keywords)
        if asked.language is not None:
            params["language_codes"] = [asked.language.split("-")[0].lower()]
        self._format_turns = bool(params["format_turns"])
        return params

    def _take_connect_error(self) -> STTError | None:
        error, self._connect_error = self._connect_error, None
        return error

    async def _send(self, pcm: bytes) -> None:
        self._check_reader()
        for chunk in self._rechunker.push(pcm):
            await self._client.stream(chunk)

    def _check_reader(self, client: Any = None) -> None:
        """Fail when the SDK's read task died on a message it could not parse.

        assemblyai 1.8 validates each known message with pydantic inside its read task; a
        ``ValidationError`` ends that task without any event, after which the stream would
        only stall. (A private attribute of a pinned SDK version: ``assemblyai>=1.8,<1.9``.)
        """
        task = getattr(client or self._client, "_read_task", None)
        if task is None or not task.done() or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            raise MalformedResponse(
                f"AssemblyAI sent a message the SDK could not parse: {exc}",
                endpoint_id=self.endpoint.id,
            ) from exc

    async def _finish(self) -> None:
        self._check_reader()
        client = self._client
        rest = self._rechunker.flush()
        if rest:
            await client.stream(rest)
        await client.force_endpoint()
        await self._close(terminate=True)
        if not self._terminated:
            self._check_reader(client)
            self._fail(
                StreamingFailed(
                    f"AssemblyAI sent no Termination within {self.finish_timeout:g}s of Terminate",
                    endpoint_id=self.endpoint.id,
                )
            )

    async def _abort(self) -> None:
        await self._close(terminate=False)

    async def _finalize(self) -> None:
        """AssemblyAI's ``ForceEndpoint``: it ends the current turn with a final for the audio
        so far. Audio still held for re-chunking goes out first when it makes a whole message
        (under 50 ms it waits for the next turn rather than being padded with silence)."""
        self._check_reader()
        client = self._client
        if client is None:
            return
        if self._rechunker.pending >= _MIN_CHUNK_BYTES:
            await client.stream(self._rechunker.flush())
        await client.force_endpoint()

    async def _close(self, *, terminate: bool) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with fail_after(self.clock, self.finish_timeout + 1):
                await client.disconnect(terminate=terminate)
        except Exception as exc:  # closing a broken socket; the stream's error stands
            log.debug("closing the AssemblyAI socket failed: %r", exc)

    # -- SDK event handlers (the SDK swallows their exceptions, so they never raise) ------
    async def _on_begin(self, _client: Any, event: Any) -> None:
        self._began = True
        self.session_id = str(getattr(event, "id", "")) or None
        self._settled.set()

    async def _on_turn(self, _client: Any, event: Any) -> None:
        try:
            turn = wire.parse_server_message(event.model_dump(mode="json"))
            if not isinstance(turn, wire.Turn):  # pragma: no cover - the SDK dispatched a Turn
                return
            result = turn_to_result(turn, format_turns=self._format_turns, after=self._last_end)
            if result.is_final:
                self._last_end = max(self._last_end, result.end)
            await self._emit(result)
        except Exception as exc:
            self._fail(exc)

    async def _on_termination(self, _client: Any, _event: Any) -> None:
        self._terminated = True

    async def _on_error(self, _client: Any, error: Any) -> None:
        mapped = self._streaming_error(error)
        if not self._began:
            self._connect_error = mapped
            self._settled.set()
        else:
            self._fail(mapped)

    def _streaming_error(self, error: Any) -> STTError:
        code = getattr(error, "code", None)
        message = str(error)
        eid = self.endpoint.id
        key_env = self.endpoint.connection.api_key_env
        if code is None:  # refused, DNS, TLS, timeout, a socket error: no code
            if self._began:
                return StreamingFailed(f"AssemblyAI stream broke: {message}", endpoint_id=eid)
            where = self._hosts()[1] or "streaming.assemblyai.com"
            return ConnectionFailed(
                f"cannot reach AssemblyAI at {where}: {message}", endpoint_id=eid
            )
        if not self._began and 100 <= code < 600:  # the upgrade was rejected
            return from_http_status(code, message, vendor=VENDOR, endpoint_id=eid, key_env=key_env)
        mapped = from_close_code(code, message, vendor=VENDOR, endpoint_id=eid, key_env=key_env)
        return mapped or StreamingFailed(
            f"AssemblyAI closed the stream: {message}", endpoint_id=eid
        )

    # -- batch and probe -----------------------------------------------------------------
    def _rest_client(self) -> Any:
        base, _ = self._hosts()
        settings = aai.Settings(api_key=self._key(), http_timeout=self.request_timeout)
        if base:
            settings.base_url = base
        return aai.AsyncClient(settings=settings)

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript:
        duration = fmt.seconds(len(data))
        async with self._rest_client() as client, fail_after(self.clock, self.batch_timeout):
            http = client.http_client
            url = await async_api.upload_file(http, to_wav(data, fmt))
            request = aai.types.TranscriptRequest(audio_url=url, punctuate=True, format_text=True)
            resp = await async_api.create_transcript(http, request)
            while resp.status not in ("completed", "error"):
                await self.clock.sleep(self.poll_interval)
                resp = await async_api.get_transcript(http, str(resp.id))
        t = wire.parse_transcript(resp.json())
        if t.status == wire.TranscriptStatus.ERROR:
            raise self._batch_error(t.error or "unknown error")
        words = _ms_words(t.words)
        result = STTResult(
            transcript=t.text or "",
            is_final=True,
            is_end_of_utterance=True,
            confidence=t.confidence,
            start=words[0].start if words else 0.0,
            duration=(words[-1].end - words[0].start) if words else duration,
            words=words,
            language=t.language_code,
        )
        return Transcript((result,), duration=duration)

    def _batch_error(self, text: str) -> STTError:
        eid = self.endpoint.id
        low = text.lower()
        if "audio" in low or "transcod" in low:
            return AudioFormatError(
                f"AssemblyAI could not transcribe the audio: {text}", endpoint_id=eid
            )
        return StreamingFailed(f"AssemblyAI transcription failed: {text}", endpoint_id=eid)

    async def probe(self) -> None:
        """List one transcript (``GET /v2/transcript?limit=1``): checks the host and the key."""
        try:
            async with self._rest_client() as client, fail_after(self.clock, self.request_timeout):
                await async_api.list_transcripts(
                    client.http_client, aai.types.ListTranscriptParameters(limit=1)
                )
        except Exception as exc:
            raise self._error(exc) from self._cause(exc)

    # -- errors --------------------------------------------------------------------------
    def _translate(self, exc: Exception) -> STTError:
        eid = self.endpoint.id
        if isinstance(exc, aai.types.AssemblyAIError) and exc.status_code is not None:
            return from_http_status(
                exc.status_code,
                str(exc),
                vendor=VENDOR,
                endpoint_id=eid,
                key_env=self.endpoint.connection.api_key_env,
            )
        if isinstance(exc, TimeoutError):
            return ConnectTimeout(f"AssemblyAI did not answer in time: {exc}", endpoint_id=eid)
        if isinstance(exc, httpx.TransportError | OSError):
            where = self._hosts()[0] or "api.assemblyai.com"
            return ConnectionFailed(f"cannot reach AssemblyAI at {where}: {exc!r}", endpoint_id=eid)
        return super()._translate(exc)
