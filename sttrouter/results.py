"""What engines return: words, results and whole transcripts.

Times are seconds on the *session's* audio timeline: 0 is the first sample the caller sent.
Adapters report times on their own stream's timeline; a routed session re-bases them with
:meth:`STTResult.shifted`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["STTResult", "Transcript", "WordTimestamp"]


def _words(value: Iterable[WordTimestamp]) -> tuple[WordTimestamp, ...]:
    return tuple(value)


def _results(value: Iterable[STTResult]) -> tuple[STTResult, ...]:
    return tuple(value)


@attrs.frozen
class WordTimestamp:
    """One recognised word and where it lies on the audio timeline."""

    word: str
    start: float
    end: float
    confidence: float | None = None

    def shifted(self, offset: float) -> WordTimestamp:
        return attrs.evolve(self, start=self.start + offset, end=self.end + offset)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class STTResult:
    """One hypothesis from an engine.

    Attributes:
        transcript: the text; may be empty.
        is_final: the engine will not revise this text.
        is_end_of_utterance: the speaker finished a turn here (``speech_final``, end of turn).
        confidence: 0..1 when the engine reports it.
        start: where the text begins, seconds on the session timeline.
        duration: how much audio the result covers, seconds.
        words: per-word times, when the engine gives them.
        language: BCP-47 code when the engine reports one.
        latency: seconds from sending the audio that ends this result until it arrived.
        timestamp: the clock reading when the result arrived.
        endpoint_id: which endpoint produced it.
    """

    transcript: str
    is_final: bool
    is_end_of_utterance: bool = False
    confidence: float | None = None
    start: float = 0.0
    duration: float = 0.0
    words: tuple[WordTimestamp, ...] = attrs.field(default=(), converter=_words)
    language: str | None = None
    latency: float | None = None
    timestamp: float = 0.0
    endpoint_id: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    def shifted(self, offset: float) -> STTResult:
        """The same result moved ``offset`` seconds later on the timeline."""
        if not offset:
            return self
        return attrs.evolve(
            self,
            start=self.start + offset,
            words=tuple(w.shifted(offset) for w in self.words),
        )

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        d["words"] = [w.to_dict() for w in self.words]
        return d


@attrs.frozen
class Transcript:
    """A whole transcription: the final results in order."""

    results: tuple[STTResult, ...] = attrs.field(converter=_results)
    duration: float = 0.0
    language: str | None = None

    @classmethod
    def from_results(
        cls, results: Iterable[STTResult], *, duration: float = 0.0, language: str | None = None
    ) -> Transcript:
        """Keep only the finals with text, in time order."""
        finals = sorted((r for r in results if r.is_final and r.transcript), key=lambda r: r.start)
        lang = language or next((r.language for r in finals if r.language), None)
        return cls(tuple(finals), duration=duration, language=lang)

    @property
    def text(self) -> str:
        return " ".join(r.transcript.strip() for r in self.results if r.transcript.strip())

    @property
    def words(self) -> tuple[WordTimestamp, ...]:
        return tuple(w for r in self.results for w in r.words)

    @property
    def endpoint_ids(self) -> tuple[str, ...]:
        """Endpoints that produced the results, in order of first appearance."""
        seen: dict[str, None] = {}
        for r in self.results:
            if r.endpoint_id:
                seen.setdefault(r.endpoint_id)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "duration": self.duration,
            "language": self.language,
            "results": [r.to_dict() for r in self.results],
        }
