"""AssemblyAI Universal Streaming v3 on the wire, as typed values: pure, no I/O.

Shared by the adapter (:mod:`sttrouter.providers.assemblyai`) and the fake server
(:mod:`sttrouter.testing.assemblyai_server`). Shapes follow
``assemblyai/streaming/v3/models.py`` of assemblyai 1.8.x. Word times on the wire are integer
milliseconds; these values keep them in milliseconds, converting happens in the adapter.

Also here: :class:`Rechunker`, which keeps every audio message within the 50–1000 ms the
server accepts (anything else is answered with error 3007), and the batch transcript shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from sttrouter.errors import MalformedResponse
from sttrouter.wire._json import ClientMessage, Unknown, flag, load_object, number, seconds
from sttrouter.wire._json import parse_client_message as _parse_client

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "MAX_CHUNK_MS",
    "MIN_CHUNK_MS",
    "Begin",
    "ClientMessage",
    "Error",
    "Rechunker",
    "ServerMessage",
    "SpeechStarted",
    "Termination",
    "TranscriptStatus",
    "Turn",
    "Unknown",
    "Word",
    "chunk_violation",
    "parse_bool",
    "parse_client_message",
    "parse_server_message",
    "parse_transcript",
    "serialize_client_message",
    "serialize_server_message",
    "serialize_transcript",
]

MIN_CHUNK_MS: Final = 50
MAX_CHUNK_MS: Final = 1000
CLIENT_MESSAGE_TYPES: Final = frozenset(
    {"Terminate", "ForceEndpoint", "KeepAlive", "UpdateConfiguration"}
)


def _words(value: Iterable[Word]) -> tuple[Word, ...]:
    return tuple(value)


@attrs.frozen
class Word:
    """One word of a turn; ``start``/``end`` in integer milliseconds."""

    text: str
    start: int
    end: int
    confidence: float = 0.0
    word_is_final: bool = True


@attrs.frozen
class Begin:
    id: str
    expires_at: int


@attrs.frozen
class Turn:
    """A turn's transcript so far; ``end_of_turn and turn_is_formatted`` is the final."""

    turn_order: int
    transcript: str
    end_of_turn: bool = False
    turn_is_formatted: bool = False
    end_of_turn_confidence: float = 0.0
    words: tuple[Word, ...] = attrs.field(default=(), converter=_words)
    language_code: str | None = None


@attrs.frozen
class Termination:
    audio_duration_seconds: int = 0
    session_duration_seconds: int = 0


@attrs.frozen
class SpeechStarted:
    timestamp: int


@attrs.frozen
class Error:
    """Sent just before the server closes with the same code."""

    error: str
    error_code: int | None = None


ServerMessage = Begin | Turn | Termination | SpeechStarted | Error | Unknown


def _int(obj: Mapping[str, Any], key: str, default: int | None = None) -> int:
    return int(number(obj, key, "AssemblyAI", default))


def _ms(obj: Mapping[str, Any], key: str) -> int:
    """A time in integer milliseconds: finite, not negative."""
    return int(seconds(obj, key, "AssemblyAI", 0))


def _flag(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    return flag(obj, key, "AssemblyAI", default)


def _parse_word(w: Mapping[str, Any]) -> Word:
    return Word(
        text=str(w.get("text", "")),
        start=_ms(w, "start"),
        end=_ms(w, "end"),
        confidence=float(w.get("confidence") or 0.0),
        word_is_final=_flag(w, "word_is_final", True),
    )


def parse_server_message(data: str | bytes | Mapping[str, Any]) -> ServerMessage:
    """Parse one server text message; wrong field types raise ``MalformedResponse``."""
    obj = load_object(data, "AssemblyAI message")
    kind = obj.get("type")
    if kind == "Begin":
        return Begin(id=str(obj.get("id") or ""), expires_at=_int(obj, "expires_at", 0))
    if kind == "Turn":
        transcript = obj.get("transcript", "")
        if not isinstance(transcript, str):
            raise MalformedResponse(f"AssemblyAI Turn transcript is {transcript!r}, not text")
        return Turn(
            turn_order=_int(obj, "turn_order", 0),
            transcript=transcript,
            end_of_turn=_flag(obj, "end_of_turn"),
            turn_is_formatted=_flag(obj, "turn_is_formatted"),
            end_of_turn_confidence=float(obj.get("end_of_turn_confidence") or 0.0),
            words=tuple(_parse_word(w) for w in obj.get("words") or ()),
            language_code=obj.get("language_code"),
        )
    if kind == "Termination":
        return Termination(
            audio_duration_seconds=_int(obj, "audio_duration_seconds", 0),
            session_duration_seconds=_int(obj, "session_duration_seconds", 0),
        )
    if kind == "SpeechStarted":
        return SpeechStarted(timestamp=_ms(obj, "timestamp"))
    if kind == "Error" or (kind is None and "error" in obj):
        code = obj.get("error_code")
        return Error(
            error=str(obj.get("error") or ""), error_code=None if code is None else int(code)
        )
    return Unknown(type=str(kind), raw=dict(obj))


def server_message_dict(msg: ServerMessage) -> dict[str, Any]:
    """The JSON object for ``msg``, in the shape AssemblyAI sends."""
    if isinstance(msg, Begin):
        return {"type": "Begin", "id": msg.id, "expires_at": msg.expires_at}
    if isinstance(msg, Turn):
        d: dict[str, Any] = {
            "type": "Turn",
            "turn_order": msg.turn_order,
            "turn_is_formatted": msg.turn_is_formatted,
            "end_of_turn": msg.end_of_turn,
            "transcript": msg.transcript,
            "end_of_turn_confidence": msg.end_of_turn_confidence,
            "words": [attrs.asdict(w) for w in msg.words],
        }
        if msg.language_code is not None:
            d["language_code"] = msg.language_code
        return d
    if isinstance(msg, Termination):
        return {
            "type": "Termination",
            "audio_duration_seconds": msg.audio_duration_seconds,
            "session_duration_seconds": msg.session_duration_seconds,
        }
    if isinstance(msg, SpeechStarted):
        return {"type": "SpeechStarted", "timestamp": msg.timestamp}
    if isinstance(msg, Error):
        return {"type": "Error", "error_code": msg.error_code, "error": msg.error}
    return dict(msg.raw) | {"type": msg.type}


def serialize_server_message(msg: ServerMessage) -> str:
    """JSON text for ``msg``; :func:`parse_server_message` reads it back to an equal value."""
    return json.dumps(server_message_dict(msg))


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse a client text message; an unknown ``type`` raises ``MalformedResponse``."""
    return _parse_client(text, "AssemblyAI", CLIENT_MESSAGE_TYPES)


def serialize_client_message(msg: ClientMessage) -> str:
    return json.dumps({**msg.fields, "type": msg.type})


def parse_bool(value: str) -> bool:
    """Query-string booleans: the SDK sends ``True``/``False``, curl users ``true``/``false``."""
    return value.strip().lower() in ("true", "1")


def chunk_violation(nbytes: int, bytes_per_second: int) -> str | None:
    """The server's 3007 text when an audio message lies outside 50–1000 ms, else ``None``."""
    ms = nbytes * 1000 / bytes_per_second
    if MIN_CHUNK_MS - 1e-6 <= ms <= MAX_CHUNK_MS + 1e-6:
        return None
    return (
        f"Input duration violation: {ms:.0f} ms. "
        f"Expected between {MIN_CHUNK_MS} and {MAX_CHUNK_MS} ms"
    )


class Rechunker:
    """Re-cut audio of any chunk size into messages of 50–1000 ms.

    ``push`` buffers small chunks and splits big ones, returning the messages ready to send
    (each ``target_ms`` long); ``flush`` returns the remainder, padded with silence up to
    ``MIN_CHUNK_MS`` when it is shorter.

    Args:
        bytes_per_second: of the audio (32 000 for 16 kHz mono s16le).
        frame_bytes: bytes per frame, so cuts never split a sample.
        target_ms: length of each message (50..1000).
    """

    def __init__(self, bytes_per_second: int, frame_bytes: int = 2, target_ms: int = 100) -> None:
        if not MIN_CHUNK_MS <= target_ms <= MAX_CHUNK_MS:
            raise ValueError(f"target_ms must lie in {MIN_CHUNK_MS}..{MAX_CHUNK_MS}")
        self._frame = frame_bytes
        self._size = self._frames(bytes_per_second * target_ms // 1000)
        self._min = self._frames(-(-bytes_per_second * MIN_CHUNK_MS // 1000))
        self._buf = bytearray()

    def _frames(self, nbytes: int) -> int:
        return max(self._frame, nbytes - nbytes % self._frame)

    @property
    def pending(self) -> int:
        """Bytes buffered, not yet sent."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= self._size:
            out.append(bytes(self._buf[: self._size]))
            del self._buf[: self._size]
        return out

    def flush(self) -> bytes:
        """The remainder as one message (padded to the 50 ms minimum), or ``b""``."""
        if not self._buf:
            return b""
        rest = bytes(self._buf)
        self._buf.clear()
        if len(rest) < self._min:
            rest += bytes(self._min - len(rest))
        return rest


# -- batch (REST v2) ----------------------------------------------------------------------


class TranscriptStatus:
    QUEUED: Final = "queued"
    PROCESSING: Final = "processing"
    COMPLETED: Final = "completed"
    ERROR: Final = "error"


@attrs.frozen
class Transcript:
    """``GET /v2/transcript/{id}``, reduced to what sttrouter reads."""

    id: str
    status: str
    audio_url: str
    text: str | None = None
    words: tuple[Word, ...] = attrs.field(default=(), converter=_words)
    confidence: float | None = None
    audio_duration: float | None = None
    language_code: str | None = None
    error: str | None = None


def parse_transcript(data: str | bytes | Mapping[str, Any]) -> Transcript:
    obj = load_object(data, "AssemblyAI transcript")
    if "status" not in obj:
        raise MalformedResponse("AssemblyAI transcript has no status")
    return Transcript(
        id=str(obj.get("id") or ""),
        status=str(obj["status"]),
        audio_url=str(obj.get("audio_url") or ""),
        text=obj.get("text"),
        words=tuple(_parse_word(w) for w in obj.get("words") or ()),
        confidence=obj.get("confidence"),
        audio_duration=obj.get("audio_duration"),
        language_code=obj.get("language_code"),
        error=obj.get("error"),
    )


def serialize_transcript(t: Transcript) -> str:
    d = attrs.asdict(t)
    d["words"] = [
        {"text": w.text, "start": w.start, "end": w.end, "confidence": w.confidence}
        for w in t.words
    ]
    return json.dumps(d)
