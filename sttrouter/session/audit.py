"""The coverage audit of a routed session: results are sane, and no span with speech goes
without a final or a report.

Pure bookkeeping, free of the event loop.

- :func:`check_result` is the sanity boundary every engine's results pass: finite,
  non-negative times, words inside their result, nothing past the audio the engine was sent,
  ``is_final`` a real boolean, and finals that do not go back in time. A result that fails it
  is a :class:`~sttrouter.errors.MalformedResponse` of the endpoint (the session fails over).
- :class:`Coverage` decides what happens to a span with speech energy that a final skipped
  over (or that an endpoint never finalised): replay it on the same endpoint if it is
  otherwise healthy, then on another one; when a second endpoint also finds no words in it,
  the span counts as covered (two engines agree, e.g. music or breathing), so a loud sound
  that is not speech never ping-pongs between endpoints.
"""

from __future__ import annotations

import enum
import math

import attrs

from sttrouter.results import STTResult
from sttrouter.session.timeline import BYTES_PER_SECOND

__all__ = ["Coverage", "Skip", "SkipVerdict", "check_result"]

TIME_SLACK = 0.5
"""Seconds a result may reach past the audio sent, or a final back before the previous one
(rounding and resampling in the engine); more than that is malformed."""


def check_result(result: STTResult, *, heard: float, last_final_end: float | None) -> str | None:
    """Why ``result`` (on its stream's own timeline) cannot be trusted, or ``None``.

    Args:
        result: as the engine delivered it.
        heard: seconds of audio the stream was sent so far.
        last_final_end: end of the stream's previous final, if any.
    """
    is_final: object = result.is_final  # a parser may have let a string through
    if not isinstance(is_final, bool):
        return f"is_final is {is_final!r}, not a boolean"
    start, duration = result.start, result.duration
    if not (math.isfinite(start) and math.isfinite(duration)):
        return f"non-finite time (start {start!r}, duration {duration!r})"
    if start < 0 or duration < 0:
        return f"negative time (start {start:g}, duration {duration:g})"
    end = start + duration
    limit = heard + TIME_SLACK
    if end > limit:
        return f"result ends at {end:.3f}s, past the {heard:.3f}s of audio sent"
    for w in result.words:
        if not (math.isfinite(w.start) and math.isfinite(w.end)):
            return f"word {w.word!r} has a non-finite time"
        if w.start < 0 or w.end < w.start or w.end > limit:
            return f"word {w.word!r} at {w.start:g}..{w.end:g}s lies outside the audio sent"
    if result.is_final and last_final_end is not None and end < last_final_end - TIME_SLACK:
        return f"final ends at {end:.3f}s, before the previous final's end {last_final_end:.3f}s"
    return None


class SkipVerdict(enum.Enum):
    """What to do with a span with speech that an endpoint left without a final."""

    REPLAY_SAME = "replay_same"
    """First time: open a fresh stream (the same endpoint if it is otherwise healthy) and
    replay the span; the endpoint is not blamed yet."""
    REPLAY_ELSEWHERE = "replay_elsewhere"
    """The same endpoint skipped it again: it counts as that endpoint's failure and the span
    goes to another endpoint (or is reported when none is left)."""
    AGREED = "agreed"
    """Another endpoint skipped it too: two engines agree there are no words; covered."""


@attrs.frozen
class Skip:
    """A span ``[lo, hi)`` (session byte positions) with speech energy that ``endpoint_id``
    left without a final."""

    lo: int
    hi: int
    endpoint_id: str

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.lo < hi and lo < self.hi


@attrs.define
class Coverage:
    """The skipped spans of one stream still waiting for a verdict."""

    skips: list[Skip] = attrs.Factory(list)

    def reset(self) -> None:
        self.skips.clear()

    def on_skip(self, lo: int, hi: int, endpoint_id: str) -> SkipVerdict:
        """``endpoint_id`` left ``[lo, hi)`` (with speech) without a final."""
        near = [s for s in self.skips if s.overlaps(lo, hi)]
        if any(s.endpoint_id != endpoint_id for s in near):
            self.skips = [s for s in self.skips if s not in near]
            return SkipVerdict.AGREED
        self.skips.append(Skip(lo, hi, endpoint_id))
        return SkipVerdict.REPLAY_ELSEWHERE if near else SkipVerdict.REPLAY_SAME

    def settle(self, result: STTResult, lo: int, hi: int, endpoint_id: str) -> list[Skip]:
        """A final of ``endpoint_id`` covering ``[lo, hi)`` was delivered: the earlier skips
        of other endpoints it settles in which it found no words either (two engines agree);
        skips in which it found words are settled silently (the replay recovered them)."""
        if not self.skips:
            return []
        near = [s for s in self.skips if s.overlaps(lo, hi)]
        if not near:
            return []
        self.skips = [s for s in self.skips if s not in near]
        return [s for s in near if s.endpoint_id != endpoint_id and not _words_in(result, s)]


def _words_in(result: STTResult, span: Skip) -> bool:
    """Whether ``result`` (on the session timeline) has words inside ``span``."""
    if not result.transcript.strip():
        return False
    if not result.words:
        return True  # text without word times: assume it covers the span
    lo, hi = span.lo / BYTES_PER_SECOND, span.hi / BYTES_PER_SECOND
    return any(lo <= (w.start + w.end) / 2 < hi for w in result.words)
