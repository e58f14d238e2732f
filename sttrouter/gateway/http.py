"""The gateway's OpenAI-compatible ``POST /v1/audio/transcriptions``.

Multipart WAV/FLAC in; ``json`` or ``text`` out, or Server-Sent Events (vLLM's chunk shape)
with ``stream=true``. Errors are JSON error objects with the matching HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sttrouter.audio import AudioFormat, Encoding
from sttrouter.errors import AudioFormatError, RateLimited, STTError
from sttrouter.gateway import protocol as gw
from sttrouter.results import STTResult
from sttrouter.service import STTService, stream_transcribe
from sttrouter.wire import openai as wire

if TYPE_CHECKING:
    from sttrouter.gateway.app import GatewayServer

__all__ = ["decode_upload", "error_response", "transcriptions", "unauthorized"]

log = logging.getLogger(__name__)


def _error_type(status: int) -> str:
    return {401: "AuthenticationError", 413: "BadRequestError", 429: "RateLimitError"}.get(
        status, "BadRequestError" if status < 500 else "ServiceUnavailableError"
    )


def error_response(
    server: GatewayServer, status: int, message: str, code: str | int | None = None
) -> Any:
    """A JSON error object with ``status``, counted in the gateway's error metrics."""
    from starlette.responses import JSONResponse

    server.metrics.error(f"http_{status}")
    return JSONResponse(
        wire.error_body(message, type=_error_type(status), code=code or status),
        status_code=status,
    )


def unauthorized(server: GatewayServer) -> Any:
    return error_response(server, 401, "missing or wrong bearer token", "invalid_api_key")


def _backend_error(server: GatewayServer, exc: STTError) -> Any:
    log.warning("backend failed a transcription: %s", type(exc).__name__)
    if isinstance(exc, RateLimited):
        return error_response(server, 429, "the backend is busy; retry later")
    if isinstance(exc, AudioFormatError):
        return error_response(server, 400, exc.message)
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


async def transcriptions(server: GatewayServer, request: Any) -> Any:
    """Handle one ``POST /v1/audio/transcriptions``."""
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

    server.metrics.request("transcription")
    if not server.authorized(request.headers, request.query_params):
        return unauthorized(server)
    limit = server.config.max_upload_bytes
    body = await _read_body(request, limit)
    if body is None:
        return error_response(server, 413, f"upload is over {limit} bytes")
    try:
        fields, files = wire.parse_multipart(request.headers.get("content-type", ""), body)
        req = wire.TranscriptionRequest.from_fields(fields)
        upload = files.get("file")
        if upload is None:
            raise ValueError("field 'file' is required")
        pcm, fmt = decode_upload(upload.data)
    except ValueError as exc:
        return error_response(server, 400, str(exc))
    if req.response_format not in ("json", "text"):
        return error_response(
            server,
            400,
            f"response_format {req.response_format!r} is not supported; use json or text",
        )
    seconds = fmt.seconds(len(pcm))
    server.metrics.audio(seconds)
    service = server.backend(gw.StreamConfig(language=req.language))
    if req.stream:
        return StreamingResponse(_sse(server, service, pcm, fmt), media_type="text/event-stream")
    started = server.clock.now()
    try:
        transcript = await service.transcribe(pcm, fmt)
    except STTError as exc:
        return _backend_error(server, exc)
    server.metrics.latency(server.clock.now() - started)
    if req.response_format == "text":
        return PlainTextResponse(transcript.text)
    return JSONResponse(wire.transcription_body(transcript.text, seconds))


async def _sse(
    server: GatewayServer, service: STTService, pcm: bytes, fmt: AudioFormat
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[STTResult | None] = asyncio.Queue()
    failure: list[STTError] = []

    async def run() -> None:
        try:
            await stream_transcribe(
                service,
                pcm,
                fmt,
                on_result=lambda r: queue.put_nowait(r) if r.is_final else None,
            )
        except STTError as exc:
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    first = True
    try:
        while (result := await queue.get()) is not None:
            text = result.transcript.strip()
            if text:
                yield wire.sse_event(wire.stream_chunk("vllm", text if first else " " + text))
                first = False
        await task
        if failure:
            log.warning("backend failed a streamed transcription: %s", type(failure[0]).__name__)
            server.metrics.error("http_stream")
            yield wire.sse_event(
                wire.error_body(f"the backend failed: {type(failure[0]).__name__}", code=503)
            )
        else:
            yield wire.sse_event(wire.stream_chunk("vllm", finish_reason="stop"))
        yield wire.sse_done()
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def decode_upload(data: bytes) -> tuple[bytes, AudioFormat]:
    """PCM and its format from an uploaded WAV (or FLAC/OGG through soundfile).

    Raises:
        ValueError: the file cannot be decoded or holds no samples.
    """
    if data[:4] == b"RIFF":
        pcm, rate, channels = wire.wav_pcm(data)
        if not pcm:
            raise ValueError("the WAV file holds no samples")
        return pcm, AudioFormat(rate, channels, Encoding.PCM_S16LE)
    try:
        import numpy as np
        import soundfile
    except ImportError as exc:  # pragma: no cover - soundfile ships with the server extra
        raise ValueError("only WAV uploads are supported without soundfile") from exc
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise ValueError(f"cannot decode the upload ({exc}); send WAV or FLAC") from exc
    if not samples.size:
        raise ValueError("the audio file holds no samples")
    fmt = AudioFormat(int(rate), int(samples.shape[1]), Encoding.PCM_F32LE)
    return np.ascontiguousarray(samples, dtype="<f4").tobytes(), fmt
