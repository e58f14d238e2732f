"""GLM-ASR on a server: the OpenAI-compatible API (vLLM, SGLang, Z.AI) or the streaming gateway.

``endpoint.connection.options["mode"]`` picks how :class:`GLMServerSTTService` talks:

``openai`` (default)
    GLM-ASR has no audio-in streaming on any server, so the stream is cut into utterances by
    the :mod:`~sttrouter.providers.segmenter` (VAD, ≤ 30 s) and each one is sent as a
    multipart ``POST {base_url}/v1/audio/transcriptions`` (16 kHz mono WAV or FLAC, 25 MB
    cap), optionally with ``stream=true`` (SSE; vLLM, SGLang and Z.AI chunk shapes). Each
    request carries a token budget scaled with the segment's duration; a repetition loop
    (or a budget run out) is retried once with ``repetition_penalty``, else trimmed and
    marked low-confidence. ``probe()`` is ``GET /v1/models`` (falling back to ``/health``).

``gateway``
    A WebSocket client of UnaMentis' ``/v1/audio/stream`` protocol
    (:mod:`sttrouter.gateway.protocol`), e.g. ``sttrouter serve``: ``start`` with the config,
    binary PCM16 frames re-chunked to ``frame_seconds`` (20–500 ms), ``end``; partial and
    final results; errors with ``recoverable``. A connection that drops mid-stream is
    re-opened with exponential backoff (on the injected clock) and the audio since the last
    final is replayed, so nothing is lost; results are re-based onto this stream's timeline.

Options (``connection.options``): ``mode``; ``model``; ``language``; ``flavor`` (``vllm``,
``sglang`` or ``zai``; guessed from the URL); ``sse`` (bool); ``upload_format`` (``wav`` or
``flac``); ``timeout`` (seconds per request); ``max_concurrency``; ``interim_interval``;
``max_segment_seconds``; ``vad`` (a table of :class:`~sttrouter.providers.vad.VADConfig`
fields); ``tokens_per_second``; ``repetition_penalty``; ``frame_seconds``;
``reconnect_attempts``; ``interim_results``; ``max_response_bytes`` (the cap on one
answer's body, default 256 KiB; a 200 that is not the JSON asked for, or is over the cap,
is :class:`~sttrouter.errors.MalformedResponse`). The API key, when any, comes from
``connection.api_key_env`` and is sent as ``Authorization: Bearer``.

Stream options (:class:`~sttrouter.options.StreamOptions`): in ``openai`` mode ``language``
(sent as its ISO-639-1 code), ``prompt`` and ``keywords`` (appended to the request's
``prompt``; vLLM's GLM-ASR validates the language and ignores the prompt, Z.AI uses it);
in ``gateway`` mode ``language``. ``finalize()`` cuts the current segment in ``openai``
mode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat
from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError, STTError
from sttrouter.options import StreamOptions
from sttrouter.providers._gateway_client import (
    GatewaySettings,
    GatewayStream,
    translate_ws,
    warn_reconnect_attempts,
)
from sttrouter.providers._openai_client import (
    MAX_RESPONSE_BYTES,
    ZAI_MAX_SECONDS,
    Flavor,
    OpenAITranscriptionClient,
    guess_flavor,
    http_error,
    translate_transport,
)
from sttrouter.providers.segmenter import Segmenter
from sttrouter.providers.vad import VADConfig
from sttrouter.results import STTResult, Transcript
from sttrouter.service import BaseSTTService
from sttrouter.wire import gateway as gw

__all__ = ["GLMServerSTTService", "OpenAITranscriptionClient", "request_prompt"]


def _number(
    options: Mapping[str, Any],
    name: str,
    default: float,
    endpoint: str,
    *,
    low: float,
    high: float = float("inf"),
) -> float:
    raw = options.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"option {name!r} must be a number, got {raw!r}", endpoint=endpoint, field=name
        ) from None
    if not low <= value <= high:
        span = f"{low:g}..{high:g}" if high != float("inf") else f"at least {low:g}"
        raise ConfigError(
            f"option {name!r} must be {span}, got {value:g}", endpoint=endpoint, field=name
        )
    return value


_OPENAI_OPTIONS = frozenset({"language", "prompt", "keywords"})
_GATEWAY_OPTIONS = frozenset({"language"})


def _iso639_1(language: str | None) -> str | None:
    """The primary subtag of a BCP-47 code (``en-US`` → ``en``), what the servers validate."""
    return language.split("-")[0].lower() if language else None


def request_prompt(options: StreamOptions) -> str | None:
    """The OpenAI-compatible ``prompt`` for a stream: its prompt, then its keywords.

    The field is context text (Whisper-style), so keywords are appended as a comma-separated
    list, which is how such servers are told about words to expect.
    """
    parts = [options.prompt.strip()] if options.prompt and options.prompt.strip() else []
    if options.keywords:
        parts.append(", ".join(options.keywords))
    return " ".join(parts) or None


def _vad_config(options: Mapping[str, Any]) -> VADConfig:
    raw = options.get("vad") or {}
    if isinstance(raw, VADConfig):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError("option 'vad' must be a table of VADConfig fields", field="vad")
    try:
        return VADConfig(**raw)
    except TypeError as exc:
        raise ConfigError(f"option 'vad': {exc}", field="vad") from exc


class GLMServerSTTService(BaseSTTService):
    """GLM-ASR served over the network, in ``openai`` or ``gateway`` mode (module docstring).

    Args:
        endpoint: a ``glm_server`` endpoint with ``connection.base_url`` set.
        clock: the clock for backoff, deadlines and latency.
        http_client: an ``httpx.AsyncClient`` to use in ``openai`` mode (custom transports).
    """

    def __init__(
        self,
        endpoint: STTEndpoint,
        *,
        clock: Clock | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(endpoint, clock=clock)
        conn = endpoint.connection
        if not conn.base_url:
            raise ConfigError(
                "a glm_server endpoint needs connection.base_url (http://host:8000 for "
                "vLLM/SGLang, ws://host:8080 for a gateway)",
                endpoint=endpoint.id,
                field="base_url",
            )
        self.base_url = conn.base_url
        opts = conn.options
        self.mode = str(opts.get("mode", "openai"))
        if self.mode not in ("openai", "gateway"):
            raise ConfigError(
                f"mode {self.mode!r} is unknown; use 'openai' or 'gateway'",
                endpoint=endpoint.id,
                field="mode",
            )
        eid = endpoint.id
        self.language: str | None = opts.get("language")
        self.vad_config = _vad_config(opts)
        self.flavor: Flavor = opts.get("flavor") or guess_flavor(self.base_url)
        if self.flavor not in ("vllm", "sglang", "zai"):
            raise ConfigError(
                f"flavor {self.flavor!r} is unknown; use vllm, sglang or zai",
                endpoint=eid,
                field="flavor",
            )
        max_seg = _number(opts, "max_segment_seconds", 30.0, eid, low=1.0, high=600.0)
        if self.flavor == "zai":
            max_seg = min(max_seg, ZAI_MAX_SECONDS)
        self.max_segment_seconds = max_seg
        self.max_concurrency = int(_number(opts, "max_concurrency", 2, eid, low=1, high=64))
        interim = opts.get("interim_interval")
        self.interim_interval = (
            None if interim is None else _number(opts, "interim_interval", 1.0, eid, low=0.05)
        )
        self.interim_results = bool(opts.get("interim_results", True))
        self.frame_seconds = _number(
            opts, "frame_seconds", 0.1, eid, low=gw.MIN_FRAME_SECONDS, high=gw.MAX_FRAME_SECONDS
        )
        if "reconnect_attempts" in opts:  # deprecated: the routed session replays
            warn_reconnect_attempts(eid)
        self.reconnect_attempts = int(_number(opts, "reconnect_attempts", 3, eid, low=0, high=20))
        self.timeout = _number(opts, "timeout", 30.0, eid, low=0.1)
        self._http_client = http_client
        self.supported_options = _OPENAI_OPTIONS if self.mode == "openai" else _GATEWAY_OPTIONS
        self._segmenter: Segmenter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ws: GatewayStream | None = None

    # -- openai mode -------------------------------------------------------------------------
    def _openai_client(self, options: StreamOptions | None = None) -> OpenAITranscriptionClient:
        """A fresh client (its own connection pool unless ``http_client`` was given), with
        the language and prompt of ``options`` where they are set."""
        opts = self.endpoint.connection.options
        options = options or StreamOptions()
        return OpenAITranscriptionClient(
            self.base_url,
            api_key=self.endpoint.connection.api_key(),
            model=opts.get("model"),
            flavor=self.flavor,
            language=_iso639_1(options.language) or self.language,
            prompt=request_prompt(options),
            sse=bool(opts.get("sse", False)),
            upload_format=opts.get("upload_format", "wav"),
            timeout=self.timeout,
            tokens_per_second=float(opts.get("tokens_per_second", 10.0)),
            repetition_penalty=float(opts.get("repetition_penalty", 1.15)),
            client=self._http_client,
            max_response_bytes=int(opts.get("max_response_bytes", MAX_RESPONSE_BYTES)),
        )

    async def probe(self) -> None:
        if self.mode == "openai":
            openai = self._openai_client()
            try:
                await openai.probe()
            finally:
                await openai.aclose()
            return
        parts = urlsplit(self.base_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        url = urlunsplit((scheme, parts.netloc, "/health", "", ""))
        try:
            async with httpx.AsyncClient(timeout=min(self.timeout, 10.0)) as client:
                resp = await client.get(url)
        except Exception as exc:
            raise translate_transport(exc) from exc
        if resp.status_code != 200:
            raise http_error(resp.status_code, resp.content, resp.headers)

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript | None:
        """One request for a clip that fits one segment; longer clips (and gateway mode)
        are streamed, so the segmenter cuts them into ≤ 30 s requests."""
        if self.mode != "openai":
            return None
        converter = AudioConverter(fmt, ENGINE_FORMAT)
        pcm = converter.convert(data) + converter.flush()
        seconds = ENGINE_FORMAT.seconds(len(pcm))
        if seconds > self.max_segment_seconds:
            return None
        client = self._openai_client()
        try:
            result = await client.transcribe_segment(pcm, ENGINE_FORMAT.sample_rate)
        finally:
            await client.aclose()
        final = STTResult(
            transcript=result.text,
            is_final=True,
            is_end_of_utterance=True,
            confidence=result.confidence,
            duration=seconds,
        )
        return Transcript((final,), duration=fmt.seconds(len(data)))

    # -- hooks -------------------------------------------------------------------------------
    async def _open(self) -> None:
        if self.mode == "openai":
            client = self._openai_client(self.stream_options)
            self._segmenter = Segmenter(
                client,
                self._emit,
                vad=self.vad_config,
                max_segment_seconds=self.max_segment_seconds,
                max_concurrency=self.max_concurrency,
                interim_interval=self.interim_interval,
            )
            self._runner = self._spawn(self._segmenter.run())
            self._spawn(_close_at_end(client.aclose))
            return
        ws = self._ws = GatewayStream(
            GatewaySettings(
                url=self.base_url,
                api_key=self.endpoint.connection.api_key,
                language=self.stream_options.language or self.language,
                interim_results=self.interim_results and self.stream_options.interim_results,
                frame_seconds=self.frame_seconds,
                reconnect_attempts=self.reconnect_attempts,
                timeout=self.timeout,
            ),
            clock=self.clock,
            emit=self._emit,
            fail=self._fail,
            spawn=self._spawn,
        )
        self._spawn(_close_at_end(ws.close))
        await ws.open()

    async def _send(self, pcm: bytes) -> None:
        if self._segmenter is not None:
            await self._segmenter.push(pcm)
        elif self._ws is not None:
            await self._ws.send(pcm)

    async def _finish(self) -> None:
        if self._segmenter is not None:
            assert self._runner is not None
            await self._segmenter.finish()
            await self._runner
            self._segmenter = None
        elif self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.finish()

    async def _abort(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()
            self._segmenter = None
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()

    async def _finalize(self) -> None:
        """``openai`` mode cuts the current segment now; ``gateway`` mode sends the gateway's
        ``finalize`` message, and the gateway's engine cuts its utterance."""
        if self._segmenter is not None:
            await self._segmenter.cut()
        if self._ws is not None:
            await self._ws.finalize()

    def _translate(self, exc: Exception) -> STTError:
        if not isinstance(exc, STTError):
            exc = translate_ws(exc)
        return super()._translate(exc)


async def _close_at_end(close: Callable[[], Awaitable[None]]) -> None:
    """Live as long as the stream; its teardown cancels this, which closes the resource."""
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await close()
