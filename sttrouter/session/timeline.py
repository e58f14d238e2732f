"""The session timeline: where every endpoint's results land, and which finals are kept.

Pure bookkeeping, free of the event loop. Positions are byte offsets of engine-format audio on
the session timeline (0 = the first byte the caller sent), so "which audio has a final" is
exact integer arithmetic.

- *Re-basing*: endpoint ``k``'s stream starts at session position ``offset_k``; its results
  are shifted by that many seconds (:meth:`Timeline.place`).
- *De-duplication*: the **watermark** is the end of the last delivered final. A final that lies
  before it is dropped; one that straddles it is trimmed, words whose midpoint is before it
  removed (:meth:`Timeline.admit_final`). An interim that ends before it is superseded.
- *Empty finals*: an empty final over speech is withheld (:class:`EmptyFinals`) until a final
  with text shows the endpoint still hears, or a run of them fails the endpoint.
"""

from __future__ import annotations

import enum

import attrs

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.results import STTResult, WordTimestamp

__all__ = ["EmptyFinals", "EmptyVerdict", "Timeline", "trim_before"]

BYTES_PER_SECOND = ENGINE_FORMAT.bytes_per_second
_FRAME_BYTES = ENGINE_FORMAT.frame_bytes
EPS = 0.5 / ENGINE_FORMAT.sample_rate
"""Half a sample: times closer than this are the same instant."""


def trim_before(res: STTResult, t: float) -> STTResult:
    """The part of a final after ``t`` (words whose midpoint lies before ``t`` are dropped)."""
    kept: tuple[WordTimestamp, ...] = tuple(w for w in res.words if (w.start + w.end) / 2 >= t)
    text = " ".join(w.word for w in kept) if res.words else res.transcript
    return attrs.evolve(res, transcript=text, words=kept, start=t, duration=max(0.0, res.end - t))


@attrs.define
class Timeline:
    """The watermark of one stream and the arithmetic around it.

    Attributes:
        final_pos: session byte position up to which a final has been delivered.
    """

    final_pos: int = 0

    @staticmethod
    def seconds(pos: int) -> float:
        return pos / BYTES_PER_SECOND

    @staticmethod
    def position(seconds: float) -> int:
        """The frame-aligned byte position nearest ``seconds`` (never negative)."""
        frames = round(seconds * ENGINE_FORMAT.sample_rate)
        return max(0, frames * _FRAME_BYTES)

    @property
    def watermark(self) -> float:
        """Seconds of session audio already covered by delivered finals."""
        return self.final_pos / BYTES_PER_SECOND

    @staticmethod
    def place(result: STTResult, offset: int) -> STTResult:
        """``result`` of a leg that started at byte ``offset``, on the session timeline (its
        engine-side latency dropped: the session measures its own)."""
        shifted = result.shifted(offset / BYTES_PER_SECOND)
        return attrs.evolve(shifted, latency=None) if shifted.latency is not None else shifted

    def shows_interim(self, result: STTResult) -> bool:
        """Whether an interim still says something about audio without a final."""
        return result.end > self.watermark + EPS

    def admit_final(self, result: STTResult) -> STTResult | None:
        """The part of a final to deliver: ``None`` when it lies in already-finalised time,
        trimmed when it straddles the watermark, else ``result`` itself."""
        mark = self.watermark
        if result.end <= mark + EPS:
            return None
        if result.start < mark - EPS:
            return trim_before(result, mark)
        return result

    def advance(self, delivered: STTResult, limit: int) -> bool:
        """Move the watermark to the end of a delivered final (clamped to ``limit``, the audio
        received); ``True`` when it moved."""
        pos = min(limit, self.position(delivered.end))
        if pos <= self.final_pos:
            return False
        self.final_pos = pos
        return True

    def lost_to_overflow(self, buffer_start: int) -> tuple[int, int] | None:
        """The span without a final that the replay buffer no longer holds (after an overflow),
        and move the watermark past it; ``None`` when nothing was lost."""
        if buffer_start <= self.final_pos:
            return None
        span = (self.final_pos, buffer_start)
        self.final_pos = buffer_start
        return span


class EmptyVerdict(enum.Enum):
    """What to do with an empty final."""

    DELIVER = "deliver"
    """Over silence, with nothing withheld: an ordinary empty final."""
    WITHHOLD = "withhold"
    """Keep it back until the endpoint shows it still hears."""
    FAIL = "fail"
    """Too many in a row over speech: the endpoint has gone deaf."""


@attrs.define
class EmptyFinals:
    """Empty finals over speech, as data: held back until a final with text releases them (in
    order, before it), or until ``limit`` of them in a row fail the endpoint."""

    limit: int
    withheld: list[STTResult] = attrs.Factory(list)
    run: int = 0
    """Empty finals over speech since the last final with text."""

    def on_empty(self, result: STTResult, *, speech: bool) -> EmptyVerdict:
        """An empty final arrived; ``speech``: the audio it covers has speech energy."""
        if not speech and not self.withheld:
            return EmptyVerdict.DELIVER
        self.withheld.append(result)
        if speech:
            self.run += 1
        return EmptyVerdict.FAIL if self.run >= self.limit else EmptyVerdict.WITHHOLD

    def on_text(self) -> list[STTResult]:
        """A final with text arrived: the withheld finals to deliver before it."""
        out, self.withheld = self.withheld, []
        self.run = 0
        return out

    @property
    def pending(self) -> bool:
        """Empty finals over speech are being held back."""
        return bool(self.withheld)
