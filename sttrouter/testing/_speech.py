"""Synthetic "speech" whose words a fake engine can read back exactly.

Each word is a run of one constant int16 value (``MARK_BASE + n``) lasting ``word_seconds``;
pauses between utterances are digital silence. :class:`~sttrouter.testing.FakeSTTService`
decodes runs back into the words ``w<n>``, so what a fake engine "hears" depends on the audio
it was really given: a replayed stretch yields the same words again, a lost stretch yields
none. That makes "every sample covered exactly once" checkable.

The values survive only 16 kHz mono s16le unchanged; send it in that format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs
import numpy as np

from sttrouter.audio import ENGINE_FORMAT, AudioFormat

__all__ = ["MARK_BASE", "SyntheticSpeech", "mark_word", "synthetic_speech"]

MARK_BASE: Final = 2000
"""Word ``n`` is the int16 value ``MARK_BASE + n`` (loud enough to count as speech energy)."""


def mark_word(value: int) -> str:
    """The word a fake engine reads from a run of ``value``."""
    return f"w{value - MARK_BASE}"


@attrs.frozen
class SyntheticSpeech:
    """Generated audio plus the truth about it.

    Attributes:
        pcm: 16 kHz mono s16le bytes.
        words: ``(word, start, end)`` in seconds, in order.
        utterances: ``(start, end)`` of each utterance.
    """

    pcm: bytes
    words: tuple[tuple[str, float, float], ...]
    utterances: tuple[tuple[float, float], ...]
    format: AudioFormat = ENGINE_FORMAT

    @property
    def duration(self) -> float:
        return self.format.seconds(len(self.pcm))

    @property
    def text(self) -> str:
        return " ".join(w for w, _, _ in self.words)

    def chunks(self, seconds: float = 0.02) -> list[bytes]:
        size = self.format.bytes_for(seconds)
        return [self.pcm[i : i + size] for i in range(0, len(self.pcm), size)]


def synthetic_speech(
    utterances: Sequence[int] = (5, 5, 5),
    *,
    word_seconds: float = 0.1,
    gap_seconds: float = 0.5,
    lead_seconds: float = 0.0,
    first_word: int = 1,
) -> SyntheticSpeech:
    """Build utterances of ``utterances[i]`` words each, separated by ``gap_seconds`` silence.

    The audio ends with one more gap, so the last utterance is end-pointed too.
    """
    rate = ENGINE_FORMAT.sample_rate
    word_n = round(word_seconds * rate)
    gap_n = round(gap_seconds * rate)
    parts: list[np.ndarray] = [np.zeros(round(lead_seconds * rate), dtype=np.int16)]
    words: list[tuple[str, float, float]] = []
    spans: list[tuple[float, float]] = []
    pos = len(parts[0])
    n = first_word
    for count in utterances:
        start = pos
        for _ in range(count):
            value = MARK_BASE + n
            if value > 32767:
                raise ValueError("too many words for int16 marks")
            parts.append(np.full(word_n, value, dtype=np.int16))
            words.append((mark_word(value), pos / rate, (pos + word_n) / rate))
            pos += word_n
            n += 1
        spans.append((start / rate, pos / rate))
        parts.append(np.zeros(gap_n, dtype=np.int16))
        pos += gap_n
    pcm = np.concatenate(parts).astype("<i2").tobytes()
    return SyntheticSpeech(pcm=pcm, words=tuple(words), utterances=tuple(spans))
