"""Switch-back and re-routing at utterance boundaries.

At each end of utterance of the serving leg, a routed session asks its endpoint opener for a
higher-priority endpoint that is usable again (a router decides again first: health and
conditions may have changed) and moves the stream there, replaying the few milliseconds since
the boundary. :meth:`SwitchBack.reroute` marks a move asked for by changed conditions, so its
event says ``rerouted`` instead of ``switched_back``.

A running hedge settles the boundary instead (:mod:`~sttrouter.session.hedging`). After a
hedge *won* because the serving endpoint was slow, the beaten endpoint is not taken back at
once: it is left alone for ``HedgeConfig.hold_after_win`` seconds (a slow endpoint is usually
slow for a while, and every move replays audio, billed again). A failover or a re-route is
never held.
"""

from __future__ import annotations

from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.events import RouteEventKind
from sttrouter.session.control import StreamControl, StreamState
from sttrouter.session.leg import Leg

__all__ = ["SwitchBack"]


class SwitchBack:
    """Switch-back and re-routing of one routed session (see the module docstring)."""

    def __init__(self, control: StreamControl, clock: Clock, *, enabled: bool) -> None:
        self._control, self._clock, self._enabled = control, clock, enabled
        self._reroute: str | None = None
        self._held: dict[str, float] = {}

    def begin(self) -> None:
        """A new stream."""
        self._reroute = None
        self._held.clear()

    def reroute(self, reason: str) -> None:
        """Changed conditions want the stream elsewhere: move at the next boundary."""
        self._reroute = reason

    def hold(self, endpoint_id: str, seconds: float) -> None:
        """Do not switch back to ``endpoint_id`` for ``seconds`` (a hedge beat it)."""
        if seconds > 0:
            self._held[endpoint_id] = self._clock.now() + seconds

    def at_boundary(self, leg: Leg, delivered: bool) -> None:
        """``leg`` delivered an utterance's final (``delivered``: it came first)."""
        ctl = self._control
        hedger = ctl.hedger
        if hedger is not None and hedger.leg is not None:
            hedger.at_boundary(leg, delivered)  # a hedge settles first
            return
        if leg is not ctl.leg or ctl.state is StreamState.FINISHING or not self._enabled:
            return
        target = ctl.endpoints.switch_target(leg.endpoint)
        if target is None:
            self._reroute = None
            return
        if self._reroute is None and self._clock.now() < self._held.get(target.id, 0.0):
            return  # a hedge beat it a moment ago: the stream stays where it is
        ctl.spawn(self._switch(leg, target))

    async def _switch(self, old: Leg, target: STTEndpoint) -> None:
        ctl = self._control
        endpoints = ctl.endpoints
        if endpoints.needs_probe(target) and not await endpoints.probe(target):
            return  # still failing: the stream stays where it is
        async with ctl.owning():
            if old is not ctl.leg or not old.healthy or ctl.state is StreamState.FINISHING:
                return
            reroute, self._reroute = self._reroute, None
            if target.id in endpoints.failed_at and reroute is None:
                ctl.journal.emit(
                    RouteEventKind.RECOVERED, target.id, reason="breaker and health allow it"
                )
            opened = await endpoints.open(target, queue=False)
            if isinstance(opened, Leg):
                ctl.drop(old)
                ctl.serve(opened)
                ctl.journal.emit(
                    RouteEventKind.REROUTED if reroute else RouteEventKind.SWITCHED_BACK,
                    opened.endpoint.id,
                    previous=old.endpoint.id,
                    reason=reroute or "a higher-priority endpoint is usable again",
                    interval=ctl.replay_span(opened),
                )
            await ctl.catch_up()  # the new leg replays; or the old one catches up
