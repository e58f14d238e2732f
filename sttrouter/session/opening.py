"""Choosing and opening endpoints for a routed session.

:class:`EndpointOpener` keeps what a session knows about its endpoints (which failed when,
which can never serve it, which cannot honour this stream's options), decides the chain,
walks it with :func:`~sttrouter.session.candidates.candidates` for failover and switch-back
alike, and opens a :class:`~sttrouter.session.leg.Leg` through the breaker and admission
control. Every failure is recorded in one place: breakers, health, the usage ledger, events.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    ErrorKind,
    NoEndpointAvailable,
    StreamingFailed,
    STTError,
    UnsupportedOption,
)
from sttrouter.events import RouteEventKind
from sttrouter.options import StreamOptions
from sttrouter.panel.device import Conditions
from sttrouter.panel.router import Decision, describe
from sttrouter.resilience import (
    AdmissionController,
    AdmissionRefused,
    BreakerBoard,
    BreakerState,
    HealthView,
    Permit,
    RetryPolicy,
    all_available,
)
from sttrouter.service import ServiceFactory, STTService
from sttrouter.session._replay import ReplayBuffer
from sttrouter.session.candidates import Candidate, Standing, candidates
from sttrouter.session.config import Decider, SessionConfig
from sttrouter.session.hedge import same_languages
from sttrouter.session.ledger import UsageLedger
from sttrouter.session.leg import Leg, LegHooks, LegSettings, open_leg, timeout_option
from sttrouter.session.timeline import Timeline

__all__ = ["EndpointOpener", "EventSink"]

log = logging.getLogger("sttrouter.session")

EventSink = Callable[..., None]
"""``sink(kind, endpoint_id, *, reason=...)``: how the opener reports route events."""


class EndpointOpener:
    """The endpoint side of a routed session (see the module docstring).

    Attributes:
        chain: the chain the session currently routes along.
        conditions: what the router decides on.
        options: the current stream's options (every leg is opened with them).
        sweeps: whole-chain sweeps since the last final (the retry policy's attempt count).
        trim_floor: while a leg opens, the buffer position it replays from (finals arriving
            meanwhile must not trim the buffer past it).
    """

    def __init__(
        self,
        *,
        static: tuple[STTEndpoint, ...] | None,
        router: Decider | None,
        conditions: Conditions,
        language: str | None,
        factory: ServiceFactory | None,
        clock: Clock,
        breakers: BreakerBoard,
        health: HealthView | None,
        admission: AdmissionController,
        retry: RetryPolicy,
        rng: random.Random,
        config: SessionConfig,
        ledger: UsageLedger,
        buffer: ReplayBuffer,
        timeline: Timeline,
        hooks: LegHooks,
        event: EventSink,
    ) -> None:
        self._static, self._router, self._language = static, router, language
        self._clock, self._config = clock, config
        self._factory = factory or self._default_factory
        self._breakers, self._health = breakers, health
        self._view = all_available(breakers, health)
        self._admission, self._retry, self._rng = admission, retry, rng
        self._ledger, self._buf, self._timeline = ledger, buffer, timeline
        self._hooks, self._event = hooks, event
        self.conditions = conditions
        self.options = StreamOptions()
        self.failed_at: dict[str, float] = {}
        self.unusable: dict[str, str] = {}
        self._refusals: dict[str, str] = {}
        self._refused: list[UnsupportedOption] = []
        self.errors: dict[str, str] = {}
        self._rejected_by: str | None = None
        self.sweeps = 0
        self.trim_floor: int | None = None
        self._decision: object = None
        self.chain = self.decide()

    def begin(self, options: StreamOptions) -> None:
        """A new stream starts with ``options``."""
        self.options = options
        self._refusals.clear()
        self._refused.clear()
        self.errors.clear()
        self._rejected_by = None
        self.sweeps = 0
        self.trim_floor = None

    @property
    def routed(self) -> bool:
        """The chain comes from a router."""
        return self._router is not None

    def decide(self) -> tuple[STTEndpoint, ...]:
        """The chain for the current conditions (a router's, or the fixed one)."""
        if self._router is None:
            assert self._static is not None
            return self._static
        language = self.options.language or self._language
        self._decision = self._router.decide(self.conditions, language, health=self._view)
        return tuple(self._decision.chain)

    def why_empty(self) -> str:
        """Why the router's chain is empty, in words (every endpoint and why it is out)."""
        d = self._decision
        head = "the router found no endpoint for these conditions"
        if not isinstance(d, Decision):
            return head
        c = d.conditions
        head += (
            f" (language {d.language or 'any'}, network {c.network.value}, "
            f"tier {c.tier.value}, thermal {c.thermal.value})"
        )
        by_id = {ep.id: ep for ep in d.endpoints}
        why = [
            f"{v.endpoint_id}: {describe(v.reason, by_id[v.endpoint_id], d)}"
            for v in d.verdicts
            if v.reason is not None and v.endpoint_id in by_id
        ]
        return f"{head}: {'; '.join(why)}" if why else head

    def _standing(self) -> Standing:
        unusable = {**self.unusable, **self._refusals} if self._refusals else self.unusable
        return Standing(
            unusable, self.failed_at, self._clock.now(), self._config.retry_failed_after
        )

    def _walk(
        self, *, above: str | None = None, with_capacity: bool = False, retrying: bool = False
    ) -> list[Candidate]:
        return candidates(
            self.chain,
            self._standing(),
            # a router's chain already reflects the availability view: check it only once
            available=self._view.is_available if self._router is None else None,
            has_capacity=self._admission.has_capacity if with_capacity else None,
            above=above,
            include_recent_failures=retrying,
        )

    def has_alternative(self, endpoint: STTEndpoint) -> bool:
        """Another endpoint of the chain could take the stream now."""
        return any(c.usable and c.endpoint.id != endpoint.id for c in self._walk())

    def needs_probe(self, endpoint: STTEndpoint) -> bool:
        """``endpoint`` failed (in this session, or its breaker is not closed): probe it
        before moving a live stream back to it."""
        breaker = self._breakers.breaker(endpoint.id)
        return endpoint.id in self.failed_at or breaker.state is not BreakerState.CLOSED

    async def probe(self, endpoint: STTEndpoint) -> bool:
        """Probe ``endpoint`` (bills nothing) within ``connect_timeout``; a failure is recorded
        (the endpoint waits ``retry_failed_after`` again) and ``False`` returned."""
        timeout = self._config.connect_timeout
        try:
            async with fail_after(self._clock, timeout):
                await self.build(endpoint).probe()
        except TimeoutError:
            reason = f"probe did not answer within {timeout:g}s"
        except Exception as exc:  # any probe failure keeps the stream where it is
            reason = f"probe failed: {type(exc).__name__}: {exc}"
        else:
            return True
        self.failed_at[endpoint.id] = self._clock.now()
        self._breakers.breaker(endpoint.id).record_failure(reason)
        self._observe(endpoint.id, False, reason)
        self._event(RouteEventKind.FAILED, endpoint.id, reason=f"{reason} (no switch-back)")
        return False

    def higher_than(self, endpoint: STTEndpoint) -> STTEndpoint | None:
        """A higher-priority endpoint than ``endpoint`` that could take the stream now."""
        walk = self._walk(above=endpoint.id, with_capacity=True)
        return next((c.endpoint for c in walk if c.usable), None)

    async def acquire(self, *, takeover: bool) -> Leg:
        """Open the best usable endpoint, sweeping the chain again per the retry policy;
        ``takeover``: a failover (for the error message)."""
        attempts: list[tuple[str, str]] = []
        last: STTError | None = None
        retrying = opened_any = False
        while True:
            if self._router is not None:
                self.chain = self.decide()
            tried = False
            for candidate in self._walk(retrying=retrying):
                eid = candidate.endpoint.id
                if candidate.skip is not None:
                    attempts.append((eid, candidate.skip))
                    continue
                opened_any = True
                opened = await self.open(candidate.endpoint, queue=True)
                if isinstance(opened, Leg):
                    return opened
                attempts.append((eid, opened.message))
                if not isinstance(opened, UnsupportedOption):
                    tried, last = True, opened
            self.sweeps += 1
            error = last or StreamingFailed("every endpoint was skipped")
            recently_failed = self._standing().recently_failed(self.chain)
            if not (tried or recently_failed) or not self._retry.should_retry(error, self.sweeps):
                raise self._no_endpoint(attempts, takeover, opened_any=opened_any)
            delay = self._retry.delay_after(error, self.sweeps, self._rng)
            log.info("every endpoint failed; sweeping the chain again in %.3fs", delay)
            retrying = True
            await self._clock.sleep(delay)

    def _default_factory(self, endpoint: STTEndpoint) -> STTService:
        from sttrouter.providers import create_service

        return create_service(endpoint, clock=self._clock)

    def rank(self, endpoint: STTEndpoint) -> str:
        """Where ``endpoint`` stands in the chain, in words."""
        ids = [ep.id for ep in self.chain]
        if endpoint.id not in ids:
            return ""
        return f"rank {ids.index(endpoint.id) + 1} of {len(ids)} in the chain"

    def switch_target(self, serving: STTEndpoint) -> STTEndpoint | None:
        """At an utterance boundary: a higher-priority endpoint to move to, if any (a
        router decides again first: health and conditions may have changed)."""
        if self._router is not None:
            self.chain = self.decide()
        return self.higher_than(serving)

    def hedge_target(self, serving: STTEndpoint) -> STTEndpoint | None:
        """The endpoint to hedge ``serving`` with: the first usable one of the chain besides
        it, with the same language capability and room for another stream."""
        for c in self._walk(with_capacity=True):
            ep = c.endpoint
            if c.usable and ep.id != serving.id and same_languages(ep, serving):
                return ep
        return None

    def build(self, endpoint: STTEndpoint) -> STTService:
        """A fresh service for ``endpoint`` (from the session's factory)."""
        return self._factory(endpoint)

    async def open(self, endpoint: STTEndpoint, *, queue: bool) -> Leg | STTError:
        """Open a leg on ``endpoint`` (waiting in its admission queue when ``queue``)."""
        settings = self._leg_settings(endpoint)
        breaker = self._breakers.breaker(endpoint.id)
        if not breaker.try_acquire():
            return StreamingFailed("circuit open", endpoint_id=endpoint.id)
        trial = breaker.state is BreakerState.HALF_OPEN
        permit = await self._admit(endpoint, queue=queue)
        if isinstance(permit, AdmissionRefused):
            if trial:
                breaker.release()
            return permit
        buf = self._buf
        self.trim_floor = buf.start
        try:
            opened = await open_leg(
                endpoint,
                self._factory,
                options=self.options,
                connect_timeout=self._config.connect_timeout,
                offset=buf.start,
                buffer_end=lambda: buf.end,
                permit=permit,
                hooks=self._hooks,
                settings=settings,
            )
        finally:
            self.trim_floor = None
        if isinstance(opened, Leg):
            return opened
        permit.release()
        error = opened.error
        if isinstance(error, UnsupportedOption):
            self._refusals[endpoint.id] = error.message
            self._refused.append(error)
        elif opened.disqualifies is not None:
            self.unusable[endpoint.id] = opened.disqualifies
        if opened.endpoint_at_fault:
            self.record_failure(endpoint, error)
        elif trial:
            breaker.release()
        return error

    async def _admit(self, endpoint: STTEndpoint, *, queue: bool) -> Permit | AdmissionRefused:
        if not queue:
            permit = await self._admission.try_acquire_async(endpoint)
            if permit is not None:
                return permit
            return AdmissionRefused("at its concurrency limit", endpoint_id=endpoint.id)
        if not self._admission.has_capacity(endpoint):
            self._event(
                RouteEventKind.QUEUED,
                endpoint.id,
                reason=f"at its limit of {endpoint.max_concurrent_sessions} sessions",
            )
        try:
            return await self._admission.acquire(endpoint)
        except AdmissionRefused as exc:
            return exc

    def _leg_settings(self, endpoint: STTEndpoint) -> LegSettings:
        cfg = self._config
        return LegSettings(
            timeout_option(endpoint, "stall_timeout", cfg.stall_timeout),
            cfg.finish_timeout,
            cfg.speech_dbfs,
            cfg.empty_final_limit,
            final_timeout=timeout_option(endpoint, "final_timeout", cfg.final_deadline),
            send_timeout=cfg.send_timeout,
        )

    def uncovered(self) -> tuple[float, float] | None:
        """The session audio without a final (seconds), if any."""
        start, end = self._timeline.final_pos, self._buf.end
        return (self._buf.seconds(start), self._buf.seconds(end)) if end > start else None

    def _no_endpoint(
        self, attempts: list[tuple[str, str]], takeover: bool, *, opened_any: bool
    ) -> NoEndpointAvailable:
        uncovered = self.uncovered()
        last = dict(attempts)  # one entry per endpoint, its last reason
        if not self.chain:
            return NoEndpointAvailable(self.why_empty(), uncovered=uncovered)
        what = "took over the stream" if takeover else "could open a stream"
        if self._refused:
            names = sorted({f"{e.option}={e.value!r}" for e in self._refused})
            what += f" (stream option {', '.join(names)} refused)"
        elif not opened_any:
            what = "was usable: every endpoint was skipped"
        return NoEndpointAvailable(
            f"no endpoint of the chain {what}", uncovered=uncovered, attempts=tuple(last.items())
        )

    def rejection(self, failed: Leg) -> AudioFormatError | None:
        """The error for the caller when ``failed`` is the second endpoint to reject audio the
        session validated (the first one's rejection only fails it over)."""
        error = failed.failure
        if not isinstance(error, AudioFormatError):
            return None
        eid, first = failed.endpoint.id, self._rejected_by
        if first is None or first == eid:
            self._rejected_by = eid
            return None
        rejected = AudioFormatError(
            f"{first} and {eid} both rejected the audio: {error.message}", endpoint_id=eid
        )
        rejected.uncovered = self.uncovered()
        return rejected

    def record_failure(self, endpoint: STTEndpoint, error: STTError) -> None:
        """An endpoint failed this session: breaker, health, ledger and an event."""
        eid = endpoint.id
        self.failed_at[eid] = self._clock.now()
        self.errors[eid] = f"{type(error).__name__}: {error.message}"
        self._ledger.record_failure(endpoint)
        breaker = self._breakers.breaker(eid)
        if isinstance(error, AudioFormatError):
            # it rejected audio the session validated: never again for this audio, but one
            # claim does not open the breaker for every other session
            self.unusable[eid] = error.message
            breaker.record_failure(error.message)
        elif error.kind is ErrorKind.PERMANENT or error.kind is ErrorKind.CALLER:
            self.unusable[eid] = error.message
            breaker.trip(error.message)
        else:
            breaker.record_failure(error.message)
        self._observe(eid, False, error.message)
        self._event(RouteEventKind.FAILED, eid, reason=f"{type(error).__name__}: {error.message}")

    def record_success(self, endpoint: STTEndpoint) -> None:
        """An endpoint delivered: its breaker closes, the health view hears it."""
        self._breakers.breaker(endpoint.id).record_success()
        self._observe(endpoint.id, True)

    def _observe(self, endpoint_id: str, ok: bool, reason: str = "") -> None:
        observe = getattr(self._health, "observe", None)
        if callable(observe):
            if ok:
                observe(endpoint_id, True)
            else:
                observe(endpoint_id, False, reason)
