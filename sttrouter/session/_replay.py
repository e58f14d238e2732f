"""The replay buffer of a routed session and the speech-energy tests it answers.

Audio is kept in the engine format (16 kHz mono s16le) and addressed by *byte positions on the
session timeline* (0 = the first byte the caller sent), so slicing, re-basing and "which audio
has a final" are exact integer arithmetic, free of float drift.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from sttrouter.audio import ENGINE_FORMAT, AudioFormat

__all__ = ["ReplayBuffer", "chunk_has_speech"]

_FRAME_SECONDS = 0.02


def _power(threshold_dbfs: float) -> float:
    """Mean-square int16 amplitude equal to ``threshold_dbfs`` (full scale = 32768)."""
    return float((10.0 ** (threshold_dbfs / 20.0) * 32768.0) ** 2)


_QUIET_HIGH_BYTES = b"\x00\xff"  # the high byte of every int16 in -256..255


def chunk_has_speech(pcm: bytes, threshold_dbfs: float, *, quiet_only: bool = False) -> bool:
    """Whether an s16le chunk's RMS level (as :func:`sttrouter.audio.rms_dbfs`) exceeds the
    threshold.

    A chunk whose samples all lie in -256..255 cannot have an RMS above 256 (-42 dBFS); that
    is checked on the high bytes alone (a C-level scan, well under a microsecond), so quiet
    audio — most of a stream — never reaches numpy.
    """
    n = len(pcm) // 2
    if n == 0:
        return False
    power = _power(threshold_dbfs)
    if power >= 256.0**2 and not pcm[1 : 2 * n : 2].translate(None, _QUIET_HIGH_BYTES):
        return False
    if quiet_only:
        return True  # ``quiet_only``: only the quick test for all-quiet audio, no RMS
    x = np.frombuffer(pcm, dtype="<i2", count=n).astype(np.float32)
    return float(x @ x) / n > power


class ReplayBuffer:
    """Audio since the last final boundary, bounded to ``max_seconds``.

    Chunks are kept as the caller's own ``bytes`` objects in a list (no copy on the hot path,
    no reallocation of one growing buffer — which, with hundreds of sessions in a process,
    cost more than everything else together); positions are found by bisection.

    Attributes:
        start: session byte position of the oldest byte still held.
        end: session byte position just past the newest byte (= all audio received).
    """

    def __init__(self, max_seconds: float, fmt: AudioFormat = ENGINE_FORMAT) -> None:
        self.format = fmt
        self.bytes_per_second = fmt.bytes_per_second
        frame = fmt.frame_bytes
        self.max_bytes = max(frame, fmt.bytes_for(max_seconds) // frame * frame)
        self.reset()

    def __len__(self) -> int:
        return self.end - self.start

    def reset(self) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # session position of each chunk's first byte
        self._head = 0  # chunks before this index are forgotten
        self.start = 0
        self.end = 0

    def seconds(self, pos: int) -> float:
        return pos / self.bytes_per_second

    def position(self, seconds: float) -> int:
        """The frame-aligned byte position nearest ``seconds``, clamped to ``[0, end]``."""
        frames = round(seconds * self.format.sample_rate)
        return min(self.end, max(0, frames * self.format.frame_bytes))

    def append(self, pcm: bytes) -> tuple[int, int] | None:
        """Add audio; returns the ``(start, end)`` byte span dropped when over the bound."""
        self._chunks.append(pcm)
        self._starts.append(self.end)
        self.end += len(pcm)
        over = self.end - self.start - self.max_bytes
        if over <= 0:
            return None
        dropped = (self.start, self.start + over)
        self.trim(self.start + over)
        return dropped

    def read(self, pos: int, limit: int) -> bytes:
        """Up to ``limit`` bytes from session position ``pos`` (clamped to what is held)."""
        pos = max(pos, self.start)
        stop = min(self.end, pos + limit)
        if stop <= pos:
            return b""
        i = bisect.bisect_right(self._starts, pos, lo=self._head) - 1
        first = self._chunks[i]
        off = pos - self._starts[i]
        if off + (stop - pos) <= len(first):
            return first[off : off + stop - pos]
        parts = [first[off:]]
        got = len(first) - off
        i += 1
        while got < stop - pos:
            piece = self._chunks[i][: stop - pos - got]
            parts.append(piece)
            got += len(piece)
            i += 1
        return b"".join(parts)

    def trim(self, pos: int) -> None:
        """Forget audio before ``pos`` (it has a final now)."""
        if pos > self.end:
            pos = self.end
        if pos <= self.start:
            return
        self.start = pos
        # the head only moves forward, one chunk at a time: amortised O(1) per chunk
        starts, head = self._starts, self._head
        last = len(starts) - 1
        while head < last and starts[head + 1] <= pos:
            head += 1
        self._head = head
        if head > 256 and head * 2 > len(self._chunks):
            del self._chunks[: self._head]
            del self._starts[: self._head]
            self._head = 0

    def has_speech(self, lo: int, hi: int, threshold_dbfs: float) -> bool:
        """Whether any 20 ms frame of the held audio in ``[lo, hi)`` is louder than the
        threshold (audio no longer held counts as silence)."""
        lo = max(lo, self.start)
        data = self.read(lo, min(hi, self.end) - lo)
        if len(data) < 2 or not chunk_has_speech(data, threshold_dbfs, quiet_only=True):
            return False
        x = np.frombuffer(data, dtype="<i2", count=len(data) // 2).astype(np.float64)
        step = max(1, round(_FRAME_SECONDS * self.format.sample_rate))
        usable = len(x) // step * step
        frames = [x[:usable].reshape(-1, step)] if usable else []
        power = [float(v) for f in frames for v in np.mean(f * f, axis=1)]
        if usable < len(x):
            tail = x[usable:]
            power.append(float(np.mean(tail * tail)))
        limit = _power(threshold_dbfs)
        return any(p > limit for p in power if not math.isnan(p))
