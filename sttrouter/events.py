"""Route events: what a routed session did with its stream, and why.

Every event carries endpoint ids, a reason, the session audio time and the clock time — never
audio or transcript text, so they are safe to log and ship to metrics.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs

__all__ = ["EventListener", "RouteEvent", "RouteEventKind"]

log = logging.getLogger("sttrouter.session")


class RouteEventKind(enum.StrEnum):
    SELECTED = "selected"
    """The first endpoint of a stream was opened."""
    FAILED = "failed"
    """An endpoint failed (error, close, connect timeout, stall, empty finals, ...)."""
    FAILOVER = "failover"
    """The stream moved to another endpoint after a failure; buffered audio was replayed."""
    RECOVERED = "recovered"
    """An endpoint that failed earlier in this session is usable again."""
    SWITCHED_BACK = "switched_back"
    """At an utterance boundary the stream moved back to a higher-priority endpoint."""
    REROUTED = "rerouted"
    """At an utterance boundary the stream moved because the conditions changed."""
    QUEUED = "queued"
    """An endpoint was at its concurrency limit; the stream waited in its queue."""
    OVERFLOW = "overflow"
    """The replay buffer overflowed; ``interval`` is audio that can no longer be replayed
    (or, when a failover needed it, audio that was not transcribed)."""
    AUDIT = "audit"
    """The coverage audit settled a span with speech energy that a final skipped or never
    covered (``interval``): two endpoints found no words in it, or no endpoint was left to
    replay it (then it is also in ``uncovered``)."""
    HEDGE_OPENED = "hedge_opened"
    """The serving endpoint gave no result for speech within the hedge threshold: a second
    endpoint (same language capability) was opened beside it and replays the buffer."""
    HEDGE_WON = "hedge_won"
    """The hedge delivered an utterance's final first (or the first endpoint failed): it
    serves the stream now and the first endpoint was closed."""
    HEDGE_CANCELLED = "hedge_cancelled"
    """A hedge was closed (the first endpoint's final came first, the hedge failed, the
    stream ended) or not opened (cost cap, no endpoint of the same language capability
    could open)."""


@attrs.frozen
class RouteEvent:
    """One thing a routed session did.

    Attributes:
        kind: what happened.
        endpoint_id: the endpoint concerned (the new one for failover/switch events).
        previous_endpoint_id: the endpoint the stream left, for failover/switch events.
        reason: a human sentence (error message, condition change); no audio or text.
        audio_time: seconds of session audio received when it happened.
        clock_time: the session clock's reading.
        interval: a ``(start, end)`` span of session audio, where one applies (the replayed
            span of a failover, the lost span of an overflow).
    """

    kind: RouteEventKind
    endpoint_id: str | None
    previous_endpoint_id: str | None = None
    reason: str = ""
    audio_time: float = 0.0
    clock_time: float = 0.0
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["kind"] = self.kind.value
        if self.interval is not None:
            d["interval"] = list(self.interval)
        return d

    def __str__(self) -> str:
        move = (
            f"{self.previous_endpoint_id} -> {self.endpoint_id}"
            if self.previous_endpoint_id
            else str(self.endpoint_id)
        )
        span = f" [{self.interval[0]:.3f}s..{self.interval[1]:.3f}s]" if self.interval else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.kind.value} {move} at {self.audio_time:.3f}s{span}{why}"


EventListener = Callable[[RouteEvent], None]


class EventLog:
    """The events of one stream at a time: a callback, an INFO log line and async iteration."""

    def __init__(self, on_event: EventListener | None, limit: int = 10_000) -> None:
        self.on_event = on_event
        self.limit = limit
        self.history: list[RouteEvent] = []
        self._dropped = 0
        self._open = False
        self._ended = False
        self._changed = asyncio.Event()

    def begin(self) -> None:
        self.history = []
        self._dropped = 0
        self._open = True
        self._ended = False
        self._wake()

    def end(self) -> None:
        self._open = False
        self._ended = True
        self._wake()

    def emit(self, event: RouteEvent) -> None:
        if len(self.history) >= self.limit:
            del self.history[: self.limit // 2]
            self._dropped += self.limit // 2
        self.history.append(event)
        log.info("route %s", event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a listener's bug must not break the stream
                log.exception("route event listener failed")
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def iterate(self) -> AsyncIterator[RouteEvent]:
        while not (self._open or self._ended):
            await self._changed.wait()
        seen = self._dropped
        while True:
            changed = self._changed
            index = seen - self._dropped
            if index < 0:
                seen, index = self._dropped, 0
            while index < len(self.history):
                event = self.history[index]
                seen += 1
                index += 1
                yield event
            if self._ended and seen - self._dropped >= len(self.history):
                return
            await changed.wait()
