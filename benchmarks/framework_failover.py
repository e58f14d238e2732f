"""LiveKit's ``stt.FallbackAdapter([A, B])`` against the sttrouter LiveKit plugin over A and B.

Both sides get the same two fake engines (:class:`sttrouter.testing.FakeSTTService`, one fresh
instance per stream, finalising about once a second) and the same input: 20 s of synthetic
speech (one 0.6 s utterance per second), pushed in 20 ms frames at real-time pace through
LiveKit's own ``RecognizeStream``. Engine A's stream breaks once it has received 5.3 s of audio;
what happens when A is connected to again is the scenario:

(a) refused: the reconnect fails at once;
(b) hangs: the reconnect never answers (LiveKit gives up after ``conn_options.timeout``).

For each side it reports, from the words of the synthetic speech that no ``FINAL_TRANSCRIPT``
carries: the audio never transcribed (each run of lost words from its first word's start to its
last word's end, or to the end of the audio), the speech in it (the lost words' own duration)
and how many words; words transcribed twice; and the wall-clock time from A's fault to B's
first result ("never" when B never answered).

In (b) LiveKit's stream retries A forever: an attempt that outlived ``conn_options.timeout`` is
taken as one that had connected, which resets the retry budget, so the adapter never moves to B.

LiveKit's side is the adapter as documented (``max_retry_per_stt=1``, ``retry_interval=5``,
``attempt_timeout=10``), each engine wrapped as a LiveKit STT by the same plugin class given a
single-engine source, so both sides share the frame handling and differ only in who fails over.

Run::

    python benchmarks/framework_failover.py            # about 90 s: four runs of 20 s
    python benchmarks/framework_failover.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from livekit import rtc
from livekit.agents import stt

from sttrouter import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.integrations.livekit import STT
from sttrouter.panel import EndpointRegistry
from sttrouter.results import STTResult
from sttrouter.session import SessionConfig
from sttrouter.testing import (
    FakeSTTService,
    FaultPlan,
    SyntheticSpeech,
    fake_endpoint,
    synthetic_speech,
)

FAULT_AT = 5.3
FRAME = 0.02
RATE = 16000


class TimedEngine(FakeSTTService):
    """A fake engine that notes (wall clock) when its fault fired and when it first answered."""

    def __init__(self, endpoint: STTEndpoint, log: Timeline, **kwargs: object) -> None:
        super().__init__(endpoint, **kwargs)  # type: ignore[arg-type]
        self.log = log

    async def _send(self, pcm: bytes) -> None:
        await super()._send(pcm)
        if (
            self.endpoint.id == "A"
            and self.log.fault is None
            and self.stream_seconds >= FAULT_AT - 1e-6
        ):
            self.log.fault = time.perf_counter()

    async def _emit(self, result: STTResult) -> None:
        if self.endpoint.id == "B" and self.log.b_first is None:
            self.log.b_first = time.perf_counter()
        await super()._emit(result)


@dataclass
class Timeline:
    fault: float | None = None
    b_first: float | None = None


@dataclass
class Outcome:
    system: str
    scenario: str
    audio_lost_s: float
    speech_lost_s: float
    words_lost: int
    words_duplicated: int
    fault_to_b_first_result_s: float | None
    error: str | None


def engines(scenario: str, log: Timeline) -> Callable[[STTEndpoint], FakeSTTService]:
    """A factory of fresh fake engines: A's first stream breaks at 5.3 s, later ones are
    refused (a) or hang (b); B is healthy."""
    opened: dict[str, int] = {}

    def make(endpoint: STTEndpoint) -> FakeSTTService:
        n = opened.get(endpoint.id, 0)
        opened[endpoint.id] = n + 1
        if endpoint.id != "A":
            return TimedEngine(endpoint, log)
        if n == 0:
            return TimedEngine(endpoint, log, faults=FaultPlan.drop_after(FAULT_AT))
        if scenario == "refused":
            return TimedEngine(endpoint, log, faults=FaultPlan.fail_on_connect())
        return TimedEngine(endpoint, log, connect_delay=3600.0)

    return make


async def push_paced(stream: stt.RecognizeStream, pcm: bytes) -> None:
    step = round(RATE * FRAME) * 2
    start = time.perf_counter()
    for i, pos in enumerate(range(0, len(pcm), step)):
        chunk = pcm[pos : pos + step]
        frame = rtc.AudioFrame(
            data=chunk, sample_rate=RATE, num_channels=1, samples_per_channel=len(chunk) // 2
        )
        try:
            stream.push_frame(frame)
        except RuntimeError:  # the stream gave up: the rest of the audio is lost
            return
        delay = start + (i + 1) * FRAME - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    stream.end_input()


async def run_one(system: str, scenario: str) -> Outcome:
    speech = synthetic_speech((6,) * 20, word_seconds=0.1, gap_seconds=0.4)  # 20.0 s
    log = Timeline()
    make = engines(scenario, log)
    a, b = fake_endpoint("A", expected_latency_ms=5.0), fake_endpoint("B", expected_latency_ms=9.0)
    plugin: stt.STT
    if system == "livekit FallbackAdapter":
        plugin = stt.FallbackAdapter(
            [STT(lambda: make(a)), STT(lambda: make(b))],
            max_retry_per_stt=1,
            retry_interval=5,
            attempt_timeout=10,
        )
    else:
        context = RoutingContext(
            EndpointRegistry([a, b]),
            service_factory=make,
            session_config=SessionConfig(stall_timeout=30.0),
        )
        plugin = STT(context)
    stream = plugin.stream()
    events: list[stt.SpeechEvent] = []

    errors: list[str] = []

    async def collect() -> None:
        try:
            async for ev in stream:
                events.append(ev)
        except Exception as exc:  # what reached the agent
            errors.append(f"{type(exc).__name__}: {exc}")

    reader = asyncio.create_task(collect())
    await push_paced(stream, speech.pcm)
    try:
        await asyncio.wait_for(reader, 30.0)
    except TimeoutError:
        pass
    finally:
        await stream.aclose()
        await plugin.aclose()
    heard = [
        w
        for ev in events
        if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT
        for w in ev.alternatives[0].text.split()
    ]
    duration = {w: end - start for w, start, end in speech.words}
    lost = [w for w in duration if w not in heard]
    timeline_lost = _lost_spans(speech, set(lost))
    gap = None if log.fault is None or log.b_first is None else log.b_first - log.fault
    return Outcome(
        system=system,
        scenario=scenario,
        audio_lost_s=round(timeline_lost, 3),
        speech_lost_s=round(sum(duration[w] for w in lost), 3),
        words_lost=len(lost),
        words_duplicated=len(heard) - len(set(heard)),
        fault_to_b_first_result_s=None if gap is None else round(gap, 3),
        error=errors[0] if errors else None,
    )


def _lost_spans(speech: SyntheticSpeech, lost: set[str]) -> float:
    """Seconds of the stream's timeline never transcribed: each run of consecutive lost words
    from its first word's start to its last word's end (to the end of the audio when the run
    reaches the last word, since nothing after it was transcribed either)."""
    total, run_start, prev_end = 0.0, None, 0.0
    for word, start, end in speech.words:
        if word in lost:
            run_start = start if run_start is None else run_start
            prev_end = end
        elif run_start is not None:
            total += prev_end - run_start
            run_start = None
    if run_start is not None:
        total += speech.duration - run_start
    return total


async def main(as_json: bool) -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the adapters log every failure; keep quiet
    outcomes = []
    for scenario in ("refused", "hangs"):
        for system in ("livekit FallbackAdapter", "sttrouter plugin"):
            outcomes.append(await run_one(system, scenario))
    if as_json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
        return
    print(f"20 s of speech in 20 ms frames at real-time pace; engine A breaks at {FAULT_AT} s")
    print(
        f"{'scenario':<10} {'system':<24} {'audio lost':>11} {'speech lost':>12} {'words':>6} "
        f"{'dup':>4} {'fault -> B':>11}"
    )
    for o in outcomes:
        gap = (
            "never"
            if o.fault_to_b_first_result_s is None
            else f"{o.fault_to_b_first_result_s:.3f} s"
        )
        print(
            f"{o.scenario:<10} {o.system:<24} {o.audio_lost_s:>9.2f} s {o.speech_lost_s:>10.2f} s "
            f"{o.words_lost:>6} "
            f"{o.words_duplicated:>4} {gap:>11}"
        )
        if o.error:
            print(f"{'':<10} error that reached the agent: {o.error}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    asyncio.run(main(parser.parse_args().json))
