"""OpenAI transcription response formats the gateway answers with. Sans-I/O.

``response_format`` is one of :data:`RESPONSE_FORMATS`:

* ``json`` — ``{"text", "usage": {"type": "duration", "seconds"}}``;
* ``text`` — the text alone;
* ``verbose_json`` — ``{"task", "language", "duration", "text", "segments", "words"?,
  "usage"}``: one segment per final result, and the words with their times when
  ``timestamp_granularities[]`` asks for ``word`` and the engine gave word times;
* ``srt`` / ``vtt`` — SubRip and WebVTT captions, one cue per final result.

With ``stream=true`` the answer is OpenAI's server-sent events instead:
``{"type": "transcript.text.delta", "delta"}`` for every final, then
``{"type": "transcript.text.done", "text", "usage"}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

from sttrouter.results import STTResult, Transcript

__all__ = [
    "RESPONSE_FORMATS",
    "delta_event",
    "done_event",
    "json_body",
    "srt",
    "usage",
    "verbose_json_body",
    "vtt",
]

RESPONSE_FORMATS: Final = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES: Final = frozenset({"word", "segment"})


def usage(seconds: float) -> dict[str, Any]:
    """OpenAI's duration usage: whole seconds of audio, rounded up."""
    return {"type": "duration", "seconds": math.ceil(seconds)}


def json_body(transcript: Transcript, seconds: float) -> dict[str, Any]:
    return {"text": transcript.text, "usage": usage(seconds)}


def _finals(transcript: Transcript) -> list[STTResult]:
    return [r for r in transcript.results if r.is_final and r.transcript.strip()]


def verbose_json_body(
    transcript: Transcript,
    seconds: float,
    *,
    language: str | None,
    granularities: Iterable[str] = ("segment",),
) -> dict[str, Any]:
    """The ``verbose_json`` answer; ``words`` only when asked for and the engine has them."""
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": round(r.start, 3),
            "end": round(r.end, 3),
            "text": r.transcript.strip(),
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": math.log(r.confidence) if r.confidence else 0.0,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        for i, r in enumerate(_finals(transcript))
    ]
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": _language_name(language or transcript.language),
        "duration": round(seconds, 3),
        "text": transcript.text,
        "segments": segments,
        "usage": usage(seconds),
    }
    if "word" in set(granularities):
        words = [w for r in _finals(transcript) for w in r.words]
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words
        ]
    return body


_LANGUAGES: Final = {"en": "english", "fr": "french", "de": "german", "es": "spanish",
                     "it": "italian", "pt": "portuguese", "nl": "dutch", "ja": "japanese",
                     "zh": "chinese", "ko": "korean", "ru": "russian"}  # fmt: skip


def _language_name(code: str | None) -> str:
    """OpenAI names the language in ``verbose_json`` (``english``); unknown codes stay codes."""
    if not code:
        return "english"
    base = code.split("-")[0].lower()
    return _LANGUAGES.get(base, code)


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(transcript: Transcript) -> str:
    """SubRip captions: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    cues = [
        f"{i}\n{_stamp(r.start, ',')} --> {_stamp(r.end, ',')}\n{r.transcript.strip()}\n"
        for i, r in enumerate(_finals(transcript), 1)
    ]
    return "\n".join(cues)


def vtt(transcript: Transcript) -> str:
    """WebVTT captions: ``WEBVTT`` then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = [
        f"{_stamp(r.start, '.')} --> {_stamp(r.end, '.')}\n{r.transcript.strip()}\n"
        for r in _finals(transcript)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def delta_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": text}


def done_event(text: str, seconds: float) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text, "usage": usage(seconds)}
