"""The replay buffer of a routed session and the speech-energy tests it answers.

Audio is kept in the engine format (16 kHz mono s16le) and addressed by *byte positions on the
session timeline* (0 = the first byte the caller sent), so slicing, re-basing and "which audio
has a final" are exact integer arithmetic, free of float drift.
"""

from __future__ import annotations

import math

import numpy as np

from sttrouter.audio import ENGINE_FORMAT, AudioFormat

__all__ = ["ReplayBuffer", "chunk_has_speech"]

_FRAME_SECONDS = 0.02


def _power(threshold_dbfs: float) -> float:
    """Mean-square int16 amplitude equal to ``threshold_dbfs`` (full scale = 32768)."""
    return float((10.0 ** (threshold_dbfs / 20.0) * 32768.0) ** 2)


def chunk_has_speech(pcm: bytes | bytearray | memoryview, threshold_dbfs: float) -> bool:
    """Whether an s16le chunk's RMS level (as :func:`sttrouter.audio.rms_dbfs`) exceeds the
    threshold. Integer arithmetic, so it costs about a microsecond per 20 ms chunk."""
    n = len(pcm) // 2
    if n == 0:
        return False
    x = np.frombuffer(pcm, dtype="<i2", count=n).astype(np.int64)
    return float(np.dot(x, x)) / n > _power(threshold_dbfs)


class ReplayBuffer:
    """Audio since the last final boundary, bounded to ``max_seconds``.

    Attributes:
        start: session byte position of the oldest byte still held.
        end: session byte position just past the newest byte (= all audio received).
    """

    def __init__(self, max_seconds: float, fmt: AudioFormat = ENGINE_FORMAT) -> None:
        self.format = fmt
        self.bytes_per_second = fmt.bytes_per_second
        frame = fmt.frame_bytes
        self.max_bytes = max(frame, fmt.bytes_for(max_seconds) // frame * frame)
        self._data = bytearray()
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def reset(self) -> None:
        self._data = bytearray()
        self.start = self.end = 0

    def seconds(self, pos: int) -> float:
        return pos / self.bytes_per_second

    def position(self, seconds: float) -> int:
        """The frame-aligned byte position nearest ``seconds``, clamped to ``[0, end]``."""
        frames = round(seconds * self.format.sample_rate)
        return min(self.end, max(0, frames * self.format.frame_bytes))

    def append(self, pcm: bytes) -> tuple[int, int] | None:
        """Add audio; returns the ``(start, end)`` byte span dropped when over the bound."""
        self._data += pcm
        self.end += len(pcm)
        over = len(self._data) - self.max_bytes
        if over <= 0:
            return None
        dropped = (self.start, self.start + over)
        del self._data[:over]
        self.start += over
        return dropped

    def read(self, pos: int, limit: int) -> bytes:
        """Up to ``limit`` bytes from session position ``pos`` (clamped to what is held)."""
        lo = max(pos, self.start) - self.start
        return bytes(self._data[lo : lo + limit])

    def trim(self, pos: int) -> None:
        """Forget audio before ``pos`` (it has a final now)."""
        pos = min(pos, self.end)
        if pos <= self.start:
            return
        del self._data[: pos - self.start]
        self.start = pos

    def has_speech(self, lo: int, hi: int, threshold_dbfs: float) -> bool:
        """Whether any 20 ms frame of the held audio in ``[lo, hi)`` is louder than the
        threshold (audio no longer held counts as silence)."""
        a = max(lo, self.start) - self.start
        b = min(hi, self.end) - self.start
        if b - a < 2:
            return False
        x = np.frombuffer(bytes(self._data[a:b]), dtype="<i2").astype(np.float64)
        step = max(1, round(_FRAME_SECONDS * self.format.sample_rate))
        usable = len(x) // step * step
        frames = [x[:usable].reshape(-1, step)] if usable else []
        power = [float(v) for f in frames for v in np.mean(f * f, axis=1)]
        if usable < len(x):
            tail = x[usable:]
            power.append(float(np.mean(tail * tail)))
        limit = _power(threshold_dbfs)
        return any(p > limit for p in power if not math.isnan(p))
