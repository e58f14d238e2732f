"""The OpenAI-compatible transcription wire format, as vLLM, SGLang and Z.AI speak it. Sans-I/O.

``POST /v1/audio/transcriptions`` takes ``multipart/form-data`` (``file`` plus form fields) and
answers JSON (``{"text", "usage"?}``), plain text, or with ``stream=true`` server-sent events.
The stream chunk shapes differ by server:

* vLLM: ``{"object": "transcription.chunk", "choices": [{"delta": {"content": "…"},
  "finish_reason"?}]}``, an optional usage chunk with ``"choices": []``, then ``[DONE]``;
* SGLang: the same deltas, a last chunk with ``"delta": {}`` and ``finish_reason``, no usage;
* Z.AI / OpenAI: ``{"type": "transcript.text.delta", "delta": "…"}`` and
  ``{"type": "transcript.text.done", "text"?: "…"}``.

Errors come as ``{"error": {"message", "type", "param", "code"}}`` (OpenAI, newer vLLM),
``{"object": "error", "message", "type", "code"}`` (older vLLM), ``{"code", "message"}`` (Z.AI)
or ``{"error": "message"}``; a streamed error is a ``data:`` event before ``[DONE]``.

This module builds and parses all of it, for the client adapter, the fake servers in
``sttrouter.testing`` and the gateway's OpenAI endpoint alike. No sockets, no asyncio.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
import time
import wave
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import attrs

__all__ = [
    "MAX_UPLOAD_BYTES",
    "Flavor",
    "FormFile",
    "MultipartError",
    "SSEDecoder",
    "StreamEvent",
    "TranscriptionRequest",
    "TranscriptionResponse",
    "WireError",
    "encode_multipart",
    "error_body",
    "error_from_json",
    "iter_text",
    "parse_error",
    "parse_multipart",
    "parse_stream_event",
    "parse_transcription",
    "sse_done",
    "sse_event",
    "stream_chunk",
    "transcription_body",
    "wav_bytes",
    "wav_pcm",
]

MAX_UPLOAD_BYTES: Final = 25 * 1024 * 1024
"""vLLM's ``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB`` default and Z.AI's limit: 25 MB per upload."""

Flavor = Literal["vllm", "sglang", "zai"]


# -- audio containers ------------------------------------------------------------------------
def wav_bytes(pcm: bytes, sample_rate: int = 16_000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV file holding ``pcm`` (s16le)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()


def wav_pcm(data: bytes) -> tuple[bytes, int, int]:
    """``(pcm s16le, sample_rate, channels)`` of a 16-bit PCM WAV file.

    Raises:
        ValueError: not a 16-bit PCM WAV file.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"WAV has {8 * w.getsampwidth()}-bit samples; send 16-bit PCM")
            return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file ({exc})") from exc


# -- multipart -------------------------------------------------------------------------------
class MultipartError(ValueError):
    """A ``multipart/form-data`` body that cannot be parsed."""


@attrs.frozen
class FormFile:
    """One uploaded file of a form."""

    filename: str
    content_type: str
    data: bytes


_TOKEN_RE = re.compile(r'([\w-]+)="((?:[^"\\]|\\.)*)"|([\w-]+)=([^;\s]+)')


def encode_multipart(
    fields: Mapping[str, str], files: Mapping[str, FormFile], *, boundary: str | None = None
) -> tuple[str, bytes]:
    """``(content_type, body)`` of a ``multipart/form-data`` request."""
    boundary = boundary or f"sttrouter-{secrets.token_hex(12)}"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"\r\n\r\n'.encode()
        )
        out.write(value.encode())
        out.write(b"\r\n")
    for name, f in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"; '
            f'filename="{_q(f.filename)}"\r\nContent-Type: {f.content_type}\r\n\r\n'.encode()
        )
        out.write(f.data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", out.getvalue()


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


def _params(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _TOKEN_RE.finditer(header):
        if m.group(1):
            out[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", m.group(2))
        else:
            out[m.group(3).lower()] = m.group(4)
    return out


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, FormFile]]:
    """Split a ``multipart/form-data`` body into text fields and files.

    A list field sent several times (``timestamp_granularities[]``) keeps every value,
    joined by commas.

    Raises:
        MultipartError: not multipart, no boundary, or a malformed part.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError(f"expected multipart/form-data, got {content_type or 'nothing'!r}")
    boundary = _params(content_type).get("boundary")
    if not boundary:
        raise MultipartError("multipart/form-data without a boundary parameter")
    delim = b"\r\n--" + boundary.encode()
    pieces = (b"\r\n" + body).split(delim)
    if pieces[0]:
        raise MultipartError("body does not start with the multipart boundary")
    fields: dict[str, str] = {}
    files: dict[str, FormFile] = {}
    closed = False
    for part in pieces[1:]:
        if part.startswith(b"--"):
            closed = True
            break
        if not part.startswith(b"\r\n"):
            raise MultipartError("malformed multipart boundary line")
        head, sep, data = part[2:].partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a multipart part has no header/body separator")
        headers = {}
        try:
            head_text = head.decode("utf-8")
        except UnicodeDecodeError:
            head_text = head.decode("latin-1")
        for line in head_text.split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = _params(headers.get("content-disposition", ""))
        name = disposition.get("name")
        if name is None:
            raise MultipartError("a multipart part has no name in Content-Disposition")
        if "filename" in disposition:
            files[name] = FormFile(
                disposition["filename"],
                headers.get("content-type", "application/octet-stream"),
                data,
            )
        else:
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MultipartError(f"form field {name!r} is not UTF-8") from exc
            if name.endswith("[]") and name in fields:  # a list field: values joined by ","
                value = f"{fields[name]},{value}"
            fields[name] = value
    if not closed:
        raise MultipartError("multipart body is truncated (no closing boundary)")
    return fields, files


# -- requests --------------------------------------------------------------------------------
def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@attrs.frozen
class TranscriptionRequest:
    """The form fields of ``POST /v1/audio/transcriptions`` (besides ``file``).

    Attributes:
        model: served model name (vLLM defaults to its model when empty).
        language: ISO-639-1 hint (GLM-ASR only validates it).
        response_format: ``json`` or ``text`` (``verbose_json`` fails for GLM-ASR).
        stream: ask for server-sent events.
        temperature: sampling temperature (0 = greedy).
        max_completion_tokens: token budget (vLLM's name).
        repetition_penalty: > 1 discourages loops (vLLM).
        prompt: context text (Z.AI uses it; vLLM's GLM-ASR ignores it).
        timestamp_granularities: ``word`` and/or ``segment`` (with ``verbose_json``).
        extra: any other fields, passed through.
    """

    model: str | None = None
    language: str | None = None
    response_format: str = "json"
    stream: bool = False
    temperature: float | None = None
    max_completion_tokens: int | None = None
    repetition_penalty: float | None = None
    prompt: str | None = None
    timestamp_granularities: tuple[str, ...] = ()
    extra: Mapping[str, str] = attrs.field(factory=dict)

    def to_fields(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        if self.model:
            fields["model"] = self.model
        if self.language:
            fields["language"] = self.language
        fields["response_format"] = self.response_format
        if self.stream:
            fields["stream"] = "true"
        if self.temperature is not None:
            fields["temperature"] = repr(self.temperature)
        if self.max_completion_tokens is not None:
            fields["max_completion_tokens"] = str(self.max_completion_tokens)
        if self.repetition_penalty is not None:
            fields["repetition_penalty"] = repr(self.repetition_penalty)
        if self.prompt:
            fields["prompt"] = self.prompt
        if self.timestamp_granularities:
            fields["timestamp_granularities[]"] = ",".join(self.timestamp_granularities)
        fields.update(self.extra)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> TranscriptionRequest:
        """Parse form fields (what a server does).

        Raises:
            ValueError: a number field that is not a number.
        """
        known = {
            "model",
            "language",
            "response_format",
            "stream",
            "temperature",
            "max_completion_tokens",
            "repetition_penalty",
            "prompt",
            "timestamp_granularities[]",
            "timestamp_granularities",
        }
        granularities = fields.get("timestamp_granularities[]") or fields.get(
            "timestamp_granularities", ""
        )

        def num(name: str) -> float | None:
            raw = fields.get(name)
            if raw is None or raw == "":
                return None
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"field {name!r} must be a number, got {raw!r}") from None
            if math.isnan(value):
                raise ValueError(f"field {name!r} must be a number, got {raw!r}")
            return value

        tokens = num("max_completion_tokens")
        return cls(
            model=fields.get("model") or None,
            language=fields.get("language") or None,
            response_format=fields.get("response_format", "json") or "json",
            stream=_bool(fields.get("stream", "false")),
            temperature=num("temperature"),
            max_completion_tokens=int(tokens) if tokens is not None else None,
            repetition_penalty=num("repetition_penalty"),
            prompt=fields.get("prompt") or None,
            timestamp_granularities=tuple(g.strip() for g in granularities.split(",") if g.strip()),
            extra={k: v for k, v in fields.items() if k not in known},
        )


# -- responses -------------------------------------------------------------------------------
@attrs.frozen
class TranscriptionResponse:
    """A parsed non-streaming answer."""

    text: str
    usage_seconds: float | None = None
    language: str | None = None


@attrs.frozen
class WireError:
    """An error answer, whatever its shape."""

    message: str
    type: str | None = None
    code: str | None = None
    status: int | None = None


def _json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def parse_transcription(content_type: str, body: bytes) -> TranscriptionResponse:
    """Parse a ``json`` or ``text`` answer.

    Raises:
        ValueError: JSON without a string ``text``.
    """
    if "json" not in content_type.lower():
        return TranscriptionResponse(body.decode("utf-8", errors="replace").strip())
    data = _json(body)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError(f"transcription JSON has no 'text' string: {body[:200]!r}")
    usage = data.get("usage")
    seconds = None
    if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
        seconds = float(usage["seconds"])
    lang = data.get("language")
    return TranscriptionResponse(
        data["text"], seconds, lang if isinstance(lang, str) and lang != "auto" else None
    )


def error_from_json(data: Any, status: int | None = None) -> WireError | None:
    """The :class:`WireError` in a decoded JSON value, or ``None`` when it is not an error."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return WireError(
            str(err.get("message") or "unknown error"),
            _opt_str(err.get("type")),
            _opt_str(err.get("code")),
            status,
        )
    if isinstance(err, str):
        return WireError(err, None, _opt_str(data.get("code")), status)
    if data.get("object") == "error":
        return WireError(
            str(data.get("message") or "unknown error"),
            _opt_str(data.get("type")),
            _opt_str(data.get("code")),
            status,
        )
    if "message" in data and "code" in data and "text" not in data and "choices" not in data:
        return WireError(str(data["message"]), None, _opt_str(data["code"]), status)
    return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_error(status: int, body: bytes) -> WireError:
    """The error in a non-2xx answer (any of the known shapes, or the raw text)."""
    found = error_from_json(_json(body), status)
    if found is not None:
        return found
    text = body.decode("utf-8", errors="replace").strip()[:500]
    return WireError(text or f"HTTP {status}", None, None, status)


# -- server-sent events ----------------------------------------------------------------------
class SSEDecoder:
    """Incremental ``text/event-stream`` decoder: feed bytes, get each event's data."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Return the ``data`` of every event ``chunk`` completes."""
        self._buf += chunk
        events: list[str] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                return events
            line, self._buf = self._buf[: cut[0]], self._buf[cut[1] :]
            text = line.decode("utf-8", errors="replace")
            if not text:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            if name == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """End of stream: an event not terminated by a blank line still counts."""
        events = self.feed(b"\n\n") if self._buf else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events


def _line_end(buf: bytes) -> tuple[int, int] | None:
    for i, b in enumerate(buf):
        if b == 0x0A:
            return i, i + 1
        if b == 0x0D:
            if i + 1 == len(buf):
                return None  # maybe \r\n split across chunks
            return i, i + 2 if buf[i + 1] == 0x0A else i + 1
    return None


@attrs.frozen
class StreamEvent:
    """One parsed stream event.

    Attributes:
        kind: ``delta`` (text to append), ``done`` (a finish chunk; ``text`` is the whole
            text when the server sent it), ``usage``, ``error`` or ``end`` (``[DONE]``).
    """

    kind: Literal["delta", "done", "usage", "error", "end"]
    text: str = ""
    finish_reason: str | None = None
    error: WireError | None = None


def parse_stream_event(data: str) -> list[StreamEvent]:
    """Events in one SSE ``data`` payload (a vLLM/SGLang chunk may hold a delta and a finish).

    Raises:
        ValueError: a payload that is neither ``[DONE]`` nor a known JSON chunk.
    """
    if data.strip() == "[DONE]":
        return [StreamEvent("end")]
    obj = _json(data)
    if not isinstance(obj, dict):
        raise ValueError(f"stream event is not a JSON object: {data[:200]!r}")
    err = error_from_json(obj)
    if err is not None:
        return [StreamEvent("error", error=err)]
    kind = obj.get("type")
    if kind == "transcript.text.delta":
        return [StreamEvent("delta", str(obj.get("delta") or ""))]
    if kind == "transcript.text.done":
        return [StreamEvent("done", str(obj.get("text") or ""), "stop")]
    choices = obj.get("choices")
    if isinstance(choices, list):
        if not choices:
            return [StreamEvent("usage")]
        out: list[StreamEvent] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise ValueError(f"stream chunk choice is not an object: {data[:200]!r}")
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if content:
                out.append(StreamEvent("delta", str(content)))
            if choice.get("finish_reason"):
                out.append(StreamEvent("done", "", str(choice["finish_reason"])))
        return out
    raise ValueError(f"unknown stream chunk shape: {data[:200]!r}")


# -- serialisers (fake servers, the gateway's OpenAI endpoint) --------------------------------
def sse_event(obj: Any) -> bytes:
    """One ``data: <json>`` event."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def sse_done() -> bytes:
    return b"data: [DONE]\n\n"


def stream_chunk(
    flavor: Flavor,
    text: str = "",
    *,
    finish_reason: str | None = None,
    request_id: str = "trsc-0",
    model: str = "glm-asr",
    created: int | None = None,
) -> dict[str, Any]:
    """A streamed chunk in ``flavor``'s shape (a delta, or a finish when ``finish_reason``)."""
    created = int(time.time()) if created is None else created
    if flavor == "zai":
        if finish_reason:
            return {"id": request_id, "created": created, "model": model,
                    "type": "transcript.text.done", "text": text}  # fmt: skip
        return {"id": request_id, "created": created, "model": model,
                "type": "transcript.text.delta", "delta": text}  # fmt: skip
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text} if text else {}}
    if finish_reason:
        choice["finish_reason"] = finish_reason
        if flavor == "vllm":
            choice["stop_reason"] = None
    return {"id": request_id, "object": "transcription.chunk", "created": created,
            "model": model, "choices": [choice]}  # fmt: skip


def transcription_body(text: str, seconds: float | None, flavor: Flavor = "vllm") -> dict[str, Any]:
    """A non-streaming JSON answer in ``flavor``'s shape."""
    if flavor == "zai":
        return {"id": "zai-0", "created": int(time.time()), "model": "glm-asr-2512", "text": text}
    body: dict[str, Any] = {"text": text}
    if seconds is not None:
        body["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
    return body


def error_body(
    message: str,
    *,
    type: str = "BadRequestError",
    code: int | str | None = 400,
    param: str | None = None,
    shape: Literal["openai", "object", "zai"] = "openai",
) -> dict[str, Any]:
    """An error answer: ``openai`` (OpenAI, newer vLLM), ``object`` (older vLLM) or ``zai``."""
    if shape == "object":
        return {"object": "error", "message": message, "type": type, "param": param, "code": code}
    if shape == "zai":
        return {"error": {"code": str(code), "message": message}}
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def iter_text(events: Iterator[StreamEvent]) -> str:
    """Join the deltas of a stream (a ``done`` with text replaces them)."""
    parts: list[str] = []
    for ev in events:
        if ev.kind == "delta":
            parts.append(ev.text)
        elif ev.kind == "done" and ev.text:
            parts = [ev.text]
    return "".join(parts)
