"""``FakeOpenAITranscriptionServer``: a local vLLM-, SGLang- or Z.AI-shaped transcription server.

It serves ``POST /v1/audio/transcriptions`` (multipart in; ``json``, ``text`` or SSE out in
the chosen server's exact chunk and error shapes), ``GET /health`` and ``GET /v1/models`` on
a real socket (127.0.0.1, port 0), built on the same pure wire module the client uses
(:mod:`sttrouter.wire.openai`). What it "hears" comes from ``transcriber``; by
default it reads :func:`~sttrouter.testing.synthetic_speech` marks back as ``w<n>`` words.

Faults are injected per request with :meth:`FakeOpenAITranscriptionServer.fail_next`
(HTTP errors in any of the error shapes, or an error in the middle of an SSE stream),
:meth:`loop_next` (a repetition loop, as GLM-ASR produces, unless the request asks for a
repetition penalty) and :meth:`fault_next` (hostile answers: an HTML page with status 200, a
huge body, a 401 echoing the key, a 413 for good audio). Needs the ``server`` extra
(starlette, uvicorn)::

    async with FakeOpenAITranscriptionServer(flavor="sglang") as server:
        endpoint = glm_server_endpoint(server.url)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Literal

import attrs
import numpy as np

from sttrouter.errors import MissingDependency
from sttrouter.testing._faults import FaultKind
from sttrouter.testing._speech import MARK_BASE, mark_word
from sttrouter.wire import openai as wire
from sttrouter.wire.openai import Flavor

__all__ = ["FakeOpenAITranscriptionServer", "InjectedError", "RecordedRequest", "read_marks"]

Transcriber = Callable[[bytes, int], str]


def read_marks(pcm: bytes, sample_rate: int = 16_000) -> str:
    """The ``w<n>`` words of synthetic-speech marks in ``pcm`` (runs of ≥ 10 ms)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    if not samples.size:
        return ""
    change = np.flatnonzero(np.diff(samples)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [samples.size]])
    words = [
        mark_word(int(samples[s]))
        for s, e in zip(starts, ends, strict=True)
        if samples[s] > MARK_BASE and e - s >= sample_rate // 100
    ]
    return " ".join(words)


@attrs.frozen
class InjectedError:
    """What the next request(s) get instead of a transcription."""

    status: int = 500
    message: str = "injected failure"
    shape: Literal["openai", "object", "zai"] = "openai"
    code: int | str | None = None
    mid_stream: bool = False
    retry_after: float | None = None


@attrs.define
class RecordedRequest:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    fields: dict[str, str] = attrs.field(factory=dict)
    audio_seconds: float = 0.0
    filename: str | None = None


class FakeOpenAITranscriptionServer:
    """A real HTTP server speaking the OpenAI-compatible transcription API of one server kind.

    Args:
        flavor: ``vllm``, ``sglang`` or ``zai`` (chunk, usage and error shapes; Z.AI also
            enforces its 30 s limit and wants a ``model``).
        transcriber: ``(pcm s16le, sample_rate) -> text``; default reads synthetic marks.
        model: the served model name.
        token: when set, requests must carry ``Authorization: Bearer <token>``.
        max_upload_bytes: larger uploads get 413.
        max_audio_seconds: longer audio gets 400 (Z.AI: 30 s).

    Attributes:
        requests: every request received, in order.
        healthy: while false, ``/health`` and ``/v1/models`` answer 503.
        delay: seconds each transcription takes (real time).
    """

    def __init__(
        self,
        *,
        flavor: Flavor = "vllm",
        transcriber: Transcriber | None = None,
        model: str = "zai-org/GLM-ASR-Nano-2512",
        token: str | None = None,
        max_upload_bytes: int = wire.MAX_UPLOAD_BYTES,
        max_audio_seconds: float | None = None,
    ) -> None:
        self.flavor: Flavor = flavor
        self.transcriber = transcriber or read_marks
        self.model = model
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.max_audio_seconds = (
            max_audio_seconds
            if max_audio_seconds is not None
            else 30.0
            if flavor == "zai"
            else None
        )
        self.requests: list[RecordedRequest] = []
        self.healthy = True
        self.delay = 0.0
        self._errors: list[InjectedError] = []
        self._faults: list[FaultKind] = []
        self.huge_body_bytes = 10 * 1024 * 1024
        self._loops = 0
        self._server: Any = None

    # -- test controls ---------------------------------------------------------------------
    def fail_next(self, error: InjectedError | None = None, *, times: int = 1) -> None:
        """The next ``times`` transcription requests fail with ``error``."""
        self._errors.extend([error or InjectedError()] * times)

    def fault_next(self, kind: FaultKind | str, *, times: int = 1) -> None:
        """The next ``times`` transcription requests meet a hostile server: ``html_200`` (a
        proxy's "502 Bad Gateway" page with status 200), ``huge_body`` (a 200 JSON answer of
        :attr:`huge_body_bytes`), ``key_echo`` (a 401 whose body repeats the request's
        ``Authorization`` value) or ``bad_audio`` (a 413 for audio that is fine)."""
        kind = FaultKind(kind)
        if kind not in _HTTP_FAULTS:
            raise ValueError(
                f"{kind.value!r} is not an HTTP fault; use one of "
                f"{', '.join(sorted(k.value for k in _HTTP_FAULTS))}"
            )
        self._faults.extend([kind] * times)

    def loop_next(self, times: int = 1) -> None:
        """The next ``times`` transcriptions fall into a repetition loop, unless the request
        sets ``repetition_penalty`` > 1 (as vLLM's sampling would then avoid it)."""
        self._loops += times

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        assert self._server is not None, "start the server first (async with ...)"
        return str(self._server.http_url)

    @property
    def transcriptions(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/transcriptions")]

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        from sttrouter.gateway._runner import AppServer

        self._server = AppServer(self.app())
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()

    async def __aenter__(self) -> FakeOpenAITranscriptionServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the app -----------------------------------------------------------------------------
    def app(self) -> Any:
        """The Starlette app (usable with any ASGI server)."""
        try:
            from starlette.applications import Starlette
            from starlette.routing import Route
        except ImportError as exc:
            raise MissingDependency("starlette", "server") from exc
        return Starlette(
            routes=[
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def _error(self, status: int, message: str, *, code: int | str | None = None) -> Any:
        from starlette.responses import JSONResponse

        shape: Literal["openai", "object", "zai"] = "zai" if self.flavor == "zai" else "openai"
        return JSONResponse(
            wire.error_body(message, code=code if code is not None else status, shape=shape),
            status_code=status,
        )

    def _unauthorized(self, request: Any) -> Any:
        if self.token is None:
            return None
        if request.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return self._error(401, "Invalid API key", code="invalid_api_key")

    async def _health(self, request: Any) -> Any:
        from starlette.responses import Response

        self.requests.append(RecordedRequest(request.url.path, dict(request.headers)))
        return Response(status_code=200 if self.healthy else 503)

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self.requests.append(RecordedRequest(request.url.path, dict(request.headers)))
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if not self.healthy:
            return self._error(503, "server is not ready")
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm"}]}
        )

    async def _transcribe(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

        record = RecordedRequest(request.url.path, dict(request.headers))
        self.requests.append(record)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        body = await request.body()
        if len(body) > self.max_upload_bytes:
            return self._error(413, f"Maximum file size exceeded ({self.max_upload_bytes} bytes)")
        try:
            fields, files = wire.parse_multipart(request.headers.get("content-type", ""), body)
            req = wire.TranscriptionRequest.from_fields(fields)
            upload = files.get("file")
            if upload is None:
                raise ValueError("field 'file' is required")
            pcm, rate, channels = wire.wav_pcm(upload.data)
        except ValueError as exc:
            return self._error(400, str(exc))
        record.fields, record.filename = fields, upload.filename
        record.audio_seconds = len(pcm) / 2 / channels / rate
        if self.flavor == "zai" and req.model is None:
            return self._error(400, "model is required", code="1214")
        if self.max_audio_seconds is not None and record.audio_seconds > self.max_audio_seconds:
            return self._error(
                400, f"audio is longer than {self.max_audio_seconds:g} seconds", code="1214"
            )
        if req.response_format not in ("json", "text"):
            return self._error(400, f"response_format {req.response_format!r} is not supported")
        if self._faults:
            return self._hostile(self._faults.pop(0), request)
        injected = self._errors.pop(0) if self._errors else None
        if injected is not None and not (injected.mid_stream and req.stream):
            headers = {}
            if injected.retry_after is not None:
                headers["retry-after"] = f"{injected.retry_after:g}"
            return JSONResponse(
                wire.error_body(
                    injected.message,
                    code=injected.code if injected.code is not None else injected.status,
                    shape=injected.shape,
                ),
                status_code=injected.status,
                headers=headers,
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        text = self.transcriber(pcm if channels == 1 else _mono(pcm, channels), rate)
        if self._loops and not (req.repetition_penalty and req.repetition_penalty > 1.0):
            self._loops -= 1
            text = (text + " " + " ".join(["and then"] * 40)).strip()
            if req.max_completion_tokens is not None:
                text = " ".join(text.split()[: req.max_completion_tokens])
        if req.stream:
            return StreamingResponse(
                self._sse(text, record.audio_seconds, fields, injected),
                media_type="text/event-stream",
            )
        if req.response_format == "text":
            return PlainTextResponse(text)
        return JSONResponse(wire.transcription_body(text, record.audio_seconds, self.flavor))

    def _hostile(self, kind: FaultKind, request: Any) -> Any:
        from starlette.responses import HTMLResponse, Response

        if kind is FaultKind.HTML_200:
            return HTMLResponse(_BAD_GATEWAY_PAGE)
        if kind is FaultKind.HUGE_BODY:
            text = "and then " * (self.huge_body_bytes // 9)
            return Response(json.dumps({"text": text}), media_type="application/json")
        if kind is FaultKind.KEY_ECHO:
            echoed = request.headers.get("authorization", "")
            return self._error(401, f"Invalid API key in header Authorization: {echoed}")
        return self._error(413, "Request Entity Too Large")

    async def _sse(
        self,
        text: str,
        seconds: float,
        fields: dict[str, str],
        injected: InjectedError | None,
    ) -> AsyncIterator[bytes]:
        words = text.split()
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        for i, piece in enumerate(pieces):
            if injected is not None and i == len(pieces) // 2:
                yield wire.sse_event(wire.error_body(injected.message, code=injected.status))
                yield wire.sse_done()
                return
            yield wire.sse_event(wire.stream_chunk(self.flavor, piece, model=self.model))
            await asyncio.sleep(0)
        if injected is not None:  # no text to interrupt: fail at once
            yield wire.sse_event(wire.error_body(injected.message, code=injected.status))
            yield wire.sse_done()
            return
        if self.flavor == "zai":
            yield wire.sse_event(wire.stream_chunk("zai", text, finish_reason="stop"))
        else:
            yield wire.sse_event(wire.stream_chunk(self.flavor, "", finish_reason="stop"))
        if self.flavor == "vllm" and wire._bool(fields.get("stream_include_usage", "false")):
            yield (
                "data: "
                + json.dumps(
                    {
                        "id": "trsc-0",
                        "object": "transcription.chunk",
                        "created": 0,
                        "model": self.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": round(seconds * 12.5),
                            "completion_tokens": len(words),
                            "total_tokens": round(seconds * 12.5) + len(words),
                        },
                    }
                )
                + "\n\n"
            ).encode()
        yield wire.sse_done()


_HTTP_FAULTS = frozenset(
    {FaultKind.HTML_200, FaultKind.HUGE_BODY, FaultKind.KEY_ECHO, FaultKind.BAD_AUDIO}
)

_BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    "</h1></center><hr><center>nginx</center></body></html>"
)


def _mono(pcm: bytes, channels: int) -> bytes:
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    mono: bytes = frames.mean(axis=1).astype("<i2").tobytes()
    return mono
