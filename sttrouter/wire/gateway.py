"""UnaMentis' streaming STT protocol on ``/v1/audio/stream``: messages, parse, serialise.

Sans-I/O: no sockets, no asyncio.

Client → server (WebSocket):

* binary frames: PCM16 little-endian, 16 kHz, mono, 20–500 ms each (100 ms recommended);
* ``{"type": "start", "config": {"language", "interim_results", "punctuate",
  "profanity_filter", "sample_rate", "channels", "encoding"}}`` once, before any audio; the
  audio fields are optional (16 000, 1, ``pcm_s16le``): a server converts what it can and
  refuses the rest with one ``AUDIO_FORMAT_ERROR`` and a close;
* ``{"type": "end"}``: no more audio; the server sends the last finals and closes (1000);
* ``{"type": "finalize"}`` (sttrouter's addition): end the current utterance now with the
  audio sent so far — its final comes as soon as the engine has it; the session stays open;
* ``{"type": "ping", "timestamp": <number>}``.

Server → client:

* ``{"type": "partial" | "final", "text", "confidence", "timestamp_ms", "duration_ms",
  "is_end_of_utterance", "words": [{"word", "start", "end", "confidence"}]}``;
  ``timestamp_ms``/``duration_ms`` place the text on the session's audio timeline (ms from
  the first sample); word ``start``/``end`` are seconds on the same timeline;
* ``{"type": "pong", "timestamp", "server_time"}``: ``timestamp`` echoes the ping's exactly
  (an integer stays an integer) and is left out when the ping had none;
* ``{"type": "error", "code", "message", "recoverable"}``.

Error codes (UnaMentis' list, plus ``INVALID_MESSAGE`` for protocol misuse — non-JSON text, an
unknown type, audio before ``start`` — which its list has no code for):

========================  ===========  ==============================================
code                      recoverable  meaning
========================  ===========  ==============================================
AUDIO_FORMAT_ERROR        yes          odd-length PCM, a frame outside 20–500 ms
BUFFER_OVERFLOW           yes          audio arrives faster than the engine keeps up
RATE_LIMIT_EXCEEDED       yes          too many sessions; retry later
INVALID_MESSAGE           yes          a message the protocol does not allow here
MODEL_UNAVAILABLE         no           the backend engine cannot be reached
AUTHENTICATION_FAILED     no           missing or wrong token
INTERNAL_ERROR            no           anything else
========================  ===========  ==============================================

A *recoverable* error leaves the session open (the offending message is dropped); after
any other the server closes the connection.

:data:`ERROR_TABLE` is the one mapping between these codes and sttrouter's errors: the server
answers an engine's error with :func:`code_for`, a client raises :func:`error_for`, and
``code_for(error_for(code)) == code`` for every code.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Final, Literal

import attrs

from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    CallerError,
    EndpointMisconfigured,
    RateLimited,
    StreamingFailed,
    STTError,
)
from sttrouter.results import STTResult, WordTimestamp

__all__ = [
    "ERROR_TABLE",
    "MAX_FRAME_SECONDS",
    "MIN_FRAME_SECONDS",
    "SAMPLE_RATE",
    "Audio",
    "AudioDropped",
    "ClientMessage",
    "End",
    "ErrorCode",
    "ErrorMessage",
    "Finalize",
    "GatewayFailed",
    "MessageRejected",
    "Ping",
    "Pong",
    "ProtocolError",
    "ServerMessage",
    "Start",
    "StreamConfig",
    "Transcript",
    "code_for",
    "error_for",
    "parse_client",
    "parse_server",
    "serialize",
]

SAMPLE_RATE: Final = 16_000
MIN_FRAME_SECONDS: Final = 0.02
MAX_FRAME_SECONDS: Final = 0.5


class ErrorCode(enum.StrEnum):
    """Error codes of the protocol (see the module docstring)."""

    AUDIO_FORMAT_ERROR = "AUDIO_FORMAT_ERROR"
    BUFFER_OVERFLOW = "BUFFER_OVERFLOW"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"

    @property
    def recoverable(self) -> bool:
        return self in _RECOVERABLE


_RECOVERABLE: Final = frozenset(
    {
        ErrorCode.AUDIO_FORMAT_ERROR,
        ErrorCode.BUFFER_OVERFLOW,
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.INVALID_MESSAGE,
    }
)


class AudioDropped(StreamingFailed):
    """The gateway dropped audio (``BUFFER_OVERFLOW``): the stream no longer covers every sample."""


class MessageRejected(EndpointMisconfigured):
    """The gateway refused a message of ours (``INVALID_MESSAGE``): it speaks another protocol."""


class GatewayFailed(StreamingFailed):
    """The gateway failed on its own side (``INTERNAL_ERROR``)."""


ERROR_TABLE: Final[tuple[tuple[ErrorCode, type[STTError], str], ...]] = (
    (
        ErrorCode.AUTHENTICATION_FAILED,
        AuthenticationFailed,
        "check the token in the endpoint's api_key_env",
    ),
    (ErrorCode.RATE_LIMIT_EXCEEDED, RateLimited, "the gateway is busy; retry later"),
    (
        ErrorCode.AUDIO_FORMAT_ERROR,
        AudioFormatError,
        "send 16 kHz mono PCM16 in frames of 20-500 ms",
    ),
    (ErrorCode.BUFFER_OVERFLOW, AudioDropped, "audio was dropped; send it in real time"),
    (
        ErrorCode.INVALID_MESSAGE,
        MessageRejected,
        "check that base_url points at a /v1/audio/stream gateway",
    ),
    (ErrorCode.INTERNAL_ERROR, GatewayFailed, "the gateway failed on its side"),
    (ErrorCode.MODEL_UNAVAILABLE, StreamingFailed, "the gateway's engine cannot be reached"),
)
"""``(code, the error a client raises for it, advice)``, most specific error first.

The server maps an error to the code of the first row whose error class it is an instance
of; any other caller-side error of the engine (a misconfigured backend) is
``INTERNAL_ERROR``, anything else ``MODEL_UNAVAILABLE``."""


def code_for(exc: STTError) -> ErrorCode:
    """The code the gateway answers with when an engine (or the gateway) fails with ``exc``."""
    for code, error, _ in ERROR_TABLE:
        if isinstance(exc, error):
            return code
    return ErrorCode.INTERNAL_ERROR if isinstance(exc, CallerError) else ErrorCode.MODEL_UNAVAILABLE


def error_for(code: ErrorCode | str, message: str) -> STTError:
    """The typed error a client raises for an ``error`` message (an unknown code: a failure)."""
    for known, error, advice in ERROR_TABLE:
        if code == known:
            return error(f"gateway error {code}: {message}; {advice}")
    return StreamingFailed(f"gateway error {code}: {message}")


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is what to answer with, ``message_type``
    the ``type`` of the JSON message that broke it (``None``: not known)."""

    def __init__(
        self,
        message: str,
        code: ErrorCode = ErrorCode.INVALID_MESSAGE,
        message_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message_type = message_type


# -- client messages -------------------------------------------------------------------------
@attrs.frozen
class StreamConfig:
    """The ``config`` of a ``start`` message."""

    language: str | None = None
    interim_results: bool = True
    punctuate: bool = True
    profanity_filter: bool = False
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    encoding: str = "pcm_s16le"


@attrs.frozen
class Start:
    config: StreamConfig = attrs.field(factory=StreamConfig)
    type: Literal["start"] = "start"


@attrs.frozen
class End:
    type: Literal["end"] = "end"


@attrs.frozen
class Finalize:
    type: Literal["finalize"] = "finalize"


@attrs.frozen
class Ping:
    timestamp: int | float | None = None
    type: Literal["ping"] = "ping"


@attrs.frozen
class Audio:
    """A binary frame of PCM16 audio."""

    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


ClientMessage = Start | End | Finalize | Ping | Audio


# -- server messages -------------------------------------------------------------------------
@attrs.frozen
class Transcript:
    """A ``partial`` or ``final`` message."""

    text: str
    is_final: bool
    confidence: float | None = None
    timestamp_ms: int = 0
    duration_ms: int = 0
    is_end_of_utterance: bool = False
    words: tuple[WordTimestamp, ...] = ()

    @property
    def type(self) -> str:
        return "final" if self.is_final else "partial"

    @classmethod
    def from_result(cls, r: STTResult) -> Transcript:
        return cls(
            text=r.transcript,
            is_final=r.is_final,
            confidence=r.confidence,
            timestamp_ms=round(r.start * 1000),
            duration_ms=round(r.duration * 1000),
            is_end_of_utterance=r.is_end_of_utterance,
            words=r.words,
        )

    def to_result(self) -> STTResult:
        return STTResult(
            transcript=self.text,
            is_final=self.is_final,
            is_end_of_utterance=self.is_end_of_utterance,
            confidence=self.confidence,
            start=self.timestamp_ms / 1000,
            duration=self.duration_ms / 1000,
            words=self.words,
        )


@attrs.frozen
class Pong:
    timestamp: int | float | None
    server_time: float
    type: Literal["pong"] = "pong"


@attrs.frozen
class ErrorMessage:
    code: ErrorCode | str
    message: str
    recoverable: bool
    type: Literal["error"] = "error"

    @classmethod
    def of(cls, code: ErrorCode, message: str) -> ErrorMessage:
        return cls(code, message, code.recoverable)


ServerMessage = Transcript | Pong | ErrorMessage


# -- serialise -------------------------------------------------------------------------------
_AUDIO_DEFAULTS: Final = {"sample_rate": SAMPLE_RATE, "channels": 1, "encoding": "pcm_s16le"}


def serialize(message: ClientMessage | ServerMessage) -> str | bytes:
    """The wire form: ``bytes`` for audio, JSON text for everything else."""
    if isinstance(message, Audio):
        return message.pcm
    body: dict[str, Any]
    if isinstance(message, Start):
        config = attrs.asdict(message.config)
        for key, default in _AUDIO_DEFAULTS.items():  # UnaMentis' own start has none of them
            if config[key] == default:
                del config[key]
        body = {"type": "start", "config": config}
    elif isinstance(message, End):
        body = {"type": "end"}
    elif isinstance(message, Finalize):
        body = {"type": "finalize"}
    elif isinstance(message, Ping):
        body = {"type": "ping", "timestamp": message.timestamp}
    elif isinstance(message, Transcript):
        body = {
            "type": message.type,
            "text": message.text,
            "confidence": message.confidence,
            "timestamp_ms": message.timestamp_ms,
            "duration_ms": message.duration_ms,
            "is_end_of_utterance": message.is_end_of_utterance,
            "words": [
                {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                for w in message.words
            ],
        }
    elif isinstance(message, Pong):
        body = {"type": "pong", "server_time": message.server_time}
        if message.timestamp is not None:
            body["timestamp"] = message.timestamp
    else:
        body = {
            "type": "error",
            "code": str(message.code),
            "message": message.message,
            "recoverable": message.recoverable,
        }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# -- parse -----------------------------------------------------------------------------------
def _load(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            f"text message is not JSON ({exc}); send JSON control messages"
        ) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError('a JSON message must be an object with a string "type"')
    return obj


def _num(obj: dict[str, Any], key: str) -> int | float | None:
    """A number field as sent (an integer stays an integer), ``None`` when absent."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f'"{key}" must be a number, got {value!r}')
    return value


ENCODINGS: Final = ("pcm_s16le", "pcm_f32le")


def _int(config: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(
            f'config "{key}" must be an integer in {lo}..{hi}, got {value!r}',
            ErrorCode.AUDIO_FORMAT_ERROR,
        )
    return value


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f'config "{key}" must be true or false, got {value!r}')
    return value


def parse_client(data: str | bytes, *, binary: bool | None = None) -> ClientMessage:
    """Parse what a client sent: binary frames are audio, text frames JSON control messages.

    ``binary`` says which kind of WebSocket frame it was; by default ``bytes`` means binary.
    Audio is checked to be whole PCM16 samples; frame *duration* limits are the server's
    policy (see :data:`MIN_FRAME_SECONDS`, :data:`MAX_FRAME_SECONDS`).

    Raises:
        ProtocolError: with the code to answer.
    """
    if binary if binary is not None else isinstance(data, bytes):
        pcm = data if isinstance(data, bytes) else data.encode()
        if len(pcm) % 2:
            raise ProtocolError(
                f"audio frame of {len(pcm)} bytes is not whole 16-bit samples; send PCM16 LE",
                ErrorCode.AUDIO_FORMAT_ERROR,
            )
        return Audio(pcm)
    obj = _load(data)
    kind = obj["type"]
    if kind == "start":
        try:
            return _start(obj)
        except ProtocolError as exc:
            exc.message_type = "start"
            raise
    if kind == "end":
        return End()
    if kind == "finalize":
        return Finalize()
    if kind == "ping":
        return Ping(_num(obj, "timestamp"))
    raise ProtocolError(f"unknown message type {kind!r}; use start, end, finalize or ping")


def _start(obj: dict[str, Any]) -> Start:
    config = obj.get("config") or {}
    if not isinstance(config, dict):
        raise ProtocolError('"config" must be an object')
    language = config.get("language")
    if language is not None and not isinstance(language, str):
        raise ProtocolError(f'config "language" must be a string, got {language!r}')
    encoding = str(config.get("encoding", "pcm_s16le")).lower()
    encoding = {"linear16": "pcm_s16le", "pcm16": "pcm_s16le", "f32le": "pcm_f32le"}.get(
        encoding, encoding
    )
    if encoding not in ENCODINGS:
        raise ProtocolError(
            f'config "encoding" {config.get("encoding")!r} is not supported; use '
            + " or ".join(ENCODINGS),
            ErrorCode.AUDIO_FORMAT_ERROR,
        )
    return Start(
        StreamConfig(
            language=language or None,
            interim_results=_flag(config, "interim_results", True),
            punctuate=_flag(config, "punctuate", True),
            profanity_filter=_flag(config, "profanity_filter", False),
            sample_rate=_int(config, "sample_rate", SAMPLE_RATE, 8_000, 192_000),
            channels=_int(config, "channels", 1, 1, 8),
            encoding=encoding,
        )
    )


def parse_server(data: str | bytes) -> ServerMessage:
    """Parse what the server sent.

    Raises:
        ProtocolError: not a known server message.
    """
    if isinstance(data, bytes):
        raise ProtocolError("the server sent a binary frame; the protocol has none")
    obj = _load(data)
    kind = obj["type"]
    if kind in ("partial", "final"):
        words = obj.get("words") or []
        if not isinstance(words, list):
            raise ProtocolError('"words" must be a list')
        try:
            parsed = tuple(
                WordTimestamp(
                    str(w["word"]),
                    float(w["start"]),
                    float(w["end"]),
                    None if w.get("confidence") is None else float(w["confidence"]),
                )
                for w in words
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed word in {kind} message: {exc}") from exc
        text = obj.get("text", "")
        if not isinstance(text, str):
            raise ProtocolError('"text" must be a string')
        return Transcript(
            text=text,
            is_final=kind == "final",
            confidence=_num(obj, "confidence"),
            timestamp_ms=round(_num(obj, "timestamp_ms") or 0),
            duration_ms=round(_num(obj, "duration_ms") or 0),
            is_end_of_utterance=bool(obj.get("is_end_of_utterance", False)),
            words=parsed,
        )
    if kind == "pong":
        return Pong(_num(obj, "timestamp"), float(_num(obj, "server_time") or 0.0))
    if kind == "error":
        raw = str(obj.get("code") or ErrorCode.INTERNAL_ERROR)
        code: ErrorCode | str = ErrorCode(raw) if raw in ErrorCode.__members__ else raw
        recoverable = obj.get("recoverable")
        if not isinstance(recoverable, bool):
            recoverable = isinstance(code, ErrorCode) and code.recoverable
        return ErrorMessage(code, str(obj.get("message") or raw), recoverable)
    raise ProtocolError(f"unknown server message type {kind!r}")
