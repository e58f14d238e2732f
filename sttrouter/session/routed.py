"""The orchestrator of a routed session: one stream over a chain of endpoints.

The pure pieces it drives are :mod:`~sttrouter.session.timeline` (re-basing, de-duplication,
empty finals), :mod:`~sttrouter.session.candidates` (which endpoint may take the stream),
:mod:`~sttrouter.session.leg` (one endpoint stream with its reader and watchdog) and
:mod:`~sttrouter.session.ledger` (usage and cost). See :mod:`sttrouter.session`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import Provider, STTEndpoint
from sttrouter.errors import ConfigError, NoEndpointAvailable
from sttrouter.events import EventListener, RouteEvent
from sttrouter.options import OPTION_NAMES, StreamOptions
from sttrouter.panel.device import Conditions
from sttrouter.resilience import AdmissionController, BreakerBoard, HealthView, RetryPolicy
from sttrouter.service import BaseSTTService, ServiceFactory
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.config import Decider, SessionConfig
from sttrouter.session.control import StreamControl, StreamState
from sttrouter.session.delivery import ResultPath
from sttrouter.session.hedging import Hedger
from sttrouter.session.journal import Journal
from sttrouter.session.ledger import EndpointUsage, UsageLedger
from sttrouter.session.leg import LegHooks, LegPool, LegState
from sttrouter.session.opening import EndpointOpener
from sttrouter.session.switching import SwitchBack
from sttrouter.session.timeline import Timeline

__all__ = ["RoutedSession", "StreamState"]

_PLACEHOLDER = STTEndpoint(
    id="routed", provider=Provider.FAKE, display_name="routed session (no endpoint open)"
)


class RoutedSession(BaseSTTService):
    """An :class:`STTService` over a chain of endpoints, with lossless mid-stream failover.

    Give it either an explicit ``chain`` or a ``router`` (plus ``conditions`` and
    ``language``); with a router the chain comes from ``router.decide(conditions, language,
    health=<breakers and health>)`` at every start, failover and utterance boundary, and
    :meth:`update_conditions` re-routes at the next utterance boundary.

    ``endpoint`` is the endpoint serving now (the first of the chain before a stream starts);
    every result carries the ``endpoint_id`` that produced it, on the session's timeline.
    ``start_streaming(fmt, options)`` passes the :class:`~sttrouter.options.StreamOptions` to
    every endpoint stream it opens; an endpoint that cannot honour them is skipped.

    Args:
        chain: endpoints to use, best first.
        router: decides the chain instead of ``chain``.
        conditions: device tier/network/thermal for the router.
        language: BCP-47 code the router must honour.
        service_factory: builds a fresh service per endpoint stream (default
            :func:`sttrouter.providers.create_service` with this session's clock).
        clock: time source for every deadline (a ``FakeClock`` in tests).
        breakers: a board shared between sessions (default: a private one).
        health: an extra health view, e.g. a :class:`~sttrouter.resilience.HealthMonitor`.
        admission: concurrency limits shared between sessions (default: a private one).
        retry: how often to sweep the whole chain again when every endpoint failed, with
            backoff (the sweep count resets whenever a final arrives).
        config: buffer size and detection thresholds.
        on_event: called with every :class:`RouteEvent`.
        rng: source of retry jitter (seed it for reproducible runs).
    """

    def __init__(
        self,
        chain: Sequence[STTEndpoint] | None = None,
        *,
        router: Decider | None = None,
        conditions: Conditions | None = None,
        language: str | None = None,
        service_factory: ServiceFactory | None = None,
        clock: Clock | None = None,
        breakers: BreakerBoard | None = None,
        health: HealthView | None = None,
        admission: AdmissionController | None = None,
        retry: RetryPolicy | None = None,
        config: SessionConfig | None = None,
        on_event: EventListener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if (chain is None) == (router is None):
            raise ConfigError("give a RoutedSession either a chain of endpoints or a router")
        if chain is not None and not chain:
            raise ConfigError("a RoutedSession needs at least one endpoint in its chain")
        static = tuple(chain) if chain is not None else None
        super().__init__(static[0] if static else _PLACEHOLDER, clock=clock)
        self.config = config or SessionConfig()
        self._breakers = breakers or BreakerBoard(clock=self.clock)
        self._ledger = UsageLedger()
        self.metrics.price_by(self._ledger_cost)
        self._buf = ReplayBuffer(self.config.replay_seconds)
        self._timeline = Timeline()
        self._journal = Journal(on_event, self.clock, self._buf)
        self._legs = LegPool(self._ledger, self._spawn)
        self._control = ctl = StreamControl(
            config=self.config,
            buffer=self._buf,
            timeline=self._timeline,
            journal=self._journal,
            legs=self._legs,
            breakers=self._breakers,
            metrics=self.metrics,
            spawn=self._spawn,
            fail=self._fail,
            streaming=lambda: self.is_streaming,
            serving=self._now_serving,
        )
        self._switch_back = SwitchBack(ctl, self.clock, enabled=self.config.switch_back)
        self._results = ResultPath(
            self._timeline,
            self._buf,
            self._journal,
            self.config,
            self._emit,
            self._switch_back.at_boundary,
        )
        hedge = self.config.hedge
        hooks = LegHooks(
            self.clock,
            self._spawn,
            self._results.on_result,
            ctl.on_leg_failure,
            ctl.fail_stream,
            self._results.unfinalised,
        )
        if hedge is not None:
            ctl.hedger = Hedger(hedge, ctl.hedge_hooks(), self._legs, self._switch_back.hold)
            hooks = ctl.hedger.leg_hooks(hooks)
        self._hedger = ctl.hedger
        self._endpoints = EndpointOpener(
            static=static,
            router=router,
            conditions=conditions or Conditions(),
            language=language,
            factory=service_factory,
            clock=self.clock,
            breakers=self._breakers,
            health=health,
            admission=admission or AdmissionController(clock=self.clock),
            retry=retry or RetryPolicy(),
            rng=rng or random.Random(),
            config=self.config,
            ledger=self._ledger,
            buffer=self._buf,
            timeline=self._timeline,
            hooks=hooks,
            event=self._journal.emit,
        )
        self._results.endpoints = self._endpoints
        ctl.attach(self._endpoints, self._results)
        if self._hedger is not None:
            self._hedger.attach(self._endpoints, self._results, self._journal, self._buf)
        if self._endpoints.chain:
            self.endpoint = self._endpoints.chain[0]
        self._reset_stream_state()

    def _reset_stream_state(self) -> None:
        self._buf.reset()
        self._timeline.final_pos = 0
        self._results.reset()
        self._endpoints.begin(self.stream_options)
        self._control.reset()
        self._switch_back.begin()
        if self._hedger is not None:
            self._hedger.begin()

    # -- public surface -------------------------------------------------------------------
    @property
    def chain(self) -> tuple[STTEndpoint, ...]:
        """The chain the session currently routes along."""
        return self._endpoints.chain

    @property
    def breakers(self) -> BreakerBoard:
        return self._breakers

    @property
    def conditions(self) -> Conditions:
        return self._endpoints.conditions

    @property
    def stream_state(self) -> StreamState:
        return self._control.state

    def events(self) -> AsyncIterator[RouteEvent]:
        """Route events of the current (or next) stream, until that stream ends."""
        return self._journal.iterate()

    @property
    def history(self) -> tuple[RouteEvent, ...]:
        """Route events of the current (or last) stream."""
        return self._journal.history

    @property
    def uncovered(self) -> list[tuple[float, float]]:
        """Spans of session audio that could not be transcribed (replay-buffer overflow, or
        speech that a final skipped when no other endpoint could replay it)."""
        return self._journal.uncovered

    def update_conditions(self, conditions: Conditions) -> None:
        """Re-decide with new conditions; a changed decision moves the stream at the next
        utterance boundary, without losing audio."""
        endpoints = self._endpoints
        if not endpoints.routed:
            raise ConfigError(
                "update_conditions needs a RoutedSession built with a router; "
                "this one has a fixed chain"
            )
        endpoints.conditions = conditions
        endpoints.chain = endpoints.decide()
        leg = self._control.leg
        if leg is not None and endpoints.higher_than(leg.endpoint) is not None:
            self._switch_back.reroute(f"conditions changed ({_describe(conditions)})")

    def usage(self) -> dict[str, EndpointUsage]:
        """Audio and cost per endpoint over the session's life (all streams)."""
        return self._ledger.usage(self._legs.usage())

    @property
    def cost(self) -> Decimal:
        """What the session's audio cost across endpoints (replays included)."""
        return self._ledger_cost()

    @property
    def cost_per_hour(self) -> Decimal:
        return self.endpoint.cost_per_hour

    supported_options = OPTION_NAMES
    """Every option is carried to the endpoint streams; each checks them when it opens, and
    one that cannot honour them is skipped (``NoEndpointAvailable`` names the option when no
    endpoint can)."""

    def check_options(self, options: StreamOptions) -> None:
        """Every option is accepted here: each endpoint stream checks them when it opens."""

    async def probe(self) -> None:
        """Probe the first endpoint of the chain (bills nothing)."""
        chain = self._endpoints.chain
        if not chain:
            raise NoEndpointAvailable(self._endpoints.why_empty())
        await self._endpoints.build(chain[0]).probe()

    # -- BaseSTTService hooks -------------------------------------------------------------
    async def _open(self) -> None:
        self._reset_stream_state()
        self._journal.begin()
        await self._control.open()

    async def _send(self, pcm: bytes) -> None:
        buf, ctl = self._buf, self._control
        before = buf.end
        dropped = buf.append(pcm)
        if dropped is not None:
            self._journal.overflow(dropped, self.endpoint.id, self.config.replay_seconds)
        if ctl.state is not StreamState.LIVE:
            if ctl.state is StreamState.HEDGED:
                await ctl.send_hedged(pcm, before)
            return  # whoever owns the stream catches up with the buffer
        leg = ctl.leg
        if (
            leg is not None
            and leg.state is LegState.LIVE
            and leg.fed == before
            and len(pcm) <= ctl.max_send
        ):
            await leg.feed(pcm, buf.end)  # live and caught up: the common case
        else:
            await ctl.send_slowly(leg)

    async def _finalize(self) -> None:
        await self._control.finalize()

    async def _finish(self) -> None:
        ctl = self._control
        ctl.state = StreamState.FINISHING
        deadline = self.config.stop_deadline
        try:
            async with fail_after(self.clock, deadline), ctl.lock:
                await ctl.finish_legs()
        except TimeoutError:
            await self._legs.close_all()
            raise NoEndpointAvailable(
                f"stop_streaming did not get the last finals within {deadline:g}s",
                uncovered=self._endpoints.uncovered(),
                attempts=tuple(self._endpoints.errors.items()),
            ) from None
        lost = self._journal.lost_audio_error()
        if lost is not None and self.config.raise_on_lost_audio:
            raise lost

    async def _abort(self) -> None:
        self._control.state = StreamState.FINISHING
        await self._legs.close_all()

    async def _teardown(self, stream: Any) -> None:
        if self._hedger is not None:
            self._hedger.end()
        await self._abort()
        await super()._teardown(stream)
        self._journal.end()
        self._control.state = StreamState.IDLE

    def _now_serving(self, endpoint: STTEndpoint) -> None:
        self.endpoint = endpoint

    def _ledger_cost(self) -> Decimal:
        return self._ledger.cost(self._legs.usage())


def _describe(c: Conditions) -> str:
    return f"tier {c.tier.value}, network {c.network.value}, thermal {c.thermal.value}"
