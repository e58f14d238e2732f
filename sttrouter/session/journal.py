"""What a routed session reports: its route events, and the audio it could not get
transcribed (replay-buffer overflow, or a span with speech no endpoint was left to replay)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sttrouter.clock import Clock
from sttrouter.errors import NoEndpointAvailable
from sttrouter.events import EventListener, EventLog, RouteEvent, RouteEventKind
from sttrouter.session._replay import ReplayBuffer

__all__ = ["Journal"]


class Journal:
    """Route events stamped with the session's audio time and clock, and the lost spans.

    Attributes:
        uncovered: spans of session audio (seconds) that could not be transcribed: audio
            that overflowed the replay buffer and then could not be replayed after a failover,
            and spans with speech that a final skipped when no other endpoint could replay
            them.
    """

    def __init__(self, listener: EventListener | None, clock: Clock, buffer: ReplayBuffer) -> None:
        self._log = EventLog(listener)
        self._clock = clock
        self._buf = buffer
        self._overflowing = False
        self.uncovered: list[tuple[float, float]] = []

    def begin(self) -> None:
        """A new stream: a fresh history, nothing lost yet."""
        self._log.begin()
        self._overflowing = False
        self.uncovered = []

    def end(self) -> None:
        self._log.end()

    def iterate(self) -> AsyncIterator[RouteEvent]:
        return self._log.iterate()

    @property
    def history(self) -> tuple[RouteEvent, ...]:
        return tuple(self._log.history)

    def emit(
        self,
        kind: RouteEventKind,
        endpoint_id: str | None,
        *,
        previous: str | None = None,
        reason: str = "",
        interval: tuple[float, float] | None = None,
    ) -> None:
        audio_time = self._buf.seconds(self._buf.end)
        now = self._clock.now()
        self._log.emit(RouteEvent(kind, endpoint_id, previous, reason, audio_time, now, interval))

    def overflow(self, dropped: tuple[int, int], endpoint_id: str, replay_seconds: float) -> None:
        """The buffer dropped its oldest audio (one event per episode, not one per chunk)."""
        if self._overflowing:
            return
        self._overflowing = True
        self.emit(
            RouteEventKind.OVERFLOW,
            endpoint_id,
            reason=f"no final for {replay_seconds:g}s: the oldest audio can no longer be "
            "replayed if this endpoint fails",
            interval=(self._buf.seconds(dropped[0]), self._buf.seconds(dropped[1])),
        )

    def final_delivered(self) -> None:
        """A final ended the overflow episode."""
        self._overflowing = False

    def lost(self, span: tuple[int, int], endpoint_id: str | None) -> None:
        """Audio dropped from the full buffer could not be replayed after a failover."""
        seconds = (self._buf.seconds(span[0]), self._buf.seconds(span[1]))
        self.uncovered.append(seconds)
        self.emit(
            RouteEventKind.OVERFLOW,
            endpoint_id,
            reason="audio dropped from the full replay buffer could not be replayed",
            interval=seconds,
        )

    def audited(self, span: tuple[int, int], endpoint_id: str | None, *, reported: bool) -> None:
        """The coverage audit settled a span with speech energy and no words: two endpoints
        agree (``reported=False``), or nobody was left to replay it (then it is uncovered)."""
        seconds = (self._buf.seconds(span[0]), self._buf.seconds(span[1]))
        if reported:
            self.uncovered.append(seconds)
            reason = "no other endpoint could replay this span with speech that a final skipped"
        else:
            reason = "two endpoints found no words in this span with speech energy: covered"
        self.emit(RouteEventKind.AUDIT, endpoint_id, reason=reason, interval=seconds)

    def lost_audio_error(self) -> NoEndpointAvailable | None:
        """No audio is lost silently: the error naming the first lost span, if any."""
        if not self.uncovered:
            return None
        more = len(self.uncovered) - 1
        return NoEndpointAvailable(
            "audio with no final could not be replayed (a replay-buffer overflow, or a span "
            "with speech that a final skipped and no other endpoint could replay)"
            + (f" ({more} more span(s) in session.uncovered)" if more else "")
            + "; raise SessionConfig.replay_seconds for engines that finalise rarely",
            uncovered=self.uncovered[0],
        )
