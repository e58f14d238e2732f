"""The seed's 90-minute tutoring session, simulated end to end in a few seconds.

``sttrouter simulate`` shows the router's *decisions* along a trace. This example goes further:
it plays 90 minutes of (synthetic) speech through a real :class:`~sttrouter.session.RoutedSession`
on a virtual clock, changes the device's conditions when the trace says (the phone heats up, the
Wi-Fi drops), and *executes* the trace's faults against the engines (the GLM server goes down
for 3 minutes, then turns slow). Engines are :class:`~sttrouter.testing.FakeSTTService`s
standing in for the registry's endpoints, with their real ids and prices, so the cost and every
routing move are those of the real registry and policy.

It prints the route events (failovers, switch-backs, re-routes), what each endpoint served and
cost, and checks the promise that matters: every word spoken is in exactly one final.

Run it::

    python examples/simulate_tutoring.py                         # the full 90 minutes
    python examples/simulate_tutoring.py --scale 0.1             # the same trace in 9 minutes
    python examples/simulate_tutoring.py --trace my_trace.toml --config endpoints.toml --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from sttrouter import (
    ENGINE_FORMAT,
    Conditions,
    EndpointRegistry,
    NetworkStatus,
    NoEndpointAvailable,
    Policy,
    RoutedSession,
    RouteEvent,
    RouteEventKind,
    Router,
    SessionConfig,
    STTEndpoint,
    STTError,
    default_registry,
)
from sttrouter.panel import HealthView
from sttrouter.simulate import FaultSpec, FaultType, Trace, format_time
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    Fault,
    FaultKind,
    FaultPlan,
    synthetic_speech,
)

HERE = Path(__file__).resolve().parent
TRACE = HERE / "traces" / "tutoring_90min.toml"
WORDS_PER_UTTERANCE = 8
WORD_SECONDS = 0.3
PAUSE_SECONDS = 1.0
CHUNK_SECONDS = 0.5


class _AllKeys(dict[str, str]):
    """An environment where every API key is set: plan as if the keys were configured."""

    def get(self, key: str, default: object = None) -> str:
        return "set"


@attrs.frozen
class AssumeKeys:
    """A router that decides as if every API key were present (it checks presence only)."""

    router: Router

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: HealthView | None = None,
    ) -> Any:
        return self.router.decide(conditions, language, streaming, health, environ=_AllKeys())


def scaled(trace: Trace, scale: float) -> Trace:
    """``trace`` with every time multiplied by ``scale`` (0.1 plays 90 minutes in 9)."""
    return attrs.evolve(
        trace,
        duration=trace.duration * scale,
        changes=tuple(attrs.evolve(c, at=c.at * scale) for c in trace.changes),
        faults=tuple(
            attrs.evolve(
                f, at=f.at * scale, duration=None if f.duration is None else f.duration * scale
            )
            for f in trace.faults
        ),
    )


class Engines:
    """The session's service factory: fake engines that suffer the trace's faults.

    A fault is planned into every stream opened before it ends, from its start on (in the
    stream's own audio time): an outage breaks the stream and refuses new connections, a stall
    silences it, a latency fault delays its results. While the device is offline, endpoints
    that need the network refuse connections and their open streams break.
    """

    def __init__(self, trace: Trace, clock: FakeClock) -> None:
        self.trace = trace
        self.clock = clock
        self.offline = trace.initial.network is NetworkStatus.DISCONNECTED
        self.live: dict[str, list[tuple[STTEndpoint, FakeSTTService]]] = {}

    def _plan(self, endpoint_id: str) -> tuple[FaultPlan, bool]:
        now = self.clock.now()
        plan, down = FaultPlan(), False
        for f in self.trace.faults:
            if f.endpoint != endpoint_id or f.end(self.trace.duration) <= now:
                continue
            after = max(0.0, f.at - now)  # stream audio runs with the clock: speech is live
            if f.kind is FaultType.OUTAGE:
                if after == 0.0:
                    down = True
                else:
                    plan = plan | FaultPlan((Fault(FaultKind.DROP, after=after),))
            elif f.kind is FaultType.STALL:
                plan = plan | FaultPlan((Fault(FaultKind.STALL, after=after + (f.seconds or 0)),))
            else:
                plan = plan | FaultPlan(
                    (Fault(FaultKind.LATENCY, after=after or None, seconds=f.seconds or 0.0),)
                )
        return plan, down

    def __call__(self, endpoint: STTEndpoint) -> FakeSTTService:
        plan, down = self._plan(endpoint.id)
        service = FakeSTTService(endpoint, faults=plan, clock=self.clock)
        service.down = down or (self.offline and endpoint.needs_network)
        self.live.setdefault(endpoint.id, []).append((endpoint, service))
        return service

    def _services(self) -> list[tuple[STTEndpoint, FakeSTTService]]:
        return [pair for pairs in self.live.values() for pair in pairs]

    def outage(self, fault: FaultSpec, *, started: bool) -> None:
        for _, service in self.live.get(fault.endpoint, []):
            service.down = started

    def network(self, status: NetworkStatus) -> None:
        self.offline = status is NetworkStatus.DISCONNECTED
        for endpoint, service in self._services():
            if endpoint.needs_network:
                service.down = self.offline
                if self.offline and service.is_streaming:
                    service.kill("the device lost its network")


async def simulate(
    trace: Trace, router: Router, *, config: SessionConfig | None = None
) -> dict[str, Any]:
    """Play ``trace`` through a routed session; return what happened.

    When no endpoint can serve (say, offline with a language the offline engine lacks) the
    session fails with :class:`NoEndpointAvailable` naming the audio it could not transcribe;
    like an app would, the simulation records that span, keeps talking, and opens a new stream
    at the next utterance.
    """
    clock = FakeClock()
    engines = Engines(trace, clock)
    session = RoutedSession(
        router=AssumeKeys(router),
        conditions=trace.initial,
        language=trace.language,
        service_factory=engines,
        clock=clock,
        config=config or SessionConfig(),
    )
    # the timeline of things that happen to the device and the engines
    todo: list[tuple[float, str, Any]] = [(c.at, "change", c) for c in trace.changes]
    for f in trace.faults:
        todo += [(f.at, "fault", f), (f.end(trace.duration), "fault_end", f)]
    todo.sort(key=lambda item: item[0])
    conditions = trace.initial
    spoken: list[tuple[str, float, float]] = []  # word, start, end on the whole session's time
    heard: list[str] = []
    lost: list[tuple[float, float]] = []
    moves: list[tuple[float, RouteEvent]] = []
    audio = 0.0
    next_word = 1

    def apply_due() -> None:
        nonlocal conditions
        while todo and todo[0][0] <= clock.now():
            _at, kind, item = todo.pop(0)
            if kind == "change":
                conditions = item.apply(conditions)
                engines.network(conditions.network)
                session.update_conditions(conditions)
            elif item.kind is FaultType.OUTAGE:
                engines.outage(item, started=kind == "fault")

    def utterance() -> tuple[list[bytes], float]:
        nonlocal next_word
        clip = synthetic_speech(
            (WORDS_PER_UTTERANCE,),
            word_seconds=WORD_SECONDS,
            gap_seconds=PAUSE_SECONDS,
            first_word=next_word,
        )
        next_word += WORDS_PER_UTTERANCE
        spoken.extend((w, audio + a, audio + b) for w, a, b in clip.words)
        return clip.chunks(CHUNK_SECONDS), audio + clip.duration

    async def speak(chunk: bytes, stream: Any = None) -> None:
        nonlocal audio
        apply_due()
        if stream is not None:
            await stream.send(chunk)
        seconds = ENGINE_FORMAT.seconds(len(chunk))
        audio += seconds
        await clock.advance(seconds)  # speaking takes time

    while audio < trace.duration:
        start = audio
        failure: STTError | None = None
        rest: list[bytes] = []
        try:
            async with session.stream(ENGINE_FORMAT) as stream:

                async def read(offset: float = start) -> None:
                    nonlocal failure
                    try:
                        async for r in stream:
                            if r.is_final:
                                heard.extend(r.transcript.split())
                    except STTError as exc:
                        failure = failure or exc

                async def watch(offset: float = start) -> None:
                    async for e in session.events():
                        moves.append((offset, e))

                reader = asyncio.create_task(read())
                watcher = asyncio.create_task(watch())
                try:
                    while audio < trace.duration:
                        rest, _end = utterance()
                        while rest:
                            await speak(rest[0], stream)
                            rest.pop(0)
                    stop = asyncio.create_task(stream.stop())
                    while not stop.done():  # let the last finals (and any late engine) arrive
                        await clock.advance(0.1)
                    await stop
                except STTError as exc:
                    failure = failure or exc
                await reader
                await asyncio.sleep(0)
                watcher.cancel()
        except STTError as exc:
            failure = failure or exc
        if failure is None:
            break
        if not isinstance(failure, NoEndpointAvailable):
            raise failure
        if failure.uncovered is not None:
            lost.append((start + failure.uncovered[0], start + failure.uncovered[1]))
        if not rest:  # it failed before a word was sent: this utterance goes untranscribed
            rest, _end = utterance()
        begin = audio
        for chunk in rest:  # the speaker goes on talking; nobody transcribes it
            await speak(chunk)
        lost.append((begin, audio))

    usage = session.usage()
    missing = [(w, a, b) for w, a, b in spoken if w not in set(heard)]
    spans = _merge(lost)
    unexplained = [
        w for w, a, b in missing if not any(lo - 1e-6 <= a and b <= hi + 1e-6 for lo, hi in spans)
    ]
    order = {w: i for i, (w, _, _) in enumerate(spoken)}
    return {
        "trace": trace.name,
        "audio_seconds": round(audio, 1),
        "words_spoken": len(spoken),
        "words_in_finals": len(heard),
        "duplicates": len(heard) - len(set(heard)),
        "in_order": [order[w] for w in heard] == sorted(order[w] for w in heard),
        "not_transcribed": [[round(a, 1), round(b, 1)] for a, b in spans],
        "words_not_transcribed": len(missing),
        "words_lost_silently": len(unexplained),
        "moves": [
            {
                "at": format_time(offset + e.audio_time),
                "kind": e.kind.value,
                "from": e.previous_endpoint_id,
                "to": e.endpoint_id,
                "reason": e.reason,
            }
            for offset, e in moves
            if e.kind is not RouteEventKind.QUEUED
        ],
        "usage": {
            eid: {
                "streams": u.streams,
                "audio_seconds": round(u.audio_seconds, 1),
                "replayed_seconds": round(u.replayed_seconds, 1),
                "cost": str(u.cost),
                "failures": u.failures,
            }
            for eid, u in usage.items()
        },
        "cost": str(session.cost),
        "failovers": session.metrics.failovers,
        "all_deepgram_cost": str(_price(router.registry, "deepgram", audio)),
    }


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1e-6:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _price(registry: EndpointRegistry, endpoint_id: str, seconds: float) -> Decimal:
    endpoint = registry.get(endpoint_id)
    if endpoint is None:
        return Decimal(0)
    return (endpoint.cost_per_hour * Decimal(repr(seconds)) / 3600).quantize(Decimal("0.0001"))


def report(result: Mapping[str, Any]) -> str:
    lines = [f"{result['trace']}: {format_time(result['audio_seconds'])} of speech", ""]
    for m in result["moves"]:
        move = f"{m['from']} -> {m['to']}" if m["from"] else m["to"]
        lines.append(f"  {m['at']:>9}  {m['kind']:<14} {move}   {m['reason']}")
    lines.append("")
    lines.append(
        f"  {'endpoint':<12} {'streams':>7} {'audio s':>9} {'replayed s':>10} {'cost $':>10}"
    )
    for eid, u in result["usage"].items():
        lines.append(
            f"  {eid:<12} {u['streams']:>7} {u['audio_seconds']:>9} {u['replayed_seconds']:>10}"
            f" {u['cost']:>10}"
        )
    lines.append("")
    lines.append(
        f"  session cost ${result['cost']} (all on Deepgram: ${result['all_deepgram_cost']}); "
        f"{result['failovers']} failovers"
    )
    lines.append(
        f"  words: {result['words_spoken']} spoken, {result['words_in_finals']} in finals, "
        f"{result['duplicates']} duplicated, in order: {'yes' if result['in_order'] else 'NO'}"
    )
    if result["not_transcribed"]:
        spans = ", ".join(
            f"{format_time(a)}-{format_time(b)}" for a, b in result["not_transcribed"]
        )
        lines.append(
            f"  not transcribed (reported to the caller): {spans} "
            f"({result['words_not_transcribed']} words)"
        )
    lines.append(f"  words lost without a report: {result['words_lost_silently']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulate a tutoring session trace end to end")
    parser.add_argument("--trace", default=str(TRACE), help="trace TOML (default: 90 minutes)")
    parser.add_argument("--config", help="endpoint registry TOML (default: built-in)")
    parser.add_argument("--policy", help="policy TOML (default: built-in)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every time by this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    registry = EndpointRegistry.load(args.config) if args.config else default_registry()
    router = Router(registry, Policy.load(args.policy) if args.policy else None)
    trace = Trace.load(args.trace)
    trace.check_endpoints(registry)
    if args.scale != 1.0:
        trace = scaled(trace, args.scale)
    result = asyncio.run(simulate(trace, router))
    print(json.dumps(result, indent=2) if args.json else report(result))
    ok = not result["duplicates"] and result["in_order"] and not result["words_lost_silently"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
