"""Deepgram listen v1 on the wire, as typed values: pure parse and serialise, no I/O.

Shared by the adapter (:mod:`sttrouter.providers.deepgram`) and the fake server
(:mod:`sttrouter.testing.deepgram_server`), so the two cannot drift apart silently. Shapes
follow ``deepgram/listen/v1/types/*.py`` of deepgram-sdk 7.x.

Server → client text messages: ``Results``, ``Metadata``, ``UtteranceEnd``,
``SpeechStarted``, ``Error`` (anything else parses to :class:`Unknown`). Client → server text
messages: ``KeepAlive``, ``Finalize``, ``CloseStream``, ``Configure``; audio is binary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from sttrouter.errors import MalformedResponse
from sttrouter.wire._common import as_bool, as_int
from sttrouter.wire._json import ClientMessage, Unknown, flag, load_object, number, seconds
from sttrouter.wire._json import parse_client_message as _parse_client

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "ClientMessage",
    "Error",
    "ListenOptions",
    "Metadata",
    "PrerecordedResponse",
    "Results",
    "ServerMessage",
    "SpeechStarted",
    "Unknown",
    "UtteranceEnd",
    "Word",
    "parse_client_message",
    "parse_prerecorded",
    "parse_server_message",
    "serialize_client_message",
    "serialize_prerecorded",
    "serialize_server_message",
]

CLIENT_MESSAGE_TYPES: Final = frozenset({"KeepAlive", "Finalize", "CloseStream", "Configure"})


def _ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _strs(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _words(value: Iterable[Word]) -> tuple[Word, ...]:
    return tuple(value)


@attrs.frozen
class Word:
    """One word of a ``Results`` alternative (times in seconds)."""

    word: str
    start: float
    end: float
    confidence: float | None = None
    punctuated_word: str | None = None
    language: str | None = None

    @property
    def text(self) -> str:
        return self.punctuated_word or self.word


@attrs.frozen
class Results:
    """A transcript of one audio window (first alternative of the first channel)."""

    transcript: str
    start: float
    duration: float
    is_final: bool = False
    speech_final: bool = False
    from_finalize: bool = False
    confidence: float | None = None
    words: tuple[Word, ...] = attrs.field(default=(), converter=_words)
    languages: tuple[str, ...] = attrs.field(default=(), converter=_strs)
    channel_index: tuple[int, ...] = attrs.field(default=(0, 1), converter=_ints)
    request_id: str | None = None


@attrs.frozen
class Metadata:
    """Sent after ``CloseStream``; the server then closes with 1000."""

    request_id: str
    duration: float
    channels: int = 1
    created: str = ""
    sha256: str = ""


@attrs.frozen
class UtteranceEnd:
    """No word for ``utterance_end_ms`` after ``last_word_end`` (needs ``utterance_end_ms``)."""

    last_word_end: float
    channel: tuple[int, ...] = attrs.field(default=(0, 1), converter=_ints)


@attrs.frozen
class SpeechStarted:
    """Voice activity began at ``timestamp`` seconds (needs ``vad_events``)."""

    timestamp: float
    channel: tuple[int, ...] = attrs.field(default=(0,), converter=_ints)


@attrs.frozen
class Error:
    """An in-band error (``variant="SchemaError"``: a bad client text message)."""

    description: str
    variant: str = ""
    code: str | None = None
    message: str | None = None


ServerMessage = Results | Metadata | UtteranceEnd | SpeechStarted | Error | Unknown


# -- server messages ----------------------------------------------------------------------


def _num(obj: Mapping[str, Any], key: str, default: float | None = None) -> float:
    return number(obj, key, "Deepgram", default)


def _opt_num(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _num(obj, key)


def _time(obj: Mapping[str, Any], key: str) -> float:
    return seconds(obj, key, "Deepgram", 0.0)


def _flag(obj: Mapping[str, Any], key: str) -> bool:
    return flag(obj, key, "Deepgram")


def _parse_word(w: Mapping[str, Any]) -> Word:
    return Word(
        word=str(w.get("word", "")),
        start=_time(w, "start"),
        end=_time(w, "end"),
        confidence=_opt_num(w, "confidence"),
        punctuated_word=w.get("punctuated_word"),
        language=w.get("language"),
    )


def _first_alternative(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    channel = obj.get("channel") or {}
    alternatives = channel.get("alternatives") if isinstance(channel, Mapping) else None
    if not alternatives:
        return {}
    first = alternatives[0]
    if not isinstance(first, Mapping):
        raise MalformedResponse("Deepgram Results alternative is not an object")
    return first


def parse_server_message(data: str | bytes | Mapping[str, Any]) -> ServerMessage:
    """Parse one server text message (JSON text or an already-decoded object).

    Missing optional fields take their defaults, like the SDK's unchecked models; a field of
    the wrong type raises :class:`~sttrouter.errors.MalformedResponse`, and so do the values
    no engine may send: a time or duration that is NaN, infinite or negative, a flag such as
    ``is_final`` that is not a boolean (``"false"``).
    """
    obj = load_object(data, "Deepgram message")
    kind = obj.get("type")
    if kind == "Results":
        alt = _first_alternative(obj)
        meta = obj.get("metadata") or {}
        return Results(
            transcript=str(alt.get("transcript") or ""),
            start=_time(obj, "start"),
            duration=_time(obj, "duration"),
            is_final=_flag(obj, "is_final"),
            speech_final=_flag(obj, "speech_final"),
            from_finalize=_flag(obj, "from_finalize"),
            confidence=_opt_num(alt, "confidence"),
            words=[_parse_word(w) for w in alt.get("words") or ()],
            languages=alt.get("languages") or (),
            channel_index=obj.get("channel_index") or (0, 1),
            request_id=(meta.get("request_id") or None) if isinstance(meta, Mapping) else None,
        )
    if kind == "Metadata":
        return Metadata(
            request_id=str(obj.get("request_id") or ""),
            duration=_num(obj, "duration", 0.0),
            channels=int(obj.get("channels") or 1),
            created=str(obj.get("created") or ""),
            sha256=str(obj.get("sha256") or ""),
        )
    if kind == "UtteranceEnd":
        return UtteranceEnd(
            last_word_end=_time(obj, "last_word_end"),
            channel=obj.get("channel") or (0, 1),
        )
    if kind == "SpeechStarted":
        return SpeechStarted(timestamp=_time(obj, "timestamp"), channel=obj.get("channel") or (0,))
    if kind == "Error":
        return Error(
            description=str(obj.get("description") or obj.get("message") or ""),
            variant=str(obj.get("variant") or ""),
            code=obj.get("code"),
            message=obj.get("message"),
        )
    return Unknown(type=str(kind), raw=dict(obj))


def _word_dict(w: Word) -> dict[str, Any]:
    d: dict[str, Any] = {"word": w.word, "start": w.start, "end": w.end}
    if w.confidence is not None:
        d["confidence"] = w.confidence
    if w.punctuated_word is not None:
        d["punctuated_word"] = w.punctuated_word
    if w.language is not None:
        d["language"] = w.language
    return d


def _alternative(
    transcript: str, confidence: float | None, words: Sequence[Word]
) -> dict[str, Any]:
    return {
        "transcript": transcript,
        "confidence": confidence if confidence is not None else 0.0,
        "words": [_word_dict(w) for w in words],
    }


def server_message_dict(msg: ServerMessage) -> dict[str, Any]:
    """The JSON object for ``msg``, in the shape Deepgram sends."""
    if isinstance(msg, Results):
        alt = _alternative(msg.transcript, msg.confidence, msg.words)
        if msg.languages:
            alt["languages"] = list(msg.languages)
        return {
            "type": "Results",
            "channel_index": list(msg.channel_index),
            "duration": msg.duration,
            "start": msg.start,
            "is_final": msg.is_final,
            "speech_final": msg.speech_final,
            "from_finalize": msg.from_finalize,
            "channel": {"alternatives": [alt]},
            "metadata": {
                "request_id": msg.request_id or "",
                "model_info": {"name": "general-nova-3", "version": "fake", "arch": "nova-3"},
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
        }
    if isinstance(msg, Metadata):
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": msg.request_id,
            "sha256": msg.sha256,
            "created": msg.created,
            "duration": msg.duration,
            "channels": msg.channels,
        }
    if isinstance(msg, UtteranceEnd):
        return {
            "type": "UtteranceEnd",
            "channel": list(msg.channel),
            "last_word_end": msg.last_word_end,
        }
    if isinstance(msg, SpeechStarted):
        return {"type": "SpeechStarted", "channel": list(msg.channel), "timestamp": msg.timestamp}
    if isinstance(msg, Error):
        d: dict[str, Any] = {
            "type": "Error",
            "variant": msg.variant,
            "description": msg.description,
        }
        if msg.code is not None:
            d["code"] = msg.code
        if msg.message is not None:
            d["message"] = msg.message
        return d
    return dict(msg.raw) | {"type": msg.type}


def serialize_server_message(msg: ServerMessage) -> str:
    """JSON text for ``msg``; :func:`parse_server_message` reads it back to an equal value."""
    return json.dumps(server_message_dict(msg))


# -- client messages ----------------------------------------------------------------------


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse a client text message; an unknown or missing ``type`` raises ``MalformedResponse``.

    (A real server answers those with an ``Error`` of variant ``SchemaError``.)
    """
    return _parse_client(text, "Deepgram", CLIENT_MESSAGE_TYPES)


def serialize_client_message(msg: ClientMessage) -> str:
    return json.dumps({"type": msg.type, **msg.fields})


# -- prerecorded (REST) -------------------------------------------------------------------

Channel = tuple[str, float | None, tuple[Word, ...]]
"""One channel of a prerecorded answer: transcript, confidence, words."""


def _channels(value: Iterable[Channel]) -> tuple[Channel, ...]:
    return tuple(value)


@attrs.frozen
class PrerecordedResponse:
    """``POST /v1/listen``'s answer, reduced to the first alternative of each channel."""

    request_id: str
    duration: float
    channels: tuple[Channel, ...] = attrs.field(converter=_channels)

    @property
    def transcript(self) -> str:
        return self.channels[0][0] if self.channels else ""

    @property
    def words(self) -> tuple[Word, ...]:
        return self.channels[0][2] if self.channels else ()


def parse_prerecorded(data: str | bytes | Mapping[str, Any]) -> PrerecordedResponse:
    obj = load_object(data, "Deepgram prerecorded response")
    meta = obj.get("metadata") or {}
    results = obj.get("results") or {}
    channels: list[Channel] = []
    for ch in results.get("channels") or ():
        alt = _first_alternative({"channel": ch})
        channels.append(
            (
                str(alt.get("transcript") or ""),
                _opt_num(alt, "confidence"),
                tuple(_parse_word(w) for w in alt.get("words") or ()),
            )
        )
    return PrerecordedResponse(
        request_id=str(meta.get("request_id") or ""),
        duration=_num(meta, "duration", 0.0),
        channels=channels,
    )


def serialize_prerecorded(resp: PrerecordedResponse) -> str:
    return json.dumps(
        {
            "metadata": {
                "transaction_key": "deprecated",
                "request_id": resp.request_id,
                "sha256": "",
                "created": "2026-01-01T00:00:00.000Z",
                "duration": resp.duration,
                "channels": len(resp.channels),
                "models": ["00000000-0000-0000-0000-000000000000"],
                "model_info": {},
            },
            "results": {
                "channels": [{"alternatives": [_alternative(t, c, w)]} for t, c, w in resp.channels]
            },
        }
    )


# -- listen options -----------------------------------------------------------------------

_BOOL_OPTIONS: Final = ("interim_results", "punctuate", "smart_format", "vad_events")
_INT_OPTIONS: Final = ("utterance_end_ms",)


@attrs.frozen
class ListenOptions:
    """The listen v1 options sttrouter sets, normalised once.

    ``endpointing`` is milliseconds of silence that end an utterance, or ``False`` to turn
    endpointing off. ``None`` leaves an option to Deepgram's default.
    """

    model: str = "nova-3"
    language: str | None = None
    interim_results: bool = True
    punctuate: bool | None = True
    smart_format: bool | None = None
    endpointing: int | bool | None = 300
    utterance_end_ms: int | None = None
    vad_events: bool | None = None
    encoding: str = "linear16"
    sample_rate: int = 16_000
    channels: int = 1

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ListenOptions:
        """Read an endpoint's ``connection.options`` (unknown keys are left to the caller)."""
        kw: dict[str, Any] = {}
        if "model" in options:
            kw["model"] = str(options["model"])
        if options.get("language") is not None:
            kw["language"] = str(options["language"])
        for name in _BOOL_OPTIONS:
            if name in options:
                kw[name] = None if options[name] is None else as_bool(name, options[name])
        if "endpointing" in options:
            value = options["endpointing"]
            kw["endpointing"] = (
                value
                if value is None or (isinstance(value, bool) and not value)
                else as_int("endpointing", value)
            )
        for name in _INT_OPTIONS:
            if name in options:
                kw[name] = None if options[name] is None else as_int(name, options[name])
        return cls(**kw)

    def sdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.listen.v1.connect`` (``None`` values dropped)."""
        d = attrs.asdict(self)
        if d["endpointing"] is False:
            d["endpointing"] = "false"
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ListenOptions:
        """What a server reads from the ``/v1/listen`` query string."""
        opts: dict[str, Any] = dict(query)
        if opts.get("endpointing", "").lower() == "false":
            opts["endpointing"] = False
        out = cls.from_options({k: v for k, v in opts.items() if k in _QUERY_KEYS})
        return attrs.evolve(
            out,
            encoding=query.get("encoding", "linear16"),
            sample_rate=as_int("sample_rate", query.get("sample_rate", 16_000)),
            channels=as_int("channels", query.get("channels", 1)),
            interim_results=as_bool("interim_results", query.get("interim_results", "false")),
            punctuate=as_bool("punctuate", query["punctuate"]) if "punctuate" in query else None,
            endpointing=out.endpointing if "endpointing" in query else None,
        )


_QUERY_KEYS: Final = frozenset(
    {"model", "language", "endpointing", "utterance_end_ms", *_BOOL_OPTIONS}
)
