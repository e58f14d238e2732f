"""Batch GLM-ASR over the OpenAI-compatible ``POST /v1/audio/transcriptions`` (vLLM, SGLang, Z.AI).

:class:`OpenAITranscriptionClient` is a :class:`~sttrouter.providers.segmenter.BatchEngine`:
one clip in, one :class:`~sttrouter.providers.segmenter.SegmentResult` out, with the token
budget, the repetition-loop retry and the translation of HTTP answers into typed errors.
The wire format itself is in :mod:`sttrouter.wire.openai`.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Mapping
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from sttrouter.errors import (
    AudioFormatError,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
    MalformedResponse,
    MissingDependency,
    StreamingFailed,
    StreamStalled,
    STTError,
)
from sttrouter.providers._decoding import is_repetitive, token_budget, trim_repetition
from sttrouter.providers.segmenter import LOW_CONFIDENCE, SegmentResult
from sttrouter.wire import openai as wire
from sttrouter.wire.errors import from_http_status, retry_after
from sttrouter.wire.openai import Flavor

__all__ = [
    "MAX_RESPONSE_BYTES",
    "ZAI_MAX_SECONDS",
    "Flavor",
    "OpenAITranscriptionClient",
    "guess_flavor",
    "http_error",
    "translate_transport",
]

log = logging.getLogger(__name__)

ZAI_MAX_SECONDS: Final = 30.0

MAX_RESPONSE_BYTES: Final = 256 * 1024
"""Default cap on one answer's body: a 30 s segment's transcript is a few hundred bytes, so
anything near this is a broken server, not speech."""

OFF_LOOP_BYTES: Final = 32 * 1024
"""Bodies (and texts) at least this large are decoded and checked in a worker thread, so
one server's huge answer never freezes the other sessions of the process."""

_T = TypeVar("_T")


async def _off_loop(size: int, fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)``, in a worker thread when ``size`` is large."""
    if size >= OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def read_capped(resp: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, refused once it passes ``limit`` bytes."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise MalformedResponse(
            f"the server answered {declared} bytes, over the {limit}-byte cap "
            "(option max_response_bytes)"
        )
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise MalformedResponse(
                f"the server's answer passed the {limit}-byte cap (option max_response_bytes)"
            )
    return bytes(body)


def parse_json_answer(content_type: str, body: bytes) -> str:
    """The text of a ``response_format=json`` answer; anything else (an HTML "502 Bad
    Gateway" page from a proxy, plain text) is :class:`MalformedResponse`, never a
    transcript."""
    if "json" not in content_type.lower():
        excerpt = body[:80].decode("utf-8", errors="replace")
        raise MalformedResponse(
            f"the server answered 200 with {content_type or 'no content type'}, not the "
            f"JSON asked for: {excerpt!r}"
        )
    try:
        return wire.parse_transcription(content_type, body).text.strip()
    except ValueError as exc:
        raise MalformedResponse(f"unparseable answer: {exc}") from exc


def guess_flavor(base_url: str) -> Flavor:
    host = urlsplit(base_url).hostname or ""
    return "zai" if host.endswith(("z.ai", "bigmodel.cn")) else "vllm"


def _api_root(base_url: str) -> str:
    """``…/v1`` for a bare server URL; a URL with a path (Z.AI's ``/api/paas/v4``) as given."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path if parts.path not in ("", "/") else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def http_error(status: int, body: bytes, headers: Mapping[str, str]) -> STTError:
    """The typed error for an HTTP answer of an OpenAI-compatible server (the shared table)."""
    err = wire.parse_error(status, body)
    return from_http_status(
        status,
        err.message,
        vendor="the server",
        during_connect=False,
        key_env="the endpoint's api_key_env",
        retry_after=retry_after(headers.get("retry-after")),
        hint=(
            "check base_url and the 'model' option (GET /v1/models lists it)"
            if status == 404
            else "the server rejected the request's settings"
        ),
    )


def translate_transport(exc: Exception) -> STTError:
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
        prompt: context text sent as the request's ``prompt`` field.
        sse: ask for ``stream=true`` and parse the SSE chunks.
        upload_format: ``wav`` or ``flac`` (needs soundfile).
        timeout: seconds per request.
        tokens_per_second: token budget scale (see :func:`token_budget`).
        repetition_penalty: used on the one retry after a loop.
        client: an ``httpx.AsyncClient`` to use (tests pass a transport); made when ``None``.
        max_response_bytes: the cap on one answer's body; a larger one is
            :class:`MalformedResponse`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        flavor: Flavor = "vllm",
        language: str | None = None,
        prompt: str | None = None,
        sse: bool = False,
        upload_format: Literal["wav", "flac"] = "wav",
        timeout: float = 30.0,
        tokens_per_second: float = 10.0,
        repetition_penalty: float = 1.15,
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
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
        self.prompt = prompt
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
        self.max_response_bytes = max_response_bytes
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
                raise http_error(resp.status_code, resp.content, resp.headers)
            resp = await self._client.get(f"{self.server_root}/health")
            if resp.status_code != 200:
                raise http_error(resp.status_code, resp.content, resp.headers)
        except Exception as exc:
            raise translate_transport(exc) from exc

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
        if not (await _off_loop(len(text), is_repetitive, text) or finish == "length"):
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
            prompt=self.prompt,
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
            headers = {"content-type": content_type}
            async with self._client.stream("POST", url, content=body, headers=headers) as resp:
                answer = await read_capped(resp, self.max_response_bytes)
            if resp.status_code != 200:
                raise http_error(resp.status_code, answer, resp.headers)
            ctype = resp.headers.get("content-type", "")
            return await _off_loop(len(answer), parse_json_answer, ctype, answer), None
        except Exception as exc:
            raise translate_transport(exc) from exc

    async def _stream(self, url: str, content_type: str, body: bytes) -> tuple[str, str | None]:
        headers = {"content-type": content_type, "accept": "text/event-stream"}
        async with self._client.stream("POST", url, content=body, headers=headers) as resp:
            if resp.status_code != 200:
                answer = await read_capped(resp, self.max_response_bytes)
                raise http_error(resp.status_code, answer, resp.headers)
            decoder = wire.SSEDecoder()
            events: list[wire.StreamEvent] = []
            ended = False
            received = 0
            async for chunk in resp.aiter_bytes():
                received += len(chunk)
                if received > self.max_response_bytes:
                    raise MalformedResponse(
                        f"the event stream passed the {self.max_response_bytes}-byte cap "
                        "(option max_response_bytes)"
                    )
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
