"""The hedge of a routed session: when to open it, and how it ends.

At most one hedge runs at a time, beside the serving leg. It is opened when the serving leg
counts as slow (:meth:`Hedger.slow_after`, asked by the leg's watchdog), replays the buffer
like a failover (the session's catch-up feeds it, under the stream lock) and then gets the
live audio too. It ends in one of three ways, each with an event:

- its final for an utterance is delivered first: at that boundary it *wins*, becomes the
  serving leg and the first one is closed (``HEDGE_WON``), and the session does not switch
  back to the beaten endpoint for ``HedgeConfig.hold_after_win`` seconds; the same, without
  the hold, when the serving leg fails while the hedge is healthy (the hedge takes over
  without a replay), and when the stream ends and the hedge delivers its last finals first
  (``stop_streaming`` does not wait for the slow first endpoint);
- the serving leg's final comes first, the hedge fails, the cost cap is reached or the
  stream ends: it is closed (``HEDGE_CANCELLED``).

Every byte sent to a hedge is checked against the cost cap first and booked as hedged audio
in the usage ledger. A session without a :class:`~sttrouter.session.hedge.HedgeConfig` never
gets here: its legs are built without the hedging hooks, so hedging costs it nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from sttrouter.events import RouteEventKind
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.delivery import ResultPath
from sttrouter.session.hedge import HedgeConfig, HedgeGate
from sttrouter.session.journal import Journal
from sttrouter.session.leg import Leg, LegHooks, LegPool
from sttrouter.session.opening import EndpointOpener

__all__ = ["HedgeHooks", "Hedger"]


@attrs.frozen
class HedgeHooks:
    """What the hedger needs from its session."""

    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    serving: Callable[[], Leg | None]
    """The leg serving the stream now."""
    running: Callable[[], bool]
    """The stream is running (not opening, finishing or idle)."""
    hedged: Callable[[], bool]
    """The stream is running with a caught-up hedge (each chunk goes to both legs)."""
    owning: Callable[[], AbstractAsyncContextManager[None]]
    """Hold the stream (chunks only buffer meanwhile)."""
    catch_up: Callable[[], Coroutine[Any, Any, None]]
    """Bring the serving leg and the hedge up to date with the buffer (while owning)."""
    promote: Callable[[Leg], None]
    """Drop the serving leg and make the given one serve."""
    ended: Callable[[], None]
    """The hedge is over (the session stops feeding two legs)."""


class Hedger:
    """The hedge of one routed session (see the module docstring).

    Attributes:
        leg: the running hedge, if any.
    """

    _endpoints: EndpointOpener
    _results: ResultPath
    _journal: Journal
    _buf: ReplayBuffer

    def __init__(
        self,
        config: HedgeConfig,
        hooks: HedgeHooks,
        legs: LegPool,
        hold: Callable[[str, float], None] = lambda _id, _seconds: None,
    ) -> None:
        self.gate = HedgeGate(config)
        self._hooks, self._legs, self._hold = hooks, legs, hold
        self.leg: Leg | None = None
        self._opening = False

    def attach(
        self, endpoints: EndpointOpener, results: ResultPath, journal: Journal, buf: ReplayBuffer
    ) -> None:
        """The session's pieces, once they exist."""
        self._endpoints, self._results, self._journal, self._buf = endpoints, results, journal, buf

    def leg_hooks(self, hooks: LegHooks) -> LegHooks:
        """``hooks`` with the hedging ones: every leg tells when it is slow and how fast it
        answers."""
        return attrs.evolve(
            hooks, slow_after=self.slow_after, on_slow=self.on_slow, on_response=self.observe
        )

    def begin(self) -> None:
        """A new stream."""
        self.leg = None
        self._opening = False
        self._results.hold = None
        self.gate.begin()

    def end(self) -> None:
        """The stream ended: count its audio into the shared tallies."""
        self.gate.count(self._buf.end)

    # -- leg hooks ------------------------------------------------------------------------
    def slow_after(self, leg: Leg) -> float | None:
        """Seconds after speech before ``leg`` counts as slow; ``None`` when it cannot be
        hedged now (it is not the serving leg, or a hedge is already running)."""
        if self.leg is not None or self._opening or leg is not self._hooks.serving():
            return None
        return self.gate.threshold(leg.endpoint)

    def observe(self, leg: Leg, seconds: float) -> None:
        """``leg`` answered speech after ``seconds``."""
        self.gate.stats.observe(leg.endpoint.id, seconds)

    def on_slow(self, leg: Leg) -> None:
        """``leg`` has given no result for speech within the threshold: open a hedge."""
        hooks = self._hooks
        if self.leg is not None or self._opening or leg is not hooks.serving():
            return
        if not hooks.running():
            return
        target = self._endpoints.hedge_target(leg.endpoint)
        if target is None:
            return  # nobody of the same language capability can take it: nothing to say
        buf = self._buf
        if not self.gate.allows(buf.end - buf.start, buf.end):
            self._journal.emit(
                RouteEventKind.HEDGE_CANCELLED,
                target.id,
                previous=leg.endpoint.id,
                reason=f"not opened: hedged audio would pass the cost cap of "
                f"{self.gate.config.max_share:.0%} of all audio",
            )
            return
        self._opening = True
        waited = self.gate.threshold(leg.endpoint)
        hooks.spawn(self._open(leg, target.id, waited))

    # -- life cycle -----------------------------------------------------------------------
    async def _open(self, primary: Leg, target_id: str, waited: float) -> None:
        target = next((ep for ep in self._endpoints.chain if ep.id == target_id), None)
        try:
            opened = await self._endpoints.open(target, queue=False) if target else None
        finally:
            self._opening = False
        if not isinstance(opened, Leg):
            why = opened.message if opened is not None else "it left the chain"
            self._journal.emit(
                RouteEventKind.HEDGE_CANCELLED, target_id, reason=f"not opened: {why}"
            )
            return
        opened.hedge_end = sys.maxsize
        self._legs.add(opened)
        hooks = self._hooks
        if primary is not hooks.serving() or not primary.healthy or not hooks.running():
            self._close(opened, "the stream moved on while it opened")
            return
        self.leg = opened
        self._results.hold = opened
        buf = self._buf
        self._journal.emit(
            RouteEventKind.HEDGE_OPENED,
            opened.endpoint.id,
            previous=primary.endpoint.id,
            reason=f"no result from {primary.endpoint.id} for {waited:.3f}s after speech",
            interval=(buf.seconds(opened.offset), buf.seconds(buf.end)),
        )
        async with hooks.owning():
            await hooks.catch_up()

    # -- the data path (only while hedged) -------------------------------------------------
    async def send(self, pcm: bytes, before: int, max_send: int) -> bool:
        """A chunk of a hedged stream (the buffer now ends just past it): the fast path for
        two caught-up legs; ``False`` when the session must catch up instead."""
        leg, hedge, end = self._hooks.serving(), self.leg, self._buf.end
        if leg is None or not leg.healthy or hedge is None or len(pcm) > max_send:
            return False
        if not (leg.fed == before == hedge.fed):
            return False
        await leg.feed(pcm, end)
        # the serving leg's send may have let a settle, failover or cap change things
        hedged = self._hooks.hedged() and self.leg is hedge and hedge.fed == before
        if hedged and self.allow(len(pcm)):
            await hedge.feed(pcm, end)
        return True

    async def feed(self, hedge: Leg, limit: int) -> None:
        """Send the hedge its next piece of the buffer (up to ``limit`` bytes), within the
        cost cap; the session calls it while it owns the stream."""
        buf = self._buf
        if hedge.fed < buf.start:  # the buffer overflowed under it: its timeline has a hole
            self.cancel("the replay buffer overflowed before it caught up")
            return
        data = buf.read(hedge.fed, limit)
        if self.allow(len(data)):
            await hedge.feed(data, hedge.fed + len(data))

    def allow(self, nbytes: int) -> bool:
        """Whether the hedge may be sent ``nbytes`` more (booked if so); when the cost cap
        forbids it, the hedge is cancelled and ``False`` returned."""
        if self.gate.allows(nbytes, self._buf.end):
            self.gate.spend(nbytes)
            return True
        share = self.gate.config.max_share
        self.cancel(f"the cost cap: hedged audio would pass {share:.0%} of all audio")
        return False

    def at_boundary(self, leg: Leg, delivered: bool) -> None:
        """An utterance ended in a final of ``leg`` (``delivered``: it came first)."""
        hedge = self.leg
        if hedge is None or not delivered or not self._hooks.running():
            return
        if leg is hedge or leg is self._hooks.serving():
            self._hooks.spawn(self._settle(leg))

    async def _settle(self, winner: Leg) -> None:
        hooks = self._hooks
        async with hooks.owning():
            hedge, primary = self.leg, hooks.serving()
            if hedge is None or primary is None or not hooks.running():
                return
            if winner is hedge and hedge.healthy:
                self._won(hedge, primary, "its final for the utterance came first")
                self._hold(primary.endpoint.id, self.gate.config.hold_after_win)
            elif winner is primary:
                self.cancel(f"the final of {primary.endpoint.id} came first")
            await hooks.catch_up()

    def take_over(self, failed: Leg) -> Leg | None:
        """The serving leg ``failed``: the hedge, when healthy, serves from now on."""
        hedge = self.leg
        if hedge is None:
            return None
        if not hedge.healthy:
            self.cancel("it failed")
            return None
        reason = "the first endpoint failed"
        if failed.failure is not None:
            reason += f": {failed.failure.message}"
        self._won(hedge, failed, reason)
        return hedge

    def finished(self, winner: Leg, primary: Leg) -> None:
        """The stream ended and ``winner`` delivered its last finals first: a hedge that did
        wins (the slow first endpoint is not waited for); else the hedge is cancelled."""
        hedge = self.leg
        if hedge is None:
            return
        if winner is hedge:
            self._won(hedge, primary, "it delivered the last finals first")
        else:
            self.cancel("the stream ended")

    def _won(self, hedge: Leg, primary: Leg, reason: str) -> None:
        self._release(hedge)
        self._hooks.promote(hedge)
        self._journal.emit(
            RouteEventKind.HEDGE_WON,
            hedge.endpoint.id,
            previous=primary.endpoint.id,
            reason=reason,
        )

    def cancel(self, reason: str) -> None:
        """Close the running hedge (if any) and say why."""
        hedge = self.leg
        if hedge is not None:
            self._release(hedge)
            self._close(hedge, reason)

    def on_failure(self, leg: Leg) -> bool:
        """``leg`` failed: ``True`` when it was the hedge (now cancelled)."""
        if leg is not self.leg:
            return False
        failure = leg.failure
        self.cancel(f"it failed: {failure.message}" if failure is not None else "it failed")
        return True

    def _release(self, hedge: Leg) -> None:
        """``hedge`` stops being a hedge: its audio from now on is ordinary."""
        hedge.hedge_end = hedge.fed
        self.leg = None
        self._results.hold = None
        self._hooks.ended()

    def _close(self, leg: Leg, reason: str) -> None:
        if leg.hedge_end == sys.maxsize:
            leg.hedge_end = leg.fed
        self._legs.drop(leg, background=True)
        serving = self._hooks.serving()
        self._journal.emit(
            RouteEventKind.HEDGE_CANCELLED,
            leg.endpoint.id,
            previous=serving.endpoint.id if serving is not None else None,
            reason=reason,
        )
