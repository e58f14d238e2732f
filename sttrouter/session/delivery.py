"""Where a leg's results become the session's: placement on the session timeline, withheld
empty finals, the coverage audit, the watermark and the replay-buffer trim.

The coverage audit: a final that starts past the watermark skips a span; the span is checked
for speech energy (lazily, only then: never per chunk), and a span with speech is replayed —
on a fresh stream of the same endpoint the first time, then on another endpoint — or, when
two endpoints found no words in it, counted as covered; with nobody left to replay it, it is
reported in ``uncovered``. Nothing with speech leaves the replay buffer unaccounted for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sttrouter.errors import MalformedResponse
from sttrouter.results import STTResult
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.audit import Coverage, SkipVerdict
from sttrouter.session.config import SessionConfig
from sttrouter.session.journal import Journal
from sttrouter.session.leg import Leg
from sttrouter.session.opening import EndpointOpener
from sttrouter.session.timeline import Timeline

__all__ = ["ResultPath"]

MIN_GAP_SECONDS = 0.1
"""A final that starts this much or more past the watermark is audited."""


class ResultPath:
    """The results side of a routed session (see the module docstring).

    Attributes:
        endpoints: the session's endpoint opener (set once it exists).
        coverage: the skipped spans waiting for a verdict.
        hold: a hedge leg the buffer must not be trimmed past (it may lag the watermark).
    """

    endpoints: EndpointOpener

    def __init__(
        self,
        timeline: Timeline,
        buffer: ReplayBuffer,
        journal: Journal,
        config: SessionConfig,
        emit: Callable[[STTResult], Awaitable[None]],
        at_boundary: Callable[[Leg, bool], None],
    ) -> None:
        self.timeline, self.buf, self.journal, self.config = timeline, buffer, journal, config
        self.emit, self.at_boundary = emit, at_boundary
        self.coverage = Coverage()
        self.min_gap = buffer.format.bytes_for(MIN_GAP_SECONDS)
        self.silent_until = 0
        self.hold: Leg | None = None

    def reset(self) -> None:
        """A new stream."""
        self.coverage.reset()
        self.silent_until = 0

    async def on_result(self, leg: Leg, result: STTResult) -> None:
        """A result of ``leg`` (already sanity-checked), on its own stream's timeline."""
        timeline = self.timeline
        res = timeline.place(result, leg.offset)
        if not res.is_final:
            if timeline.shows_interim(res):
                await self.emit(res)
            return
        if not res.transcript.strip():
            lo, hi = timeline.position(res.start), timeline.position(res.end)
            speech = self.buf.has_speech(lo, hi, self.config.speech_dbfs)
            if leg.empty_final(res, speech=speech):
                await self.deliver_final(res, leg)
            return
        for withheld in leg.empty.on_text():
            await self.deliver_final(withheld, leg)
        delivered = await self.deliver_final(res, leg)
        if not leg.confirmed:
            leg.confirmed = True
            self.endpoints.record_success(leg.endpoint)
        if res.is_end_of_utterance:
            self.at_boundary(leg, delivered)

    async def deliver_final(self, result: STTResult, leg: Leg) -> bool:
        """Audit the span before ``result``, then deliver what is new of it and move the
        watermark (the buffer is trimmed up to it, never past a leg still opening nor past a
        hedge's audio); ``True`` when some of it was delivered."""
        timeline = self.timeline
        lo = timeline.final_pos
        if not self.audit_gap(leg, timeline.position(result.start)):
            return False  # the leg gave up: the skipped span is replayed with this one
        kept = timeline.admit_final(result)
        if kept is None:
            return False  # already finalised by an earlier endpoint (or a hedge)
        for skip in self.coverage.settle(kept, lo, timeline.position(kept.end), leg.endpoint.id):
            self.journal.audited((skip.lo, skip.hi), leg.endpoint.id, reported=False)
        await self.emit(kept)
        if self.timeline.advance(kept, self.buf.end):
            self.endpoints.sweeps = 0
            self.journal.final_delivered()
            pos, floor = self.timeline.final_pos, self.endpoints.trim_floor
            if floor is not None:
                pos = min(pos, floor)
            if self.hold is not None:
                pos = min(pos, self.hold.fed)
            self.buf.trim(pos)
        return True

    def audit_gap(self, leg: Leg, upto: int) -> bool:
        """``leg`` delivered finals up to the watermark and next reports from ``upto`` (or
        ended there): ``True`` when the span between has no speech or is settled; ``False``
        when the leg was given up so that the span is replayed."""
        lo = self.timeline.final_pos
        if not leg.listening or upto - lo < self.min_gap or self.unfinalised(upto) is None:
            return leg.listening
        eid = leg.endpoint.id
        verdict = self.coverage.on_skip(lo, upto, eid)
        if verdict is SkipVerdict.AGREED:
            self.journal.audited((lo, upto), eid, reported=False)
        elif verdict is SkipVerdict.REPLAY_SAME or self.endpoints.has_alternative(leg.endpoint):
            lo_s, hi_s = self.buf.seconds(lo), self.buf.seconds(upto)
            error = MalformedResponse(f"no final covers the speech at {lo_s:.2f}..{hi_s:.2f}s")
            leg.fail(error, blame=verdict is SkipVerdict.REPLAY_ELSEWHERE)
            return False
        else:
            self.journal.audited((lo, upto), eid, reported=True)
        self.timeline.final_pos = max(lo, upto)
        return True

    def unfinalised(self, upto: int) -> tuple[int, int] | None:
        """The span before ``upto`` with speech and no final, if any (each byte is examined
        once: a span found silent is remembered)."""
        lo = max(self.timeline.final_pos, self.silent_until)
        if upto <= lo:
            return None
        if self.buf.has_speech(lo, upto, self.config.speech_dbfs):
            return (self.timeline.final_pos, upto)
        self.silent_until = upto
        return None
