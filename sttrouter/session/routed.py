"""The orchestrator of a routed session: one stream over a chain of endpoints.

The pure pieces it drives are :mod:`~sttrouter.session.timeline` (re-basing, de-duplication,
empty finals), :mod:`~sttrouter.session.candidates` (which endpoint may take the stream),
:mod:`~sttrouter.session.leg` (one endpoint stream with its reader and watchdog) and
:mod:`~sttrouter.session.ledger` (usage and cost). See :mod:`sttrouter.session`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import Provider, STTEndpoint
from sttrouter.errors import ConfigError, NoEndpointAvailable, STTError
from sttrouter.events import EventListener, RouteEvent, RouteEventKind
from sttrouter.options import OPTION_NAMES, StreamOptions
from sttrouter.panel.device import Conditions
from sttrouter.resilience import AdmissionController, BreakerBoard, HealthView, RetryPolicy
from sttrouter.service import BaseSTTService, ServiceFactory
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.config import Decider, SessionConfig
from sttrouter.session.delivery import ResultPath
from sttrouter.session.hedging import HedgeHooks, Hedger
from sttrouter.session.journal import Journal
from sttrouter.session.ledger import EndpointUsage, UsageLedger
from sttrouter.session.leg import Leg, LegHooks, LegPool, LegState
from sttrouter.session.opening import EndpointOpener
from sttrouter.session.timeline import Timeline

__all__ = ["RoutedSession", "StreamState"]

log = logging.getLogger("sttrouter.session")

_MAX_SEND_SECONDS = 1.0
"""No engine send carries more audio than this: larger chunks are split."""

_PLACEHOLDER = STTEndpoint(
    id="routed", provider=Provider.FAKE, display_name="routed session (no endpoint open)"
)


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


_RUNNING = frozenset({StreamState.LIVE, StreamState.HEDGED})
_STREAMING = _RUNNING | {StreamState.MOVING}


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
        fmt = self._buf.format
        self._chunk_bytes = max(2, fmt.bytes_for(self.config.replay_chunk_seconds))
        self._max_send = fmt.bytes_for(_MAX_SEND_SECONDS)
        self._timeline = Timeline()
        self._journal = Journal(on_event, self.clock, self._buf)
        self._results = ResultPath(
            self._timeline, self._buf, self._journal, self.config, self._emit, self._at_boundary
        )
        self._legs = LegPool(self._ledger, self._spawn)
        hedge, hooks = self.config.hedge, self._leg_hooks()
        self._hedger = None if hedge is None else Hedger(hedge, self._hedge_hooks(), self._legs)
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
            hooks=self._hedger.leg_hooks(hooks) if self._hedger else hooks,
            event=self._journal.emit,
        )
        self._results.endpoints = self._endpoints
        if self._hedger is not None:
            self._hedger.attach(self._endpoints, self._results, self._journal, self._buf)
        if self._endpoints.chain:
            self.endpoint = self._endpoints.chain[0]
        self._lock = asyncio.Lock()
        self._stream_state = StreamState.IDLE
        self._reset_stream_state()

    def _leg_hooks(self) -> LegHooks:
        return LegHooks(
            self.clock,
            self._spawn,
            self._results.on_result,
            self._on_leg_failure,
            self._fail_stream,
            self._results.unfinalised,
        )

    def _hedge_hooks(self) -> HedgeHooks:
        return HedgeHooks(
            self._spawn,
            lambda: self._leg,
            lambda: self._stream_state in _STREAMING,
            lambda: self._stream_state is StreamState.HEDGED,
            self._owning,
            self._catch_up,
            self._promote,
            self._hedge_ended,
        )

    def _reset_stream_state(self) -> None:
        self._buf.reset()
        self._timeline.final_pos = 0
        self._results.reset()
        self._endpoints.begin(self.stream_options)
        self._leg: Leg | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._reroute: str | None = None
        self._finalize_pending = False
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
        return self._stream_state

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
        leg = self._leg
        if leg is not None and endpoints.higher_than(leg.endpoint) is not None:
            self._reroute = f"conditions changed ({_describe(conditions)})"

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
        self._stream_state = StreamState.OPENING
        async with self._lock:
            leg = await self._endpoints.acquire(takeover=False)
        self._serve(leg)
        self._stream_state = StreamState.LIVE
        self._journal.emit(
            RouteEventKind.SELECTED, leg.endpoint.id, reason=self._endpoints.rank(leg.endpoint)
        )

    async def _send(self, pcm: bytes) -> None:
        buf = self._buf
        before = buf.end
        dropped = buf.append(pcm)
        if dropped is not None:
            self._journal.overflow(dropped, self.endpoint.id, self.config.replay_seconds)
        if self._stream_state is not StreamState.LIVE:
            if self._stream_state is StreamState.HEDGED:
                assert self._hedger is not None
                if not await self._hedger.send(pcm, before, self._max_send):
                    await self._send_slowly(self._leg)
            return  # whoever owns the stream catches up with the buffer
        leg = self._leg
        if (
            leg is not None
            and leg.state is LegState.LIVE
            and leg.fed == before
            and len(pcm) <= self._max_send
        ):
            await leg.feed(pcm, buf.end)  # live and caught up: the common case
        else:
            await self._send_slowly(leg)

    async def _send_slowly(self, leg: Leg | None) -> None:
        if leg is None or not leg.healthy:
            self._start_failover()  # the caller never waits for a failover
        else:
            async with self._owning():
                await self._catch_up()

    async def _finalize(self) -> None:
        self._finalize_pending = True  # applied once the serving leg has caught up
        if self._stream_state in _RUNNING:
            async with self._owning():
                await self._catch_up()

    async def _finish(self) -> None:
        self._stream_state = StreamState.FINISHING
        deadline = self.config.stop_deadline
        try:
            async with fail_after(self.clock, deadline), self._lock:
                await self._finish_legs()
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

    async def _finish_legs(self) -> None:
        """Finish the serving leg, failing over until one delivers its last finals and no
        span with speech is left without a final (the audit at the end of the stream)."""
        while True:
            await self._catch_up()
            leg = self._leg
            assert leg is not None
            if await leg.finish() and self._results.audit_gap(leg, self._buf.end):
                self._breakers.breaker(leg.endpoint.id).record_success()
                await self._legs.close(leg)
                if self._hedger is not None:
                    self._hedger.cancel("the stream ended")
                return

    async def _abort(self) -> None:
        self._stream_state = StreamState.FINISHING
        await self._legs.close_all()

    async def _teardown(self, stream: Any) -> None:
        if self._hedger is not None:
            self._hedger.end()
        await self._abort()
        await super()._teardown(stream)
        self._journal.end()
        self._stream_state = StreamState.IDLE

    # -- the data path --------------------------------------------------------------------
    @asynccontextmanager
    async def _owning(self) -> AsyncIterator[None]:
        """Hold the stream: chunks only buffer meanwhile, and the holder catches up."""
        async with self._lock:
            if self._stream_state in _RUNNING:
                self._stream_state = StreamState.MOVING
            try:
                yield
            finally:
                if self._stream_state is StreamState.MOVING:
                    hedge = self._hedger.leg if self._hedger is not None else None
                    hedged = hedge is not None and hedge.healthy
                    self._stream_state = StreamState.HEDGED if hedged else StreamState.LIVE

    async def _catch_up(self) -> None:
        """Bring the serving leg up to date with the buffer, failing over as needed (and
        apply a pending finalize once it has caught up). Runs only under ``self._lock``."""
        buf = self._buf
        while True:
            leg = self._leg
            if leg is None or not leg.healthy:
                await self._fail_over(leg)
                continue
            hedge = self._hedger.leg if self._hedger is not None else None
            if leg.fed < buf.end:
                data = buf.read(leg.fed, self._chunk_bytes)
                await leg.feed(data, max(leg.fed, buf.start) + len(data))
            elif hedge is not None and hedge.healthy and hedge.fed < buf.end:
                await self._hedger.feed(hedge, self._chunk_bytes)  # type: ignore[union-attr]
            elif self._finalize_pending:
                await leg.finalize()
                if hedge is not None and hedge.healthy:
                    await hedge.finalize()
                self._finalize_pending = not leg.healthy  # a failed leg's successor gets it
            else:
                return

    def _start_failover(self) -> None:
        """Fail over in the background unless one is pending or the stream is not live."""
        if self._recovery is not None or self._stream_state not in _RUNNING:
            return
        self._stream_state = StreamState.MOVING
        self._recovery = self._spawn(self._recover())

    async def _recover(self) -> None:
        try:
            async with self._owning():
                if self._stream_state is not StreamState.FINISHING:
                    try:
                        await self._catch_up()
                    except STTError as exc:
                        await self._fail_stream(exc)
        finally:
            self._recovery = None

    async def _fail_over(self, old: Leg | None) -> None:
        if old is not None:
            self._legs.drop(old, background=self.is_streaming)
            rejected = self._endpoints.rejection(old)
            if rejected is not None:
                raise rejected
            if self._hedger is not None and self._hedger.take_over(old) is not None:
                self.metrics.failovers += 1  # the hedge has the audio already: no replay
                return
        self._leg = None
        lost = self._timeline.lost_to_overflow(self._buf.start)
        if lost is not None:  # the buffer overflowed: that audio is gone
            self._journal.lost(lost, old.endpoint.id if old else None)
        leg = await self._endpoints.acquire(takeover=old is not None)
        self._serve(leg)
        self.metrics.failovers += 1
        failure = old.failure if old is not None else None
        self._journal.emit(
            RouteEventKind.FAILOVER,
            leg.endpoint.id,
            previous=old.endpoint.id if old else None,
            reason=failure.message if failure is not None else "",
            interval=self._replay_span(leg),
        )

    def _on_leg_failure(self, leg: Leg, error: STTError) -> None:
        if leg.blamed:
            self._endpoints.record_failure(leg.endpoint, error)
        if leg is self._leg:
            self._start_failover()
        elif self._hedger is not None:
            self._hedger.on_failure(leg)

    async def _fail_stream(self, error: STTError) -> None:
        """End the caller's stream with ``error`` (a caller error, or nothing left to serve)."""
        await self._legs.close_all()
        self._fail(error)

    # -- switch-back and re-route ---------------------------------------------------------
    def _at_boundary(self, leg: Leg, delivered: bool) -> None:
        if self._hedger is not None and self._hedger.leg is not None:
            self._hedger.at_boundary(leg, delivered)  # a hedge settles first
            return
        finishing = self._stream_state is StreamState.FINISHING
        if leg is not self._leg or finishing or not self.config.switch_back:
            return
        target = self._endpoints.switch_target(leg.endpoint)
        if target is None:
            self._reroute = None
            return
        self._spawn(self._switch(leg, target))

    async def _switch(self, old: Leg, target: STTEndpoint) -> None:
        endpoints = self._endpoints
        if endpoints.needs_probe(target) and not await endpoints.probe(target):
            return  # still failing: the stream stays where it is
        async with self._owning():
            if (
                old is not self._leg
                or not old.healthy
                or self._stream_state is StreamState.FINISHING
            ):
                return
            reroute, self._reroute = self._reroute, None
            if target.id in self._endpoints.failed_at and reroute is None:
                self._journal.emit(
                    RouteEventKind.RECOVERED, target.id, reason="breaker and health allow it"
                )
            opened = await self._endpoints.open(target, queue=False)
            if isinstance(opened, Leg):
                self._legs.drop(old, background=self.is_streaming)
                self._serve(opened)
                self._journal.emit(
                    RouteEventKind.REROUTED if reroute else RouteEventKind.SWITCHED_BACK,
                    opened.endpoint.id,
                    previous=old.endpoint.id,
                    reason=reroute or "a higher-priority endpoint is usable again",
                    interval=self._replay_span(opened),
                )
            await self._catch_up()  # the new leg replays; or the old one catches up

    # -- bookkeeping ----------------------------------------------------------------------
    def _serve(self, leg: Leg) -> None:
        """Make ``leg`` the one serving the stream."""
        self._legs.add(leg)
        self._leg = leg
        self.endpoint = leg.endpoint

    def _promote(self, leg: Leg) -> None:
        """A hedge wins: the serving leg is dropped and ``leg`` serves."""
        old = self._leg
        if old is not None and old is not leg:
            self._legs.drop(old, background=self.is_streaming)
        self._serve(leg)

    def _hedge_ended(self) -> None:
        if self._stream_state is StreamState.HEDGED:
            self._stream_state = StreamState.LIVE

    def _replay_span(self, leg: Leg) -> tuple[float, float]:
        return (self._buf.seconds(leg.offset), self._buf.seconds(self._buf.end))

    def _ledger_cost(self) -> Decimal:
        return self._ledger.cost(self._legs.usage())


def _describe(c: Conditions) -> str:
    return f"tier {c.tier.value}, network {c.network.value}, thermal {c.thermal.value}"
