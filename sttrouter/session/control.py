"""Who serves a routed session's stream, and the data path to them.

:class:`StreamControl` holds the stream lock, the :class:`StreamState` and the serving leg.
It brings the serving leg (and a hedge) up to date with the replay buffer, fails over in the
background when the serving leg fails (the caller's ``send_audio`` never waits for it), and
finishes the stream. Switch-back and re-routing at utterance boundaries are in
:mod:`~sttrouter.session.switching`, hedges in :mod:`~sttrouter.session.hedging`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import STTError
from sttrouter.events import RouteEventKind
from sttrouter.metrics import STTMetrics
from sttrouter.resilience import BreakerBoard
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.config import SessionConfig
from sttrouter.session.delivery import ResultPath
from sttrouter.session.hedging import HedgeHooks, Hedger
from sttrouter.session.journal import Journal
from sttrouter.session.leg import Leg, LegPool
from sttrouter.session.opening import EndpointOpener
from sttrouter.session.timeline import Timeline

__all__ = ["StreamControl", "StreamState"]

MAX_SEND_SECONDS = 1.0
"""No engine send carries more audio than this: larger chunks are split."""


class StreamState(enum.Enum):
    """Where the session's stream stands."""

    IDLE = "idle"
    OPENING = "opening"
    LIVE = "live"
    """The serving leg is caught up: each chunk goes straight to it."""
    MOVING = "moving"
    """A failover, switch or catch-up owns the stream: chunks are only buffered."""
    HEDGED = "hedged"
    """The serving leg and a caught-up hedge each get every chunk."""
    FINISHING = "finishing"


RUNNING = frozenset({StreamState.LIVE, StreamState.HEDGED})
STREAMING = RUNNING | {StreamState.MOVING}


class StreamControl:
    """The serving side of one routed session (see the module docstring).

    Attributes:
        state: where the stream stands.
        leg: the leg serving the stream (``None`` before it opens and during a failover).
        hedger: the session's hedger (``None``: the session does not hedge).
        finalize_pending: a ``finalize()`` to apply once the serving leg has caught up.
    """

    endpoints: EndpointOpener
    hedger: Hedger | None

    def __init__(
        self,
        *,
        config: SessionConfig,
        buffer: ReplayBuffer,
        timeline: Timeline,
        journal: Journal,
        legs: LegPool,
        breakers: BreakerBoard,
        metrics: STTMetrics,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        fail: Callable[[BaseException], None],
        streaming: Callable[[], bool],
        serving: Callable[[STTEndpoint], None],
    ) -> None:
        self.config, self.buf, self.timeline, self.journal = config, buffer, timeline, journal
        self.legs, self._breakers, self._metrics = legs, breakers, metrics
        self.spawn, self._fail, self._streaming, self._serving = spawn, fail, streaming, serving
        self.chunk_bytes = max(2, buffer.format.bytes_for(config.replay_chunk_seconds))
        self.max_send = buffer.format.bytes_for(MAX_SEND_SECONDS)
        self.lock = asyncio.Lock()
        self.state = StreamState.IDLE
        self.hedger = None
        self.reset()

    def attach(self, endpoints: EndpointOpener, results: ResultPath) -> None:
        """The session's endpoint opener and results path, once they exist."""
        self.endpoints, self.results = endpoints, results

    def hedge_hooks(self) -> HedgeHooks:
        return HedgeHooks(
            self.spawn,
            self.serving,
            self.streaming,
            self.hedged,
            self.owning,
            self.catch_up,
            self.promote,
            self.hedge_ended,
        )

    def reset(self) -> None:
        """A new stream."""
        self.leg: Leg | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.finalize_pending = False

    # -- what the hedger asks --------------------------------------------------------------
    def serving(self) -> Leg | None:
        return self.leg

    def streaming(self) -> bool:
        return self.state in STREAMING

    def hedged(self) -> bool:
        return self.state is StreamState.HEDGED

    def hedge_ended(self) -> None:
        if self.state is StreamState.HEDGED:
            self.state = StreamState.LIVE

    # -- opening and the data path --------------------------------------------------------
    async def open(self) -> None:
        """Open the first leg of a stream."""
        self.state = StreamState.OPENING
        async with self.lock:
            leg = await self.endpoints.acquire(takeover=False)
        self.serve(leg)
        self.state = StreamState.LIVE
        self.journal.emit(
            RouteEventKind.SELECTED, leg.endpoint.id, reason=self.endpoints.rank(leg.endpoint)
        )

    async def send_slowly(self, leg: Leg | None) -> None:
        """A chunk the fast path could not take (it is in the buffer already)."""
        if leg is None or not leg.healthy:
            self.start_failover()  # the caller never waits for a failover
        else:
            async with self.owning():
                await self.catch_up()

    async def send_hedged(self, pcm: bytes, before: int) -> None:
        """A chunk of a hedged stream (the buffer now ends just past it)."""
        assert self.hedger is not None
        if not await self.hedger.send(pcm, before, self.max_send):
            await self.send_slowly(self.leg)

    async def finalize(self) -> None:
        self.finalize_pending = True  # applied once the serving leg has caught up
        if self.state in RUNNING:
            async with self.owning():
                await self.catch_up()

    @asynccontextmanager
    async def owning(self) -> AsyncIterator[None]:
        """Hold the stream: chunks only buffer meanwhile, and the holder catches up."""
        async with self.lock:
            if self.state in RUNNING:
                self.state = StreamState.MOVING
            try:
                yield
            finally:
                if self.state is StreamState.MOVING:
                    hedge = self.hedger.leg if self.hedger is not None else None
                    hedged = hedge is not None and hedge.healthy
                    self.state = StreamState.HEDGED if hedged else StreamState.LIVE

    async def catch_up(self) -> None:
        """Bring the serving leg up to date with the buffer, failing over as needed (and
        apply a pending finalize once it has caught up). Runs only under ``lock``."""
        buf = self.buf
        while True:
            leg = self.leg
            if leg is None or not leg.healthy:
                await self.fail_over(leg)
                continue
            hedge = self.hedger.leg if self.hedger is not None else None
            if leg.fed < buf.end:
                data = buf.read(leg.fed, self.chunk_bytes)
                await leg.feed(data, max(leg.fed, buf.start) + len(data))
            elif hedge is not None and hedge.healthy and hedge.fed < buf.end:
                await self.hedger.feed(hedge, self.chunk_bytes)  # type: ignore[union-attr]
            elif self.finalize_pending:
                await leg.finalize()
                if hedge is not None and hedge.healthy:
                    await hedge.finalize()
                self.finalize_pending = not leg.healthy  # a failed leg's successor gets it
            else:
                return

    # -- failover -------------------------------------------------------------------------
    def start_failover(self) -> None:
        """Fail over in the background unless one is pending or the stream is not live."""
        if self._recovery is not None or self.state not in RUNNING:
            return
        self.state = StreamState.MOVING
        self._recovery = self.spawn(self._recover())

    async def _recover(self) -> None:
        try:
            async with self.owning():
                if self.state is not StreamState.FINISHING:
                    try:
                        await self.catch_up()
                    except STTError as exc:
                        await self.fail_stream(exc)
        finally:
            self._recovery = None

    async def fail_over(self, old: Leg | None) -> None:
        if old is not None:
            self.drop(old)
            rejected = self.endpoints.rejection(old)
            if rejected is not None:
                raise rejected
            if self.hedger is not None and self.hedger.take_over(old) is not None:
                self._metrics.failovers += 1  # the hedge has the audio already: no replay
                return
        self.leg = None
        lost = self.timeline.lost_to_overflow(self.buf.start)
        if lost is not None:  # the buffer overflowed: that audio is gone
            self.journal.lost(lost, old.endpoint.id if old else None)
        leg = await self.endpoints.acquire(takeover=old is not None)
        self.serve(leg)
        self._metrics.failovers += 1
        failure = old.failure if old is not None else None
        self.journal.emit(
            RouteEventKind.FAILOVER,
            leg.endpoint.id,
            previous=old.endpoint.id if old else None,
            reason=failure.message if failure is not None else "",
            interval=self.replay_span(leg),
        )

    def on_leg_failure(self, leg: Leg, error: STTError) -> None:
        if leg.blamed:
            self.endpoints.record_failure(leg.endpoint, error)
        if leg is self.leg:
            self.start_failover()
        elif self.hedger is not None:
            self.hedger.on_failure(leg)

    async def fail_stream(self, error: STTError) -> None:
        """End the caller's stream with ``error`` (a caller error, or nothing left to serve)."""
        await self.legs.close_all()
        self._fail(error)

    # -- finishing ------------------------------------------------------------------------
    async def finish_legs(self) -> None:
        """Finish the serving leg, failing over until one delivers its last finals and no
        span with speech is left without a final (the audit at the end of the stream). With
        a hedge running, both are finished at once and the first to deliver its last finals
        ends the stream: a slow first endpoint is not waited for."""
        while True:
            await self.catch_up()
            leg = self.leg
            assert leg is not None
            hedge = self.hedger.leg if self.hedger is not None else None
            if hedge is not None and hedge.healthy:
                done = await self._finish_either(leg, hedge)
            else:
                done = leg if await self._finished(leg) else None
            if done is not None:
                if self.hedger is not None:
                    self.hedger.finished(done, leg)
                self._breakers.breaker(done.endpoint.id).record_success()
                await self.legs.close(done)
                return

    async def _finished(self, leg: Leg) -> bool:
        """``leg`` delivered its last finals and they leave no span with speech uncovered."""
        return await leg.finish() and self.results.audit_gap(leg, self.buf.end)

    async def _finish_either(self, leg: Leg, hedge: Leg) -> Leg | None:
        """Finish the serving leg and the hedge together: the first of them to deliver its
        last finals (the other is left to be closed), or ``None`` when neither does."""
        tasks = {asyncio.ensure_future(self._finished(x)): x for x in (leg, hedge)}
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    finisher = tasks.pop(task)
                    if task.result():
                        return finisher
            return None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- who serves -----------------------------------------------------------------------
    def serve(self, leg: Leg) -> None:
        """Make ``leg`` the one serving the stream."""
        self.legs.add(leg)
        self.leg = leg
        self._serving(leg.endpoint)

    def promote(self, leg: Leg) -> None:
        """A hedge wins: the serving leg is dropped and ``leg`` serves."""
        old = self.leg
        if old is not None and old is not leg:
            self.drop(old)
        self.serve(leg)

    def drop(self, leg: Leg) -> None:
        """Give ``leg`` up (its connection closes in the background while streaming)."""
        self.legs.drop(leg, background=self._streaming())

    def replay_span(self, leg: Leg) -> tuple[float, float]:
        """The session audio (seconds) ``leg`` replays when it opens."""
        return (self.buf.seconds(leg.offset), self.buf.seconds(self.buf.end))
