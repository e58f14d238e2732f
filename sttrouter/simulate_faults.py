"""Execute a trace's faults: a real :class:`~sttrouter.session.RoutedSession` over fake engines.

:mod:`sttrouter.simulate` replays the router's *decisions* along a trace. This module runs the
session itself on a virtual clock: synthetic speech (utterances of marked words the fake engines
decode back exactly) streams through one ``RoutedSession`` for the trace's whole duration; every
endpoint of the registry is a :class:`~sttrouter.testing.FakeSTTService` that carries that
endpoint's price; the trace's faults act on the fakes by *trace time*:

- ``outage``: connecting fails and a running stream breaks while the outage lasts;
- ``stall``: a stream (after ``seconds`` of its audio, if given) accepts audio and never answers
  again; streams opened after the stall window are healthy;
- ``latency``: results arrive ``seconds`` late while it lasts.

Condition changes reach the session through ``update_conditions`` at their time. When no
endpoint can serve, the stream ends with ``NoEndpointAvailable``; the simulator records the
uncovered audio and opens a new stream on the next chunk, as an application would.

The report counts failovers, switch-backs and re-routes, the audio coverage (share of words
transcribed exactly once, duplicates, uncovered seconds), the time without transcription
(audio with no final, plus every stretch in which a spoken utterance waited more than
``grace`` seconds for its final), and audio and cost per endpoint (replays are billed again).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import numpy as np

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConnectionFailed, NoEndpointAvailable, StreamingFailed, STTError
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.panel.device import Conditions, NetworkStatus
from sttrouter.panel.router import Router
from sttrouter.resilience import HealthView, RetryPolicy
from sttrouter.results import STTResult
from sttrouter.session import EndpointUsage, RoutedSession, SessionConfig
from sttrouter.simulate import FaultSpec, FaultType, Trace, format_time
from sttrouter.testing import FakeClock, FakeSTTService, settle
from sttrouter.testing._speech import MARK_BASE, mark_word

__all__ = [
    "EndpointReport",
    "FaultSimulation",
    "SpeechPattern",
    "format_report",
    "simulate_faults",
]

T = TypeVar("T")
_RATE = ENGINE_FORMAT.sample_rate


@attrs.frozen
class SpeechPattern:
    """The synthetic conversation: utterances of ``words`` words, ``word_seconds`` each, every
    ``period`` seconds (the rest of the period is silence)."""

    words: int = 6
    word_seconds: float = 0.3
    period: float = 3.0

    def word_at(self, t: float) -> int | None:
        """The 1-based index of the word spoken at trace time ``t`` (``None`` in a pause)."""
        k, within = divmod(t, self.period)
        j = int(within / self.word_seconds)
        if j >= self.words:
            return None
        return int(k) * self.words + j + 1

    def word_span(self, n: int) -> tuple[float, float]:
        k, j = divmod(n - 1, self.words)
        start = k * self.period + j * self.word_seconds
        return start, start + self.word_seconds

    def utterance_end(self, n: int) -> float:
        k = (n - 1) // self.words
        return k * self.period + self.words * self.word_seconds

    def value(self, n: int) -> int:
        return MARK_BASE + 1 + (n - 1) % (32767 - MARK_BASE)

    def name(self, n: int) -> str:
        return mark_word(self.value(n))

    def pcm(self, start: float, seconds: float) -> bytes:
        """Audio of ``[start, start + seconds)`` (sample-exact, 16 kHz mono s16le)."""
        first = round(start * _RATE)
        n = round((start + seconds) * _RATE) - first
        out = np.zeros(n, dtype="<i2")
        idx = first + np.arange(n)
        period_n = round(self.period * _RATE)
        word_n = round(self.word_seconds * _RATE)
        k, within = np.divmod(idx, period_n)
        j = within // word_n
        speaking = j < self.words
        word = k * self.words + j + 1
        out[speaking] = MARK_BASE + 1 + (word[speaking] - 1) % (32767 - MARK_BASE)
        return out.tobytes()

    def words_until(self, end: float) -> int:
        """How many words lie entirely before ``end``."""
        k, within = divmod(end, self.period)
        return int(k) * self.words + min(self.words, int(within / self.word_seconds + 1e-9))


class _SimEngine(FakeSTTService):
    """A fake engine whose faults follow trace time (the shared virtual clock)."""

    def __init__(
        self,
        endpoint: STTEndpoint,
        clock: FakeClock,
        faults: tuple[FaultSpec, ...],
        end: float,
        offline: Callable[[], bool],
    ) -> None:
        super().__init__(endpoint, clock=clock, endpoint_silence=0.3)
        self._specs = faults
        self._end = end
        self._offline = offline
        self._stall_after: float | None = None

    def _down(self) -> str | None:
        if self.endpoint.needs_network and self._offline():
            return "the device has no network (simulated)"
        if self._window(FaultType.OUTAGE) is not None:
            return "outage (simulated)"
        return None

    def _window(self, kind: FaultType) -> FaultSpec | None:
        now = self.clock.now()
        for f in self._specs:
            if f.kind is kind and f.at <= now < f.end(self._end):
                return f
        return None

    async def probe(self) -> None:
        why = self._down()
        if why is not None:
            raise ConnectionFailed(f"probe failed: {why}")

    async def _open(self) -> None:
        why = self._down()
        if why is not None:
            raise ConnectionFailed(f"connection refused: {why}")
        await super()._open()
        self._stall_after = None

    async def _send(self, pcm: bytes) -> None:
        why = self._down()
        if why is not None:
            raise StreamingFailed(f"connection lost: {why}")
        stall = self._window(FaultType.STALL)
        if stall is not None and self._stall_after is None:
            self._stall_after = self.stream_seconds + (stall.seconds or 0.0)
        if self._stall_after is not None and self.stream_seconds >= self._stall_after:
            self._stalled = True  # a stalled stream never recovers; new streams may
        latency = self._window(FaultType.LATENCY)
        self._latency = (latency.seconds or 0.0) if latency is not None else 0.0
        await super()._send(pcm)


EndpointReport = EndpointUsage
"""What one endpoint did over the simulated session (the session's own usage record)."""


@attrs.frozen
class FaultSimulation:
    """The outcome of :func:`simulate_faults`."""

    duration: float
    failovers: int
    switch_backs: int
    reroutes: int
    words: int
    words_once: int
    words_missing: int
    words_duplicated: int
    uncovered: tuple[tuple[float, float], ...]
    uncovered_seconds: float
    time_without_transcription: float
    longest_without_transcription: float
    endpoints: tuple[EndpointReport, ...]
    events: tuple[RouteEvent, ...]

    @property
    def coverage(self) -> float:
        """Share of the spoken words transcribed exactly once."""
        return self.words_once / self.words if self.words else 1.0

    @property
    def cost(self) -> Decimal:
        return sum((e.cost for e in self.endpoints), Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration": self.duration,
            "failovers": self.failovers,
            "switch_backs": self.switch_backs,
            "reroutes": self.reroutes,
            "words": self.words,
            "words_once": self.words_once,
            "words_missing": self.words_missing,
            "words_duplicated": self.words_duplicated,
            "coverage": self.coverage,
            "uncovered": [list(u) for u in self.uncovered],
            "uncovered_seconds": self.uncovered_seconds,
            "time_without_transcription": self.time_without_transcription,
            "longest_without_transcription": self.longest_without_transcription,
            "cost": str(self.cost),
            "endpoints": [{**attrs.asdict(e), "cost": str(e.cost)} for e in self.endpoints],
            "events": [e.to_dict() for e in self.events],
        }


class _Decider:
    """Passes the API-key environment through to ``Router.decide``."""

    def __init__(self, router: Router, environ: Mapping[str, str] | None, streaming: bool):
        self.router, self.environ, self.streaming = router, environ, streaming

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: HealthView | None = None,
    ) -> Any:
        return self.router.decide(
            conditions, language, self.streaming, health=health, environ=self.environ
        )


async def _tick(clock: FakeClock, aw: Awaitable[T], step: float) -> T:
    """Await ``aw``, moving the virtual clock in small steps while it waits (a connect
    delay, a retry backoff, a stop that waits for the last final)."""
    task = asyncio.ensure_future(aw)
    await settle()
    while not task.done():
        await clock.advance(min(step, 0.05))
    return task.result()


async def simulate_faults(
    trace: Trace,
    router: Router,
    *,
    environ: Mapping[str, str] | None = None,
    speech: SpeechPattern | None = None,
    chunk_seconds: float = 0.5,
    config: SessionConfig | None = None,
    grace: float = 1.5,
) -> FaultSimulation:
    """Run one routed session along ``trace`` with its faults; see the module docstring."""
    speech = speech or SpeechPattern()
    clock = FakeClock()
    registry = router.registry
    now = [trace.initial]

    def offline() -> bool:
        return now[0].network is NetworkStatus.DISCONNECTED

    engines = {
        ep.id: _SimEngine(
            ep,
            clock,
            trace.faults_for(ep),
            trace.duration,
            offline,
        )
        for ep in registry
    }
    events: list[RouteEvent] = []
    offset = [0.0]  # trace time at which the current stream started

    def on_event(ev: RouteEvent) -> None:
        shift = offset[0]
        span = None if ev.interval is None else (ev.interval[0] + shift, ev.interval[1] + shift)
        events.append(attrs.evolve(ev, audio_time=ev.audio_time + shift, interval=span))

    session = RoutedSession(
        router=_Decider(router, environ, trace.streaming),
        conditions=trace.initial,
        language=trace.language,
        service_factory=lambda ep: engines[ep.id],
        clock=clock,
        config=config or SessionConfig(),
        retry=RetryPolicy(attempts=2, jitter=0.0),
        on_event=on_event,
    )
    changes = sorted(trace.changes, key=lambda c: c.at)
    finals: list[STTResult] = []
    uncovered: list[tuple[float, float]] = []
    stream_start = 0.0
    results: Any = None
    reader: asyncio.Task[None] | None = None
    failure: list[STTError] = []

    async def read(it: Any, offset: float) -> None:
        try:
            async for r in it:
                if r.is_final:
                    finals.append(r.shifted(offset))
        except STTError as exc:
            failure.append(exc)

    async def end_stream(exc: STTError | None) -> None:
        nonlocal results, reader
        if reader is not None:
            await _tick(clock, reader, chunk_seconds)
        err = exc or (failure[-1] if failure else None)
        failure.clear()
        if isinstance(err, NoEndpointAvailable) and err.uncovered is not None:
            a, b = err.uncovered
            uncovered.append((stream_start + a, stream_start + b))
        results = reader = None

    t = 0.0
    ci = 0
    conditions = trace.initial
    while t < trace.duration - 1e-9:
        while ci < len(changes) and changes[ci].at <= t + 1e-9:
            conditions = changes[ci].apply(conditions)
            now[0] = conditions
            ci += 1
            session.update_conditions(conditions)  # not streaming: used at the next start
        if results is None:
            offset[0] = t
            try:
                results = await _tick(clock, session.start_streaming(), chunk_seconds)
            except STTError:
                results = None
            if results is None:
                nxt = min(trace.duration, clock.now() + chunk_seconds)
                uncovered.append((t, nxt))
                await clock.advance(max(0.0, nxt - clock.now()))
                t = clock.now()
                continue
            if clock.now() > t + 1e-9:  # connecting took virtual time: that audio is lost
                uncovered.append((t, clock.now()))
                t = clock.now()
            stream_start = offset[0] = t
            reader = asyncio.ensure_future(read(results, stream_start))
        step = min(chunk_seconds, trace.duration - t)
        chunk = speech.pcm(t, step)
        try:
            await _tick(clock, session.send_audio(chunk), chunk_seconds)
        except STTError as exc:
            await session.cancel_streaming()
            await end_stream(exc)
        target = t + step
        if clock.now() < target:
            await clock.advance(target - clock.now())
        elif clock.now() > target + 1e-9:
            uncovered.append((target, clock.now()))
        t = max(target, clock.now())
        if results is not None and failure:
            await session.cancel_streaming()
            await end_stream(None)
    if results is not None:
        try:
            await _tick(clock, session.stop_streaming(), chunk_seconds)
        except STTError as exc:
            await end_stream(exc)
        else:
            await end_stream(None)
    return _report(trace, speech, session, finals, uncovered, events, grace)


def _report(
    trace: Trace,
    speech: SpeechPattern,
    session: RoutedSession,
    finals: list[STTResult],
    uncovered: list[tuple[float, float]],
    events: list[RouteEvent],
    grace: float,
) -> FaultSimulation:
    # finals carry session-stream times; every stream started at a chunk boundary whose time
    # equals the clock, and results are stamped with the clock: recover trace times from words
    counts: Counter[str] = Counter(w.word for r in finals for w in r.words)
    total = speech.words_until(trace.duration)
    names = [speech.name(n) for n in range(1, total + 1)]
    once = sum(1 for n in names if counts[n] == 1)
    missing = sum(1 for n in names if counts[n] == 0)
    dup = sum(1 for n in names if counts[n] > 1)
    # time without transcription: uncovered audio, plus waits beyond `grace` for a final
    spans = [(a, b) for a, b in _merge(uncovered)]
    delivered: dict[str, float] = {}
    for r in finals:
        for w in r.words:
            delivered.setdefault(w.word, r.timestamp)
    for n in range(1, total + 1):
        at = delivered.get(names[n - 1])
        if at is None:
            continue
        end = speech.utterance_end(n) + grace
        if at > end:
            spans.append((end, at))
    merged = _merge(spans)
    usage = session.usage()
    reports = tuple(sorted(usage.values(), key=lambda u: u.endpoint_id))
    kinds = Counter(e.kind for e in events)
    unc = _merge(uncovered)
    return FaultSimulation(
        duration=trace.duration,
        failovers=kinds[RouteEventKind.FAILOVER],
        switch_backs=kinds[RouteEventKind.SWITCHED_BACK],
        reroutes=kinds[RouteEventKind.REROUTED],
        words=total,
        words_once=once,
        words_missing=missing,
        words_duplicated=dup,
        uncovered=tuple(unc),
        uncovered_seconds=sum(b - a for a, b in unc),
        time_without_transcription=sum(b - a for a, b in merged),
        longest_without_transcription=max((b - a for a, b in merged), default=0.0),
        endpoints=reports,
        events=tuple(events),
    )


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1e-9:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def format_report(sim: FaultSimulation) -> str:
    """The human summary ``sttrouter simulate --faults`` prints."""
    lines = [
        "faults executed: one routed session over fake engines on a virtual clock",
        f"    failovers {sim.failovers}, switch-backs {sim.switch_backs}, re-routes {sim.reroutes}",
        f"    words transcribed exactly once: {sim.words_once}/{sim.words} "
        f"({sim.coverage:.2%}); missing {sim.words_missing}, duplicated {sim.words_duplicated}",
        f"    audio without a final: {sim.uncovered_seconds:.1f} s"
        + "".join(f"\n        {format_time(a)} - {format_time(b)}" for a, b in sim.uncovered),
        f"    time without transcription: {sim.time_without_transcription:.1f} s "
        f"(longest {sim.longest_without_transcription:.1f} s)",
        f"    cost: {sim.cost}",
    ]
    for e in sim.endpoints:
        lines.append(
            f"        {e.endpoint_id:<14} {e.audio_seconds:9.1f} s audio "
            f"({e.replayed_seconds:.1f} s replayed), {e.streams} streams, "
            f"{e.failures} failures, cost {e.cost}"
        )
    lines.append("    route events:")
    shown = [e for e in sim.events if e.kind is not RouteEventKind.QUEUED]
    for ev in shown[:60]:
        lines.append(f"        {format_time(ev.clock_time):>8}  {ev}")
    if len(shown) > 60:
        lines.append(f"        ... {len(shown) - 60} more")
    return "\n".join(lines)
