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
``reconnect_attempts``; ``interim_results``. The API key, when any, comes from
``connection.api_key_env`` and is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat
from sttrouter.clock import Clock, fail_after
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
    EndpointMisconfigured,
    MalformedResponse,
    MissingDependency,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    StreamStalled,
    STTError,
)
from sttrouter.gateway import protocol as gw
from sttrouter.panel.endpoint import STTEndpoint
from sttrouter.providers import _openai_wire as wire
from sttrouter.providers._decoding import is_repetitive, token_budget, trim_repetition
from sttrouter.providers.segmenter import LOW_CONFIDENCE, Segmenter, SegmentResult
from sttrouter.providers.vad import VADConfig
from sttrouter.results import STTResult, Transcript
from sttrouter.service import BaseSTTService

__all__ = ["GLMServerSTTService", "OpenAITranscriptionClient"]

log = logging.getLogger(__name__)

ZAI_MAX_SECONDS: Final = 30.0
MAX_REPLAY_BYTES: Final = ENGINE_FORMAT.bytes_for(60.0)
"""Gateway mode keeps at most this much unfinalised audio for a replay after a reconnect."""
Flavor = Literal["vllm", "sglang", "zai"]


def _guess_flavor(base_url: str) -> Flavor:
    host = urlsplit(base_url).hostname or ""
    return "zai" if host.endswith(("z.ai", "bigmodel.cn")) else "vllm"


def _api_root(base_url: str) -> str:
    """``…/v1`` for a bare server URL; a URL with a path (Z.AI's ``/api/paas/v4``) as given."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path if parts.path not in ("", "/") else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _http_error(status: int, body: bytes, headers: Mapping[str, str]) -> STTError:
    err = wire.parse_error(status, body)
    what = f"HTTP {status}: {err.message}"
    if status in (401, 403):
        return AuthenticationFailed(f"{what}; check the API key in the endpoint's api_key_env")
    if status == 402:
        return QuotaExceeded(what)
    if status == 429:
        retry = headers.get("retry-after")
        try:
            after = float(retry) if retry else None
        except ValueError:
            after = None
        return RateLimited(what, retry_after=after)
    if status == 404:
        return EndpointMisconfigured(
            f"{what}; check base_url and the 'model' option (GET /v1/models lists it)"
        )
    if status == 413:
        return AudioFormatError(f"{what}; the upload is over the server's size limit")
    if 400 <= status < 500:
        return EndpointMisconfigured(f"{what}; the server rejected the request's settings")
    return StreamingFailed(what)


def _translate_transport(exc: Exception) -> STTError:
    if isinstance(exc, STTError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(f"connect timed out: {exc}")
    if isinstance(exc, httpx.ConnectError):
        return ConnectionFailed(f"cannot connect: {exc}")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return StreamStalled(f"the server did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPError | OSError):
        return StreamingFailed(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):
        return MalformedResponse(f"unparseable answer: {exc}")
    return StreamingFailed(f"unexpected {type(exc).__name__}: {exc}")


class OpenAITranscriptionClient:
    """Batch GLM-ASR over ``POST /v1/audio/transcriptions``; a segmenter batch engine.

    Args:
        base_url: the server (``http://host:8000``) or API root (``…/api/paas/v4``).
        api_key: sent as a Bearer token.
        model: served model name (vLLM/SGLang default to theirs; Z.AI: ``glm-asr-2512``).
        flavor: which server (error shapes, Z.AI's 30 s limit, which fields to send).
        language: ISO-639-1 hint.
        sse: ask for ``stream=true`` and parse the SSE chunks.
        upload_format: ``wav`` or ``flac`` (needs soundfile).
        timeout: seconds per request.
        tokens_per_second: token budget scale (see :func:`token_budget`).
        repetition_penalty: used on the one retry after a loop.
        client: an ``httpx.AsyncClient`` to use (tests pass a transport); made when ``None``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        flavor: Flavor = "vllm",
        language: str | None = None,
        sse: bool = False,
        upload_format: Literal["wav", "flac"] = "wav",
        timeout: float = 30.0,
        tokens_per_second: float = 10.0,
        repetition_penalty: float = 1.15,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if flavor not in ("vllm", "sglang", "zai"):
            raise ConfigError(f"flavor {flavor!r} is unknown; use vllm, sglang or zai")
        if upload_format not in ("wav", "flac"):
            raise ConfigError(f"upload_format {upload_format!r} is unknown; use wav or flac")
        self.api_root = _api_root(base_url)
        parts = urlsplit(base_url)
        self.server_root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.model = model or ("glm-asr-2512" if flavor == "zai" else None)
        self.flavor: Flavor = flavor
        self.language = language
        self.sse = sse
        self.upload_format = upload_format
        self.tokens_per_second = tokens_per_second
        self.repetition_penalty = repetition_penalty
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )
        if client is not None and api_key:
            self._client.headers.update(headers)
        self.requests = 0
        self.retries = 0

    @property
    def max_seconds(self) -> float | None:
        """The longest clip one request may carry (Z.AI: 30 s)."""
        return ZAI_MAX_SECONDS if self.flavor == "zai" else None

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def probe(self) -> None:
        """``GET {api_root}/models`` (checks the key too), else ``GET /health``; bills nothing."""
        try:
            resp = await self._client.get(f"{self.api_root}/models")
            if resp.status_code == 200:
                return
            if resp.status_code not in (404, 405):
                raise _http_error(resp.status_code, resp.content, resp.headers)
            resp = await self._client.get(f"{self.server_root}/health")
            if resp.status_code != 200:
                raise _http_error(resp.status_code, resp.content, resp.headers)
        except Exception as exc:
            raise _translate_transport(exc) from exc

    async def transcribe_segment(self, pcm: bytes, sample_rate: int) -> SegmentResult:
        """Transcribe one clip, guarding against repetition loops (one retry with a penalty)."""
        seconds = len(pcm) / 2 / sample_rate
        if self.max_seconds is not None and seconds > self.max_seconds + 1e-6:
            raise AudioFormatError(
                f"{seconds:.1f} s of audio is over the server's {self.max_seconds:g} s limit; "
                "stream it (the segmenter cuts ≤ 30 s segments)"
            )
        upload = self._encode(pcm, sample_rate)
        budget = token_budget(seconds, tokens_per_second=self.tokens_per_second)
        text, finish = await self._request(upload, budget, penalty=None)
        if not (is_repetitive(text) or finish == "length"):
            return SegmentResult(text)
        self.retries += 1
        log.info("GLM-ASR output looped or ran out of tokens; retrying with a penalty")
        text, finish = await self._request(upload, budget, penalty=self.repetition_penalty)
        if is_repetitive(text):
            return SegmentResult(trim_repetition(text), LOW_CONFIDENCE, low_confidence=True)
        return SegmentResult(text, low_confidence=finish == "length")

    def _encode(self, pcm: bytes, sample_rate: int) -> wire.FormFile:
        if self.upload_format == "flac":
            try:
                import numpy as np
                import soundfile
            except ImportError as exc:  # pragma: no cover - soundfile ships with glm-server
                raise MissingDependency("soundfile", "glm-server") from exc
            out = io.BytesIO()
            soundfile.write(
                out, np.frombuffer(pcm, dtype="<i2"), sample_rate, format="FLAC", subtype="PCM_16"
            )
            data, name, ctype = out.getvalue(), "audio.flac", "audio/flac"
        else:
            data, name, ctype = wire.wav_bytes(pcm, sample_rate), "audio.wav", "audio/wav"
        if len(data) > wire.MAX_UPLOAD_BYTES:
            raise AudioFormatError(
                f"upload of {len(data)} bytes is over the 25 MB limit of OpenAI-compatible "
                "servers; send shorter clips (stream them: the segmenter cuts ≤ 30 s)"
            )
        return wire.FormFile(name, ctype, data)

    async def _request(
        self, upload: wire.FormFile, budget: int, *, penalty: float | None
    ) -> tuple[str, str | None]:
        tuned = self.flavor != "zai"  # Z.AI documents no sampling fields
        req = wire.TranscriptionRequest(
            model=self.model,
            language=self.language,
            response_format="json",
            stream=self.sse,
            temperature=0.0 if tuned else None,
            max_completion_tokens=budget if tuned else None,
            repetition_penalty=penalty if tuned else None,
        )
        content_type, body = wire.encode_multipart(req.to_fields(), {"file": upload})
        url = f"{self.api_root}/audio/transcriptions"
        self.requests += 1
        try:
            if self.sse:
                return await self._stream(url, content_type, body)
            resp = await self._client.post(
                url, content=body, headers={"content-type": content_type}
            )
            if resp.status_code != 200:
                raise _http_error(resp.status_code, resp.content, resp.headers)
            parsed = wire.parse_transcription(resp.headers.get("content-type", ""), resp.content)
            return parsed.text.strip(), None
        except Exception as exc:
            raise _translate_transport(exc) from exc

    async def _stream(self, url: str, content_type: str, body: bytes) -> tuple[str, str | None]:
        headers = {"content-type": content_type, "accept": "text/event-stream"}
        async with self._client.stream("POST", url, content=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise _http_error(resp.status_code, await resp.aread(), resp.headers)
            decoder = wire.SSEDecoder()
            events: list[wire.StreamEvent] = []
            ended = False
            async for chunk in resp.aiter_bytes():
                for data in decoder.feed(chunk):
                    events.extend(wire.parse_stream_event(data))
            for data in decoder.close():
                events.extend(wire.parse_stream_event(data))
        finish: str | None = None
        for ev in events:
            if ev.kind == "error":
                assert ev.error is not None
                raise StreamingFailed(f"the server failed mid-stream: {ev.error.message}")
            if ev.kind == "done":
                finish = ev.finish_reason
            ended = ended or ev.kind == "end"
        if not ended:
            raise MalformedResponse("the event stream ended without [DONE]")
        return wire.iter_text(iter(events)).strip(), finish


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
        self.language: str | None = opts.get("language")
        self.vad_config = _vad_config(opts)
        self.flavor: Flavor = opts.get("flavor") or _guess_flavor(self.base_url)
        max_seg = float(opts.get("max_segment_seconds", 30.0))
        if self.flavor == "zai":
            max_seg = min(max_seg, ZAI_MAX_SECONDS)
        self.max_segment_seconds = max_seg
        self.max_concurrency = int(opts.get("max_concurrency", 2))
        interim = opts.get("interim_interval")
        self.interim_interval = float(interim) if interim is not None else None
        self.interim_results = bool(opts.get("interim_results", True))
        self.frame_seconds = float(opts.get("frame_seconds", 0.1))
        if not gw.MIN_FRAME_SECONDS <= self.frame_seconds <= gw.MAX_FRAME_SECONDS:
            raise ConfigError(
                f"frame_seconds {self.frame_seconds} must lie in 0.02..0.5",
                endpoint=endpoint.id,
                field="frame_seconds",
            )
        self.reconnect_attempts = int(opts.get("reconnect_attempts", 3))
        self.timeout = float(opts.get("timeout", 30.0))
        self._http_client = http_client
        self._segmenter: Segmenter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ws: _GatewayStream | None = None

    # -- openai mode -------------------------------------------------------------------------
    def _openai_client(self) -> OpenAITranscriptionClient:
        """A fresh client (its own connection pool unless ``http_client`` was given)."""
        opts = self.endpoint.connection.options
        return OpenAITranscriptionClient(
            self.base_url,
            api_key=self.endpoint.connection.api_key(),
            model=opts.get("model"),
            flavor=self.flavor,
            language=self.language,
            sse=bool(opts.get("sse", False)),
            upload_format=opts.get("upload_format", "wav"),
            timeout=self.timeout,
            tokens_per_second=float(opts.get("tokens_per_second", 10.0)),
            repetition_penalty=float(opts.get("repetition_penalty", 1.15)),
            client=self._http_client,
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
            raise _translate_transport(exc) from exc
        if resp.status_code != 200:
            raise _http_error(resp.status_code, resp.content, resp.headers)

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript:
        if self.mode != "openai":
            return await super()._transcribe(data, fmt)
        converter = AudioConverter(fmt, ENGINE_FORMAT)
        pcm = converter.convert(data) + converter.flush()
        seconds = ENGINE_FORMAT.seconds(len(pcm))
        if seconds > self.max_segment_seconds:
            return await super()._transcribe(data, fmt)  # VAD-cut into ≤ 30 s requests
        self._metrics.audio_sent(fmt.seconds(len(data)), self.clock.now())
        started = self.clock.now()
        client = self._openai_client()
        try:
            result = await client.transcribe_segment(pcm, ENGINE_FORMAT.sample_rate)
        except Exception as exc:
            self._metrics.error()
            raise self._translate(exc) from exc
        finally:
            await client.aclose()
        now = self.clock.now()
        final = STTResult(
            transcript=result.text,
            is_final=True,
            is_end_of_utterance=True,
            confidence=result.confidence,
            duration=seconds,
            latency=now - started,
            timestamp=now,
            endpoint_id=self.endpoint.id,
        )
        self._metrics.result_received(
            latency=final.latency, is_final=True, words=len(result.text.split()), now=now
        )
        return Transcript.from_results([final], duration=fmt.seconds(len(data)))

    # -- hooks -------------------------------------------------------------------------------
    async def _open(self) -> None:
        if self.mode == "openai":
            client = self._openai_client()
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
        ws = self._ws = _GatewayStream(self)
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

    def _translate(self, exc: Exception) -> STTError:
        if not isinstance(exc, STTError):
            exc = _translate_ws(exc)
        return super()._translate(exc)


async def _close_at_end(close: Callable[[], Awaitable[None]]) -> None:
    """Live as long as the stream; its teardown cancels this, which closes the resource."""
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await close()


# -- gateway mode --------------------------------------------------------------------------
def _ws_module() -> Any:
    try:
        from websockets.asyncio import client
    except ImportError as exc:  # pragma: no cover - websockets is a core dependency
        raise MissingDependency("websockets", "glm-server") from exc
    return client


def _translate_ws(exc: Exception) -> STTError:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return _http_error(status, bytes(exc.response.body or b""), dict(exc.response.headers))
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
    return _translate_transport(exc)


def _error_to_stt(msg: gw.ErrorMessage) -> STTError:
    text = f"gateway error {msg.code}: {msg.message}"
    if msg.code == gw.ErrorCode.AUTHENTICATION_FAILED:
        return AuthenticationFailed(f"{text}; check the token in the endpoint's api_key_env")
    if msg.code == gw.ErrorCode.RATE_LIMIT_EXCEEDED:
        return RateLimited(text)
    if msg.code == gw.ErrorCode.AUDIO_FORMAT_ERROR:
        return AudioFormatError(text)
    return StreamingFailed(text)


class _GatewayStream:
    """One stream over the gateway protocol, with reconnect-and-replay."""

    def __init__(self, service: GLMServerSTTService) -> None:
        self.svc = service
        self.url = service.base_url.rstrip("/")
        if not self.url.endswith("/v1/audio/stream"):
            self.url += "/v1/audio/stream"
        self.frame_bytes = ENGINE_FORMAT.bytes_for(service.frame_seconds)
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
        for attempt in range(self.svc.reconnect_attempts + 1):
            try:
                await self._connect()
                return
            except Exception as exc:
                err = _translate_ws(exc)
                if not err.retryable or attempt == self.svc.reconnect_attempts:
                    raise err from exc
                log.info(
                    "gateway connect failed (%s); retrying in %.1fs", type(err).__name__, delay
                )
                await self.svc.clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        client = _ws_module()
        key = self.svc.endpoint.connection.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with fail_after(self.svc.clock, self.svc.timeout):
            self.conn = await client.connect(
                self.url,
                additional_headers=headers,
                open_timeout=None,
                compression=None,
                proxy=None,
                max_size=1 << 20,
            )
        config = gw.StreamConfig(
            language=self.svc.language, interim_results=self.svc.interim_results
        )
        await self.conn.send(gw.serialize(gw.Start(config)))
        self.sent = 0
        self.generation += 1
        self.offset = self.replay_from
        self.closed = asyncio.Event()
        self.receiver = self.svc._spawn(self._receive(self.conn, self.closed))
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
            err = _translate_ws(cause)
            if self.ending or not err.retryable or self.svc.reconnect_attempts == 0:
                raise err from cause
            log.warning("gateway connection lost (%s); reconnecting", type(err).__name__)
            await self._drop_connection()
            delay = 0.2
            for attempt in range(self.svc.reconnect_attempts):
                await self.svc.clock.sleep(delay)
                try:
                    await self._connect()
                    self.reconnects += 1
                    return
                except Exception as exc:
                    err = _translate_ws(exc)
                    if not err.retryable or attempt == self.svc.reconnect_attempts - 1:
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
                    await self.svc._emit(result)
                elif isinstance(msg, gw.ErrorMessage):
                    self._on_error(msg)
            if not self.ending and not self.dead and self.conn is conn:
                # the gateway ended the session on its own (restart, 1000/1001): resume
                self.svc._spawn(self._reconnect(StreamingFailed("closed"), self.generation))
        except ConnectionClosed as exc:
            if not self.ending and not self.dead and self.conn is conn:
                self.svc._spawn(self._reconnect(exc, self.generation))
            elif self.ending and not isinstance(exc, ConnectionClosedOK):
                self.failure = _translate_ws(exc)
        except gw.ProtocolError as exc:
            raise MalformedResponse(f"the gateway sent an invalid message: {exc}") from exc
        finally:
            closed.set()

    def _on_error(self, msg: gw.ErrorMessage) -> None:
        if msg.code == gw.ErrorCode.BUFFER_OVERFLOW:
            # the gateway dropped audio: this stream no longer covers every sample
            self.dead = True
            self.svc._fail(StreamingFailed(f"gateway dropped audio ({msg.message})"))
        elif msg.recoverable:
            log.warning("gateway reported %s (recoverable): %s", msg.code, msg.message)
        else:
            self.dead = True
            self.svc._fail(_error_to_stt(msg))

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
            raise _translate_ws(exc) from exc
        try:
            async with fail_after(self.svc.clock, self.svc.timeout):
                await closed.wait()
        except TimeoutError as exc:
            raise StreamStalled(
                f"the gateway sent no closing final within {self.svc.timeout:g}s of 'end'"
            ) from exc
        finally:
            await self._drop_connection()
        if self.failure is not None:
            raise self.failure

    async def close(self) -> None:
        self.ending = True
        await self._drop_connection()
