"""``RoutedSession``: one stream over a chain of endpoints, with failover that loses no audio.

A routed session is itself an :class:`~sttrouter.service.STTService`. It opens the first
endpoint of its chain that the circuit breakers, health view and admission control allow,
forwards the caller's audio to it and keeps a bounded **replay buffer** of the audio since the
last final. When that endpoint fails — an error or close, a connect timeout, a stall (speech
sent, no result within ``stall_timeout``), a run of empty finals over speech, a malformed
message, an in-band auth/quota rejection after the socket opened — the session closes it,
opens the next endpoint, replays the buffer as fast as the engine accepts it, and goes live.

The five invariants (DESIGN §5) and how this module keeps them:

1. *No audio is lost.* Every byte the caller sends goes into the buffer first; the buffer is
   trimmed only up to the end of a delivered final. A new endpoint starts at the buffer's
   start, so it hears everything that has no final yet. If no endpoint is left, the caller
   gets :class:`~sttrouter.errors.NoEndpointAvailable` whose ``uncovered`` names the audio
   without a final.
2. *Re-basing and de-duplication.* Endpoint ``k``'s stream starts at session time ``offset_k``;
   its results are shifted by it. A final that lies in already-finalised time is dropped; one
   that straddles the watermark is trimmed (words whose midpoint is before it are removed).
   Results of a failed or retired endpoint are ignored from the moment it is given up, so its
   partials are superseded by the new endpoint's.
3. *Silent failures count* (see above).
4. *Breakers, health, switch-back.* Failures feed a shared :class:`BreakerBoard`; permanent
   errors open the breaker at once and mark the endpoint unusable for this session. At each
   end of utterance the session checks whether a higher-priority endpoint is usable again (or
   whether :meth:`RoutedSession.update_conditions` changed the decision) and moves there,
   replaying the few milliseconds since the boundary.
5. *Load.* An :class:`AdmissionController` shared between sessions limits concurrent streams
   per endpoint; a stream waits in a bounded queue up to a deadline, then spills to the next.

Overflow: if no final arrives for ``replay_seconds`` (default 30 s) the oldest audio is dropped
from the buffer and an ``overflow`` event is emitted. That audio has already been sent to the
live endpoint, so nothing is lost unless that endpoint then fails before finalising it; in that
case the span is reported as an ``overflow`` event with its ``interval`` and appended to
:attr:`RoutedSession.uncovered`, and the stream continues on the next endpoint;
``stop_streaming`` then raises :class:`~sttrouter.errors.NoEndpointAvailable` naming the first
lost span (unless ``SessionConfig.raise_on_lost_audio`` is off).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any, Protocol

import attrs

from sttrouter._replay import ReplayBuffer, chunk_has_speech
from sttrouter.audio import ENGINE_FORMAT, AudioChunk
from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import Provider, STTEndpoint
from sttrouter.errors import (
    ConfigError,
    ConnectTimeout,
    EmptyTranscripts,
    ErrorKind,
    NoEndpointAvailable,
    NotStreaming,
    StreamingFailed,
    StreamStalled,
    STTError,
)
from sttrouter.events import EventListener, EventLog, RouteEvent, RouteEventKind
from sttrouter.metrics import cost_for
from sttrouter.panel.device import Conditions
from sttrouter.resilience import (
    AdmissionController,
    AdmissionRefused,
    AvailabilityView,
    BreakerBoard,
    BreakerState,
    Permit,
    RetryPolicy,
    all_available,
)
from sttrouter.results import STTResult, WordTimestamp
from sttrouter.service import BaseSTTService, ServiceFactory, STTService

__all__ = ["Decider", "EndpointUsage", "RoutedSession", "SessionConfig"]

log = logging.getLogger("sttrouter.session")


class _Decision(Protocol):
    @property
    def chain(self) -> tuple[STTEndpoint, ...]: ...


class Decider(Protocol):
    """What a routed session needs from a router (``sttrouter.panel.router.Router``)."""

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: AvailabilityView | None = None,
    ) -> _Decision: ...


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attr.name} must be positive, got {value!r}", field=attr.name)


@attrs.frozen
class SessionConfig:
    """Knobs of a routed session (all times in seconds of the session's clock).

    Attributes:
        replay_seconds: bound of the replay buffer (audio since the last final).
        connect_timeout: an endpoint that has not opened by then counts as failed.
        stall_timeout: speech was sent and no result (interim or final) came for this long.
            Engines without interim results answer only at the end of an utterance: set it
            above your longest utterance for them, per endpoint with
            ``connection.options.stall_timeout`` (which overrides this).
        finish_timeout: ``stop_streaming`` waits this long for an endpoint's last final.
        empty_final_limit: this many empty finals in a row over audio with speech energy
            fail the endpoint (:class:`~sttrouter.errors.EmptyTranscripts`).
        speech_dbfs: RMS level above which a chunk or 20 ms frame counts as speech energy.
        replay_chunk_seconds: chunk size used when replaying the buffer.
        switch_back: move to a recovered higher-priority endpoint at utterance boundaries.
        retry_failed_after: an endpoint that failed in this session is used again (switch-back
            or failover) only after this long, and only if its breaker and health allow.
        raise_on_lost_audio: when audio that overflowed the replay buffer could not be replayed
            after a failover, the stream carries on, and ``stop_streaming`` then raises
            :class:`~sttrouter.errors.NoEndpointAvailable` naming the first lost span (all of
            them are in ``session.uncovered``). ``False`` only records them.
    """

    replay_seconds: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    stall_timeout: float = attrs.field(default=5.0, validator=_positive)
    finish_timeout: float = attrs.field(default=10.0, validator=_positive)
    empty_final_limit: int = attrs.field(default=2, validator=_positive)
    speech_dbfs: float = -40.0
    replay_chunk_seconds: float = attrs.field(default=0.1, validator=_positive)
    switch_back: bool = True
    retry_failed_after: float = attrs.field(default=30.0, validator=_positive)
    raise_on_lost_audio: bool = True


@attrs.frozen
class EndpointUsage:
    """What one endpoint did for a session (replayed audio is billed again, so counted)."""

    endpoint_id: str
    streams: int
    audio_seconds: float
    replayed_seconds: float
    cost: Decimal
    failures: int


class _Leg:
    """One endpoint's stream inside the session."""

    __slots__ = (
        "awaiting_since",
        "confirmed",
        "empty_run",
        "endpoint",
        "failed",
        "fed",
        "finishing",
        "offset",
        "offset_s",
        "permit",
        "reader",
        "replay_end",
        "results",
        "retired",
        "service",
        "wake",
        "watchdog",
        "withheld",
    )

    def __init__(
        self,
        endpoint: STTEndpoint,
        service: STTService,
        results: AsyncIterator[STTResult],
        offset: int,
        replay_end: int,
        permit: Permit,
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.results = results
        self.offset = offset
        self.offset_s = offset / ENGINE_FORMAT.bytes_per_second
        self.fed = offset
        self.replay_end = replay_end
        self.permit = permit
        self.failed: STTError | None = None
        self.retired = False
        self.finishing = False
        self.confirmed = False
        self.awaiting_since: float | None = None
        self.wake = asyncio.Event()
        self.empty_run = 0
        self.withheld: list[STTResult] = []
        self.reader: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None


_PLACEHOLDER = STTEndpoint(
    id="routed", provider=Provider.FAKE, display_name="routed session (no endpoint open)"
)
_EPS = 0.5 / ENGINE_FORMAT.sample_rate
_BYTES_PER_SECOND = ENGINE_FORMAT.bytes_per_second


class RoutedSession(BaseSTTService):
    """An :class:`STTService` over a chain of endpoints, with lossless mid-stream failover.

    Give it either an explicit ``chain`` or a ``router`` (plus ``conditions`` and
    ``language``); with a router the chain comes from ``router.decide(conditions, language,
    health=<breakers and health>)`` at every start and failover, and
    :meth:`update_conditions` re-routes at the next utterance boundary.

    ``endpoint`` is the endpoint serving now (the first of the chain before a stream starts);
    every result carries the ``endpoint_id`` that produced it, on the session's timeline.

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
        health: AvailabilityView | None = None,
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
        self._static = tuple(chain) if chain is not None else None
        self._router = router
        self._conditions = conditions or Conditions()
        self._language = language
        super().__init__(self._static[0] if self._static else _PLACEHOLDER, clock=clock)
        self._breakers = breakers or BreakerBoard(clock=self.clock)
        self._health = health
        self._view = all_available(self._breakers, health)
        self._admission = admission or AdmissionController(clock=self.clock)
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self.config = config or SessionConfig()
        self._factory = service_factory or self._default_factory
        self._events = EventLog(on_event)
        self._chain = self._decide()
        if self._chain:
            self.endpoint = self._chain[0]
        self._buf = ReplayBuffer(self.config.replay_seconds)
        self._lock = asyncio.Lock()
        self._legs: list[_Leg] = []
        self._dropping: list[STTService] = []
        self._leg: _Leg | None = None
        self._failed_at: dict[str, float] = {}
        self._unusable: dict[str, str] = {}
        self._usage: dict[str, list[float]] = {}
        self.uncovered: list[tuple[float, float]] = []
        """Spans of session audio that could not be transcribed (replay-buffer overflow)."""
        self._final_pos = 0
        self._pin: int | None = None
        self._sweeps = 0
        self._finishing = False
        self._overflowing = False
        self._reroute: str | None = None
        self._recovering = False
        self._passthrough = False
        self._chunk_bytes = max(2, self._buf.format.bytes_for(self.config.replay_chunk_seconds))

    # -- public surface -------------------------------------------------------------------
    @property
    def chain(self) -> tuple[STTEndpoint, ...]:
        """The chain the session currently routes along."""
        return self._chain

    @property
    def breakers(self) -> BreakerBoard:
        return self._breakers

    @property
    def conditions(self) -> Conditions:
        return self._conditions

    def events(self) -> AsyncIterator[RouteEvent]:
        """Route events of the current (or next) stream, until that stream ends."""
        return self._events.iterate()

    @property
    def history(self) -> tuple[RouteEvent, ...]:
        """Route events of the current (or last) stream."""
        return tuple(self._events.history)

    def update_conditions(self, conditions: Conditions) -> None:
        """Re-decide with new conditions; a changed decision moves the stream at the next
        utterance boundary, without losing audio."""
        if self._router is None:
            raise ConfigError(
                "update_conditions needs a RoutedSession built with a router; "
                "this one has a fixed chain"
            )
        self._conditions = conditions
        self._chain = self._decide()
        leg = self._leg
        if leg is not None and self._better(leg) is not None:
            self._reroute = f"conditions changed ({_describe(conditions)})"

    def usage(self) -> dict[str, EndpointUsage]:
        """Audio and cost per endpoint over the session's life (all streams)."""
        totals = {k: list(v) for k, v in self._usage.items()}
        for leg in self._legs:
            self._add_usage(totals, leg)
        out: dict[str, EndpointUsage] = {}
        for eid, (streams, audio, replayed, failures, cph) in totals.items():
            out[eid] = EndpointUsage(
                eid,
                int(streams),
                audio,
                replayed,
                cost_for(Decimal(repr(cph)), audio),
                int(failures),
            )
        return out

    @property
    def cost(self) -> Decimal:
        """What the session's audio cost across endpoints (replays included)."""
        return sum((u.cost for u in self.usage().values()), Decimal(0))

    @property
    def cost_per_hour(self) -> Decimal:
        return self.endpoint.cost_per_hour

    async def probe(self) -> None:
        """Probe the first endpoint of the chain (bills nothing)."""
        if not self._chain:
            raise NoEndpointAvailable("the router found no endpoint for these conditions")
        await self._factory(self._chain[0]).probe()

    # -- BaseSTTService hooks -------------------------------------------------------------
    async def _open(self) -> None:
        self._reset_stream_state()
        self._passthrough = self._stream is not None and self._stream.source == ENGINE_FORMAT
        self._events.begin()
        self._chain = self._decide()
        async with self._lock:
            leg = await self._acquire(previous=None)
        self._leg = leg
        self.endpoint = leg.endpoint
        self._event(RouteEventKind.SELECTED, leg.endpoint.id, reason=self._why(leg.endpoint))

    async def send_audio(self, chunk: AudioChunk) -> None:
        """Send one chunk. Engine-format bytes (16 kHz mono s16le, whole frames) take a
        short path; anything else is validated and converted by the base class."""
        stream = self._stream
        if (
            stream is None
            or stream.failure is not None
            or not self._passthrough
            or type(chunk) is not bytes
            or not chunk
            or len(chunk) & 1
        ):
            await super().send_audio(chunk)
            return
        seconds = len(chunk) / _BYTES_PER_SECOND
        now = self.clock.now()
        self._metrics.audio_sent(seconds, now)
        stream.mark(seconds, now)
        try:
            await self._send(chunk)
        except Exception as exc:
            self._fail(self._translate(exc))
            raise
        if stream.failure is not None:
            raise stream.failure

    async def _send(self, pcm: bytes) -> None:
        buf = self._buf
        before = buf.end
        dropped = buf.append(pcm)
        if dropped is not None:
            self._on_overflow(dropped)
        leg = self._leg
        if leg is not None and leg.failed is None and leg.fed == before and not self._lock.locked():
            # live and caught up: forward this chunk as is (the common case)
            leg.fed = buf.end
            if leg.awaiting_since is None and chunk_has_speech(pcm, self.config.speech_dbfs):
                leg.awaiting_since = self.clock.now()
                leg.wake.set()
            try:
                await leg.service.send_audio(pcm)
            except STTError as exc:
                if exc.kind is ErrorKind.CALLER and not isinstance(exc, NotStreaming):
                    raise
                self._leg_failed(leg, exc)  # recovery runs in the background
            return
        if self._lock.locked():
            return  # a failover or switch is running; it catches up with the buffer
        if leg is None or leg.failed is not None:
            self._kick()  # fail over in the background: the caller never waits for it
            return
        async with self._lock:
            await self._pump()

    async def _finish(self) -> None:
        self._finishing = True
        async with self._lock:
            while True:
                await self._pump()
                leg = self._leg
                assert leg is not None
                if await self._finish_leg(leg):
                    self._raise_if_audio_lost()
                    return

    def _raise_if_audio_lost(self) -> None:
        """Invariant 1: audio no final covers reaches the caller as an error, not silence."""
        if not self.uncovered or not self.config.raise_on_lost_audio:
            return
        more = len(self.uncovered) - 1
        raise NoEndpointAvailable(
            "audio that overflowed the replay buffer could not be replayed after a failover"
            + (f" ({more} more span(s) in session.uncovered)" if more else "")
            + "; raise SessionConfig.replay_seconds for engines that finalise rarely",
            uncovered=self.uncovered[0],
        )

    async def _abort(self) -> None:
        self._finishing = True
        await self._close_all()

    async def _teardown(self, stream: Any) -> None:
        self._finishing = True
        await self._close_all()
        await super()._teardown(stream)
        self._events.end()

    # -- routing --------------------------------------------------------------------------
    def _default_factory(self, endpoint: STTEndpoint) -> STTService:
        from sttrouter.providers import create_service

        return create_service(endpoint, clock=self.clock)

    def _decide(self) -> tuple[STTEndpoint, ...]:
        if self._static is not None:
            return self._static
        assert self._router is not None
        return tuple(self._router.decide(self._conditions, self._language, health=self._view).chain)

    def _why(self, endpoint: STTEndpoint) -> str:
        chain = self._chain
        rank = next((i for i, ep in enumerate(chain) if ep.id == endpoint.id), None)
        return f"rank {rank + 1} of {len(chain)} in the chain" if rank is not None else ""

    def _eligible(self, endpoint: STTEndpoint, *, relaxed: bool) -> str | None:
        """Why ``endpoint`` may not be opened now, or ``None`` when it may."""
        eid = endpoint.id
        if eid in self._unusable:
            return f"unusable for this session: {self._unusable[eid]}"
        failed = self._failed_at.get(eid)
        if (
            not relaxed
            and failed is not None
            and self.clock.now() - failed < self.config.retry_failed_after
        ):
            return "failed in this session"
        if not self._breakers.is_available(eid):
            return "circuit open"
        if not self._view.is_available(eid):
            return "unhealthy"
        return None

    def _better(self, leg: _Leg) -> STTEndpoint | None:
        """A higher-priority endpoint than ``leg``'s that could take the stream now."""
        for ep in self._chain:
            if ep.id == leg.endpoint.id:
                return None
            if self._eligible(ep, relaxed=False) is None and self._admission.has_capacity(ep):
                return ep
        return None

    async def _acquire(self, previous: _Leg | None) -> _Leg:
        """Open the best usable endpoint, sweeping the chain again per the retry policy."""
        attempts: list[tuple[str, str]] = []
        last: STTError | None = None
        relaxed = False
        while True:
            if self._router is not None:
                self._chain = self._decide()
            tried = False
            for ep in self._chain:
                why = self._eligible(ep, relaxed=relaxed)
                if why is not None:
                    attempts.append((ep.id, why))
                    continue
                tried = True
                leg, error = await self._try_open(ep, wait=True)
                if leg is not None:
                    return leg
                assert error is not None
                attempts.append((ep.id, error.message))
                last = error
            self._sweeps += 1
            recently_failed = any(
                ep.id in self._failed_at and ep.id not in self._unusable for ep in self._chain
            )
            if not (tried or recently_failed) or not self._retry.should_retry(
                last or StreamingFailed("every endpoint was skipped"), self._sweeps
            ):
                raise self._no_endpoint(attempts, previous)
            delay = self._retry.delay_after(
                last or StreamingFailed("skipped"), self._sweeps, self._rng
            )
            log.info("every endpoint failed; sweeping the chain again in %.3fs", delay)
            relaxed = True
            await self.clock.sleep(delay)

    def _no_endpoint(
        self, attempts: list[tuple[str, str]], previous: _Leg | None
    ) -> NoEndpointAvailable:
        start, end = self._final_pos, self._buf.end
        uncovered = (self._buf.seconds(start), self._buf.seconds(end)) if end > start else None
        what = "took over the stream" if previous is not None else "could open a stream"
        # keep the message readable: one entry per endpoint, its last reason
        last: dict[str, str] = {}
        for eid, why in attempts:
            last[eid] = why
        return NoEndpointAvailable(
            f"no endpoint of the chain {what}",
            uncovered=uncovered,
            attempts=tuple(last.items()),
        )

    async def _try_open(
        self, endpoint: STTEndpoint, *, wait: bool
    ) -> tuple[_Leg | None, STTError | None]:
        breaker = self._breakers.breaker(endpoint.id)
        if not breaker.try_acquire():
            return None, StreamingFailed("circuit open", endpoint_id=endpoint.id)
        trial = breaker.state is BreakerState.HALF_OPEN
        if wait and not self._admission.has_capacity(endpoint):
            self._event(
                RouteEventKind.QUEUED,
                endpoint.id,
                reason=f"at its limit of {endpoint.max_concurrent_sessions} sessions",
            )
        try:
            if wait:
                permit = await self._admission.acquire(endpoint)
            else:
                maybe = self._admission.try_acquire(endpoint)
                if maybe is None:
                    raise AdmissionRefused("at its concurrency limit", endpoint_id=endpoint.id)
                permit = maybe
        except AdmissionRefused as exc:
            if trial:
                breaker.release()
            return None, exc
        offset = self._buf.start
        self._pin = offset  # finals arriving meanwhile must not trim what this leg replays
        error: STTError | None = None
        service: STTService | None = None
        try:
            service = self._factory(endpoint)
            if service.is_streaming:  # a reused instance still closing its last stream
                await _quietly_cancel(service)
            async with fail_after(self.clock, self.config.connect_timeout):
                results = await service.start_streaming(ENGINE_FORMAT)
        except TimeoutError:
            error = ConnectTimeout(
                f"did not connect within {self.config.connect_timeout:g}s",
                endpoint_id=endpoint.id,
            )
        except STTError as exc:
            error = exc
        except Exception as exc:  # a factory or adapter bug: this endpoint is unusable
            error = StreamingFailed(
                f"could not build a service: {type(exc).__name__}: {exc}", endpoint_id=endpoint.id
            )
            self._unusable[endpoint.id] = error.message
        finally:
            self._pin = None
        if error is not None:
            permit.release()
            if service is not None:
                await _quietly_cancel(service)
            if error.endpoint_id is None:
                error.endpoint_id = endpoint.id
            self._record_failure(endpoint, error)
            return None, error
        assert service is not None
        leg = _Leg(endpoint, service, results, offset, self._buf.end, permit)
        self._legs.append(leg)
        leg.reader = self._spawn(self._read(leg))
        leg.watchdog = self._spawn(self._watch(leg))
        return leg, None

    def _record_failure(self, endpoint: STTEndpoint, error: STTError) -> None:
        eid = endpoint.id
        self._failed_at[eid] = self.clock.now()
        self._bump(endpoint, failures=1)
        breaker = self._breakers.breaker(eid)
        if error.kind is ErrorKind.PERMANENT or error.kind is ErrorKind.CALLER:
            self._unusable[eid] = error.message
            breaker.trip(error.message)
        else:
            breaker.record_failure(error.message)
        observe = getattr(self._health, "observe", None)
        if callable(observe):
            observe(eid, False, error.message)
        self._event(RouteEventKind.FAILED, eid, reason=f"{type(error).__name__}: {error.message}")

    # -- the data path --------------------------------------------------------------------
    async def _pump(self) -> None:
        """Bring the current endpoint up to date with the buffer, failing over as needed.

        Runs only under ``self._lock``."""
        chunk = self._chunk_bytes
        threshold = self.config.speech_dbfs
        while True:
            leg = self._leg
            if leg is None or leg.failed is not None:
                await self._replace(leg)
                continue
            if leg.fed >= self._buf.end:
                return
            data = self._buf.read(leg.fed, chunk)
            leg.fed = max(leg.fed, self._buf.start) + len(data)
            if leg.awaiting_since is None and chunk_has_speech(data, threshold):
                leg.awaiting_since = self.clock.now()
                leg.wake.set()
            try:
                await leg.service.send_audio(data)
            except STTError as exc:
                if exc.kind is ErrorKind.CALLER and not isinstance(exc, NotStreaming):
                    raise
                self._leg_failed(leg, exc)

    async def _replace(self, old: _Leg | None) -> None:
        if old is not None:
            self._drop_leg(old)
        self._leg = None
        if self._buf.start > self._final_pos:  # the buffer overflowed: that audio is gone
            lost = (self._buf.seconds(self._final_pos), self._buf.seconds(self._buf.start))
            self.uncovered.append(lost)
            self._event(
                RouteEventKind.OVERFLOW,
                old.endpoint.id if old else None,
                reason="audio dropped from the full replay buffer could not be replayed",
                interval=lost,
            )
            self._final_pos = self._buf.start
        leg = await self._acquire(previous=old)
        self._leg = leg
        self.endpoint = leg.endpoint
        self.metrics.failovers += 1
        replay = (self._buf.seconds(leg.offset), self._buf.seconds(self._buf.end))
        self._event(
            RouteEventKind.FAILOVER,
            leg.endpoint.id,
            previous=old.endpoint.id if old else None,
            reason=str(old.failed.message) if old and old.failed else "",
            interval=replay,
        )

    def _leg_failed(self, leg: _Leg, error: STTError) -> None:
        if leg.failed is not None or leg.retired:
            return
        if error.endpoint_id is None:
            error.endpoint_id = leg.endpoint.id
        leg.failed = error
        leg.wake.set()
        self._record_failure(leg.endpoint, error)
        if leg is self._leg and not self._lock.locked():
            self._kick()

    def _kick(self) -> None:
        """Start a background failover unless one is pending or the stream is ending."""
        if self._recovering or self._finishing or self._stream is None:
            return
        self._recovering = True
        self._spawn(self._recover())

    async def _recover(self) -> None:
        try:
            async with self._lock:
                if self._finishing:
                    return
                try:
                    await self._pump()
                except STTError as exc:
                    await self._close_all()
                    self._fail(exc)
        finally:
            self._recovering = False

    async def _finish_leg(self, leg: _Leg) -> bool:
        """Stop ``leg`` cleanly; ``False`` when it failed instead (the loop fails over)."""
        leg.finishing = True
        leg.wake.set()
        try:
            async with fail_after(self.clock, self.config.finish_timeout):
                await leg.service.stop_streaming()
                if leg.reader is not None:
                    await leg.reader
        except TimeoutError:
            self._leg_failed(
                leg,
                StreamStalled(
                    f"did not deliver its last final within {self.config.finish_timeout:g}s"
                ),
            )
            return False
        except STTError as exc:
            if exc.kind is ErrorKind.CALLER and not isinstance(exc, NotStreaming):
                raise
            self._leg_failed(leg, exc)
            return False
        if leg.failed is not None:
            return False
        if leg.withheld:
            # the stream ended on empty finals over speech: the next endpoint gets to hear it
            self._leg_failed(
                leg, EmptyTranscripts("empty final over speech at the end of the stream")
            )
            return False
        self._breakers.breaker(leg.endpoint.id).record_success()
        await self._close_leg(leg)
        return True

    # -- results --------------------------------------------------------------------------
    async def _read(self, leg: _Leg) -> None:
        try:
            async for r in leg.results:
                if leg.failed is None and not leg.retired:
                    await self._on_result(leg, r)
        except STTError as exc:
            if exc.kind is ErrorKind.CALLER and not isinstance(exc, NotStreaming):
                await self._close_all()
                self._fail(exc)
                return
            self._leg_failed(leg, exc)
            return
        if leg.failed is None and not leg.retired and not leg.finishing:
            self._leg_failed(leg, StreamingFailed("the engine ended the stream without an error"))

    async def _on_result(self, leg: _Leg, r: STTResult) -> None:
        leg.awaiting_since = None
        res = attrs.evolve(r.shifted(leg.offset_s), latency=None)
        final_s = self._buf.seconds(self._final_pos)
        if not res.is_final:
            if res.end > final_s + _EPS:
                await self._emit(res)
            return
        if not res.transcript.strip():
            speech = self._buf.has_speech(
                self._buf.position(res.start), self._buf.position(res.end), self.config.speech_dbfs
            )
            if speech or leg.withheld:
                leg.withheld.append(res)
                if speech:
                    leg.empty_run += 1
                if leg.empty_run >= self.config.empty_final_limit:
                    self._leg_failed(
                        leg,
                        EmptyTranscripts(
                            f"{leg.empty_run} empty finals in a row over audio with speech "
                            f"energy (from {leg.withheld[0].start:.2f}s)"
                        ),
                    )
                return
            await self._deliver_final(res)
            return
        leg.empty_run = 0
        for w in leg.withheld:
            await self._deliver_final(w)
        leg.withheld.clear()
        await self._deliver_final(res)
        if not leg.confirmed:
            leg.confirmed = True
            self._breakers.breaker(leg.endpoint.id).record_success()
            observe = getattr(self._health, "observe", None)
            if callable(observe):
                observe(leg.endpoint.id, True)
        if res.is_end_of_utterance:
            self._at_boundary(leg)

    async def _deliver_final(self, res: STTResult) -> None:
        final_s = self._buf.seconds(self._final_pos)
        if res.end <= final_s + _EPS:
            return  # already finalised by an earlier endpoint
        if res.start < final_s - _EPS:
            res = _trim_before(res, final_s)
        await self._emit(res)
        pos = self._buf.position(res.end)
        if pos > self._final_pos:
            self._final_pos = pos
            self._sweeps = 0
            self._overflowing = False
            self._buf.trim(pos if self._pin is None else min(pos, self._pin))

    # -- switch-back and re-route ---------------------------------------------------------
    def _at_boundary(self, leg: _Leg) -> None:
        if leg is not self._leg or self._finishing or not self.config.switch_back:
            return
        target = self._better(leg)
        if target is None:
            self._reroute = None
            return
        self._spawn(self._switch(leg, target))

    async def _switch(self, old: _Leg, target: STTEndpoint) -> None:
        async with self._lock:
            if old is not self._leg or old.failed is not None or self._finishing:
                return
            reroute, self._reroute = self._reroute, None
            recovered = target.id in self._failed_at
            if recovered and reroute is None:
                self._event(
                    RouteEventKind.RECOVERED, target.id, reason="breaker and health allow it"
                )
            leg, _ = await self._try_open(target, wait=False)
            if leg is None:
                await self._pump()  # stay; catch the current endpoint up
                return
            self._drop_leg(old)
            self._leg = leg
            self.endpoint = leg.endpoint
            kind = RouteEventKind.REROUTED if reroute else RouteEventKind.SWITCHED_BACK
            self._event(
                kind,
                leg.endpoint.id,
                previous=old.endpoint.id,
                reason=reroute or "a higher-priority endpoint is usable again",
                interval=(self._buf.seconds(leg.offset), self._buf.seconds(self._buf.end)),
            )
            await self._pump()

    # -- stall watchdog -------------------------------------------------------------------
    def _stall_timeout(self, endpoint: STTEndpoint) -> float:
        """``stall_timeout`` from the endpoint's options, else the session's."""
        value = endpoint.connection.option("stall_timeout")
        try:
            return float(value) if value is not None else self.config.stall_timeout
        except (TypeError, ValueError):
            raise ConfigError(
                f"stall_timeout must be a number of seconds, got {value!r}",
                endpoint=endpoint.id,
                field="connection.options.stall_timeout",
            ) from None

    async def _watch(self, leg: _Leg) -> None:
        timeout = self._stall_timeout(leg.endpoint)
        while leg.failed is None and not leg.retired:
            since = leg.awaiting_since
            if since is None or leg.finishing:
                leg.wake.clear()
                await leg.wake.wait()
                continue
            remaining = since + timeout - self.clock.now()
            if remaining > 0:
                await self.clock.sleep(remaining)
                continue
            self._leg_failed(
                leg, StreamStalled(f"no result for {timeout:g}s after speech was sent")
            )
            return

    # -- bookkeeping ----------------------------------------------------------------------
    def _reset_stream_state(self) -> None:
        self._buf.reset()
        self._final_pos = 0
        self._pin = None
        self._sweeps = 0
        self._finishing = False
        self._overflowing = False
        self._recovering = False
        self._reroute = None
        self._leg = None
        self.uncovered = []

    def _on_overflow(self, dropped: tuple[int, int]) -> None:
        if self._overflowing:
            return  # one event per episode, not one per chunk
        self._overflowing = True
        self._event(
            RouteEventKind.OVERFLOW,
            self.endpoint.id,
            reason=f"no final for {self.config.replay_seconds:g}s: the oldest audio can no "
            "longer be replayed if this endpoint fails",
            interval=(self._buf.seconds(dropped[0]), self._buf.seconds(dropped[1])),
        )

    def _retire(self, leg: _Leg) -> None:
        """Stop listening to ``leg``: its results are ignored from now on."""
        if leg.retired:
            return
        leg.retired = True
        leg.wake.set()
        if leg.watchdog is not None:
            leg.watchdog.cancel()
        leg.permit.release()
        if leg in self._legs:
            self._legs.remove(leg)
            self._add_usage(self._usage, leg)

    async def _close_leg(self, leg: _Leg) -> None:
        self._retire(leg)
        if leg.service.is_streaming:
            await _quietly_cancel(leg.service)

    def _drop_leg(self, leg: _Leg) -> None:
        """Retire ``leg`` and close its connection in the background: a dead socket's close
        handshake must not delay the failover."""
        self._retire(leg)
        if leg.service.is_streaming and self._stream is not None:
            self._dropping.append(leg.service)
            self._spawn(_quietly_cancel(leg.service))

    async def _close_all(self) -> None:
        for leg in list(self._legs):
            await self._close_leg(leg)
        dropping, self._dropping = self._dropping, []
        for service in dropping:
            if service.is_streaming:
                await _quietly_cancel(service)

    def _bump(self, endpoint: STTEndpoint, *, failures: int = 0) -> None:
        row = self._usage.setdefault(endpoint.id, [0, 0.0, 0.0, 0, float(endpoint.cost_per_hour)])
        row[3] += failures

    def _add_usage(self, totals: dict[str, list[float]], leg: _Leg) -> None:
        ep = leg.endpoint
        row = totals.setdefault(ep.id, [0, 0.0, 0.0, 0, float(ep.cost_per_hour)])
        row[0] += 1
        row[1] += self._buf.seconds(leg.fed - leg.offset)
        row[2] += self._buf.seconds(max(0, min(leg.fed, leg.replay_end) - leg.offset))

    def _event(
        self,
        kind: RouteEventKind,
        endpoint_id: str | None,
        *,
        previous: str | None = None,
        reason: str = "",
        interval: tuple[float, float] | None = None,
    ) -> None:
        self._events.emit(
            RouteEvent(
                kind,
                endpoint_id,
                previous,
                reason,
                self._buf.seconds(self._buf.end),
                self.clock.now(),
                interval,
            )
        )


def _trim_before(res: STTResult, t: float) -> STTResult:
    """The part of a final after ``t`` (words whose midpoint lies before ``t`` are dropped)."""
    kept: tuple[WordTimestamp, ...] = tuple(w for w in res.words if (w.start + w.end) / 2 >= t)
    text = " ".join(w.word for w in kept) if res.words else res.transcript
    return attrs.evolve(res, transcript=text, words=kept, start=t, duration=max(0.0, res.end - t))


async def _quietly_cancel(service: STTService) -> None:
    try:
        await service.cancel_streaming()
    except Exception as exc:  # closing a broken engine may fail; nothing to report
        log.debug("cancel_streaming on %s failed: %r", service.endpoint.id, exc)


def _describe(c: Conditions) -> str:
    return f"tier {c.tier.value}, network {c.network.value}, thermal {c.thermal.value}"
