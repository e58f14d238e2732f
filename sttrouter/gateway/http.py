"""The gateway's OpenAI-compatible ``POST /v1/audio/transcriptions``.

Multipart audio in (WAV; FLAC/OGG through soundfile), at most ``max_upload_bytes`` (25 MiB,
OpenAI's limit). Fields, as OpenAI's API defines them:

* ``model`` — one of ``GET /v1/models`` (a backend, an endpoint or route of the registry);
  left out, the gateway's default model; unknown, 404 ``model_not_found``;
* ``response_format`` — ``json``, ``text``, ``verbose_json``, ``srt`` or ``vtt``
  (:mod:`sttrouter.wire.openai_formats`); ``timestamp_granularities[]`` (``segment``,
  ``word``) with ``verbose_json``;
* ``stream=true`` — OpenAI's SSE events ``transcript.text.delta`` then
  ``transcript.text.done``, then ``data: [DONE]`` (``json`` and ``text`` only);
* ``language`` and ``prompt`` — passed to the engine as stream options: honoured, or
  refused with 400 ``unsupported_option`` naming the field; never silently dropped.

Every error is OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``
with a string ``code``. A request over ``max_requests`` running at once is refused with
503 and ``Retry-After``; the upload is parsed and decoded in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import attrs

from sttrouter.audio import AudioFormat, Encoding
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    CallerError,
    ConfigError,
    RateLimited,
    STTError,
    UnsupportedOption,
)
from sttrouter.gateway import protocol as gw
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult, Transcript
from sttrouter.service import STTService, stream_transcribe
from sttrouter.wire import openai as wire
from sttrouter.wire import openai_formats as fmt_

if TYPE_CHECKING:
    from sttrouter.gateway.app import GatewayServer

__all__ = ["HTTPError", "decode_upload", "error_response", "transcriptions", "unauthorized"]

log = logging.getLogger(__name__)

_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}
_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    429: "rate_limit_exceeded",
    503: "server_busy",
}


def error_response(
    server: GatewayServer,
    status: int,
    message: str,
    code: str | None = None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """OpenAI's JSON error object with ``status``, counted in the gateway's error metrics."""
    from starlette.responses import JSONResponse

    server.metrics.error(f"http_{status}")
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(
        wire.error_body(
            message, type=kind, code=code or _CODES.get(status, str(status)), param=param
        ),
        status_code=status,
        headers=dict(headers or {}),
    )


def unauthorized(server: GatewayServer) -> Any:
    return error_response(server, 401, "missing or wrong bearer token", "invalid_api_key")


@attrs.frozen
class HTTPError(Exception):
    """A request the gateway answers with an error object."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None


def _busy(server: GatewayServer, what: str) -> Any:
    after = server.config.retry_after_seconds
    return error_response(
        server,
        503,
        f"the gateway is at its limit of {what}; retry after {after} s",
        "server_busy",
        headers={"Retry-After": str(after)},
    )


def _backend_error(server: GatewayServer, exc: STTError) -> Any:
    log.warning("backend failed a transcription: %s", type(exc).__name__)
    server.backend_failed(exc)
    if isinstance(exc, UnsupportedOption):
        return error_response(server, 400, exc.message, "unsupported_option", param=exc.option)
    if isinstance(exc, RateLimited):
        after = server.config.retry_after_seconds
        return error_response(
            server, 429, "the backend is busy; retry later", headers={"Retry-After": str(after)}
        )
    if isinstance(exc, AudioFormatError):
        return error_response(server, 400, exc.message, "invalid_audio", param="file")
    if isinstance(exc, AuthenticationFailed):
        return error_response(server, 503, "the backend refused the gateway's credentials")
    if isinstance(exc, CallerError):
        return error_response(server, 503, f"the backend is misconfigured: {exc.message}")
    return error_response(server, 503, f"the backend failed: {type(exc).__name__}")


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is over ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            return None
    return bytes(body)


@attrs.frozen
class _Job:
    req: wire.TranscriptionRequest
    pcm: bytes
    fmt: AudioFormat
    options: StreamOptions


def _parse(content_type: str, body: bytes) -> _Job:
    """Everything about the request that needs no backend (runs in a worker thread)."""
    try:
        fields, files = wire.parse_multipart(content_type, body)
        req = wire.TranscriptionRequest.from_fields(fields)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    if req.response_format not in fmt_.RESPONSE_FORMATS:
        raise HTTPError(
            400,
            f"response_format {req.response_format!r} is not supported; use one of "
            + ", ".join(fmt_.RESPONSE_FORMATS),
            "invalid_value",
            "response_format",
        )
    if req.stream and req.response_format not in ("json", "text"):
        raise HTTPError(
            400,
            f"stream=true works with response_format json or text, not {req.response_format}",
            "invalid_value",
            "stream",
        )
    bad = set(req.timestamp_granularities) - fmt_.GRANULARITIES
    if bad:
        raise HTTPError(
            400,
            f"timestamp_granularities[] takes word and segment, not {sorted(bad)}",
            "invalid_value",
            "timestamp_granularities[]",
        )
    if req.timestamp_granularities and req.response_format != "verbose_json":
        raise HTTPError(
            400,
            "timestamp_granularities[] needs response_format verbose_json",
            "invalid_value",
            "timestamp_granularities[]",
        )
    try:
        options = StreamOptions(language=req.language, prompt=req.prompt, interim_results=False)
    except ConfigError as exc:
        raise HTTPError(400, exc.message, "invalid_value", "language") from None
    upload = files.get("file")
    if upload is None:
        raise HTTPError(400, "the field 'file' is required", "missing_required_parameter", "file")
    if not upload.data:
        raise HTTPError(400, "empty file: the upload holds no audio", "empty_file", "file")
    try:
        pcm, fmt = decode_upload(upload.data)
    except ValueError as exc:
        raise HTTPError(400, str(exc), "invalid_audio", "file") from None
    except AudioFormatError as exc:
        raise HTTPError(400, exc.message, "invalid_audio", "file") from None
    return _Job(req, pcm, fmt, options)


async def transcriptions(server: GatewayServer, request: Any) -> Any:
    """Handle one ``POST /v1/audio/transcriptions``."""
    server.metrics.request("transcription")
    if not server.authorized(request.headers, request.query_params):
        return unauthorized(server)
    if server.requests >= server.config.max_requests:
        return _busy(server, f"{server.config.max_requests} transcriptions at once")
    server.requests += 1
    try:
        return await _transcribe(server, request)
    finally:
        server.requests -= 1


async def _transcribe(server: GatewayServer, request: Any) -> Any:
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

    limit = server.config.max_upload_bytes
    body = await _read_body(request, limit)
    if body is None:
        return error_response(
            server, 413, f"upload is over {limit} bytes (25 MiB)", "file_too_large", param="file"
        )
    content_type = request.headers.get("content-type", "")
    try:
        job = await anyio.to_thread.run_sync(_parse, content_type, body)
        backend = _model(server, job.req.model)
    except HTTPError as exc:
        return error_response(server, exc.status, exc.message, exc.code, param=exc.param)
    seconds = job.fmt.seconds(len(job.pcm))
    server.metrics.audio(seconds)
    service = backend(gw.StreamConfig(language=job.req.language))
    if job.req.stream:
        return StreamingResponse(_sse(server, service, job), media_type="text/event-stream")
    started = server.clock.now()
    try:
        transcript = await _run(service, job)
    except STTError as exc:
        return _backend_error(server, exc)
    server.backend_worked()
    server.metrics.latency(server.clock.now() - started)
    form = job.req.response_format
    if form == "text":
        return PlainTextResponse(transcript.text)
    if form == "srt":
        return PlainTextResponse(fmt_.srt(transcript))
    if form == "vtt":
        return PlainTextResponse(fmt_.vtt(transcript), media_type="text/vtt")
    if form == "verbose_json":
        return JSONResponse(
            fmt_.verbose_json_body(
                transcript,
                seconds,
                language=job.options.language,
                granularities=job.req.timestamp_granularities or ("segment",),
            )
        )
    return JSONResponse(fmt_.json_body(transcript, seconds))


def _model(server: GatewayServer, name: str | None) -> Any:
    if name is None:
        return server.backend
    backend = server.models.get(name)
    if backend is None:
        raise HTTPError(
            404,
            f"the model {name!r} does not exist; GET /v1/models lists " + ", ".join(server.models),
            "model_not_found",
            "model",
        )
    return backend


async def _run(service: STTService, job: _Job, on_result: Any = None) -> Transcript:
    """Transcribe the upload: the engine's batch path when no option is asked for, else a
    stream that carries the options (an engine that cannot honour them refuses)."""
    if on_result is None and not job.options.requested():
        return await service.transcribe(job.pcm, job.fmt)
    return await stream_transcribe(
        service, job.pcm, job.fmt, options=job.options, on_result=on_result
    )


async def _sse(server: GatewayServer, service: STTService, job: _Job) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[STTResult | None] = asyncio.Queue()
    failure: list[STTError] = []
    seconds = job.fmt.seconds(len(job.pcm))

    async def run() -> None:
        try:
            await _run(service, job, lambda r: queue.put_nowait(r) if r.is_final else None)
        except STTError as exc:
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    parts: list[str] = []
    try:
        while (result := await queue.get()) is not None:
            text = result.transcript.strip()
            if text:
                delta = text if not parts else " " + text
                parts.append(delta)
                yield wire.sse_event(fmt_.delta_event(delta))
        await task
        if failure:
            exc = failure[0]
            log.warning("backend failed a streamed transcription: %s", type(exc).__name__)
            server.backend_failed(exc)
            server.metrics.error("http_stream")
            message = (
                exc.message
                if isinstance(exc, UnsupportedOption)
                else f"the backend failed: {type(exc).__name__}"
            )
            yield wire.sse_event(wire.error_body(message, type="server_error", code="server_error"))
        else:
            server.backend_worked()
            yield wire.sse_event(fmt_.done_event("".join(parts), seconds))
        yield wire.sse_done()  # vLLM's terminator; OpenAI's SDK stops at it too
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def decode_upload(data: bytes) -> tuple[bytes, AudioFormat]:
    """PCM and its format from an uploaded WAV (or FLAC/OGG through soundfile).

    Raises:
        ValueError: the file cannot be decoded or holds no samples.
    """
    if not data:
        raise ValueError("empty file: the upload holds no audio")
    if data[:4] == b"RIFF":
        try:
            pcm, rate, channels = wire.wav_pcm(data)
        except ValueError as exc:
            raise ValueError(f"the WAV file cannot be read: {exc}") from None
        if not pcm:
            raise ValueError("empty file: the WAV file holds no samples")
        return pcm, AudioFormat(rate, channels, Encoding.PCM_S16LE)
    try:
        import numpy as np
        import soundfile
    except ImportError as exc:  # pragma: no cover - soundfile ships with the server extra
        raise ValueError("only WAV uploads are supported without soundfile") from exc
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:
        raise ValueError(
            "the file is not audio this server can decode; send WAV, FLAC or OGG"
        ) from None
    if not samples.size:
        raise ValueError("empty file: the audio file holds no samples")
    fmt = AudioFormat(int(rate), int(samples.shape[1]), Encoding.PCM_F32LE)
    return np.ascontiguousarray(samples, dtype="<f4").tobytes(), fmt
