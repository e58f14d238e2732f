"""Hedged streams on the virtual clock: p99 time to final with and without hedging, and the
extra audio billed.

Every engine's response latency is drawn per utterance: log-normal (median 0.25 s, sigma 0.4)
for 95 % of utterances, a slow tail of 4-8 s for the other 5 %. Each session streams
``--utterances`` utterances in real time (virtual) over a chain of two such engines; with
hedging, ``SessionConfig(hedge=HedgeConfig(after=...))`` opens the second engine beside a slow
first one. Time to final = when the session delivered the final of an utterance minus when
the utterance's last word had been sent. Extra audio billed = audio sent to all engines over
audio spoken, minus one. Goals: p99 at least 2x lower with hedging; extra audio <= 10 %.

Run: ``.venv/bin/python benchmarks/hedging.py`` (``--quick`` for fewer sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from session_kit import drive, fakes

from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.session.hedge import HedgeConfig
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    Fault,
    FaultKind,
    FaultPlan,
    fake_endpoint,
    synthetic_speech,
)

WORD, GAP = 0.15, 0.6


def latency(rng: random.Random, tail: float) -> float:
    if rng.random() < tail:
        return rng.uniform(4.0, 8.0)
    return rng.lognormvariate(np.log(0.25), 0.4)


def plan(rng: random.Random, starts: list[float], tail: float) -> FaultPlan:
    """A latency per utterance, from its first word on (for every stream of the engine)."""
    return FaultPlan(
        [Fault(FaultKind.LATENCY, after=t, seconds=latency(rng, tail)) for t in starts]
    )


async def one_session(seed: int, utterances: int, hedge: HedgeConfig | None, tail: float):
    rng = random.Random(seed)
    speech = synthetic_speech([5] * utterances, word_seconds=WORD, gap_seconds=GAP)
    starts = [0.0] + [span[1] + 0.05 for span in speech.utterances[:-1]]
    clock = FakeClock()
    services = [
        FakeSTTService(
            fake_endpoint(n), clock=clock, faults=plan(rng, starts, tail), interim_results=True
        )
        for n in ("a", "b")
    ]
    session = RoutedSession(
        [s.endpoint for s in services],
        service_factory=fakes(clock, *services),
        clock=clock,
        config=SessionConfig(hedge=hedge, stall_timeout=30.0),
    )
    t0 = clock.now()
    run = await drive(clock, session, speech)
    assert run.error is None, run.error
    # the session stamps each result with its clock when it delivers it
    waits = [r.timestamp - t0 - r.words[-1].end for r in run.finals if r.words]
    billed = sum(u.audio_seconds for u in session.usage().values())
    hedged = sum(u.hedged_seconds for u in session.usage().values())
    return waits, billed, hedged, speech.duration


async def measure(sessions: int, utterances: int, hedge: HedgeConfig | None, tail: float):
    waits: list[float] = []
    billed = hedged = spoken = 0.0
    for seed in range(sessions):
        w, b, h, d = await one_session(seed, utterances, hedge, tail)
        waits += w
        billed, hedged, spoken = billed + b, hedged + h, spoken + d
    return waits, billed / spoken - 1, hedged / spoken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--after", type=float, default=0.8, help="fixed hedge threshold, seconds")
    args = ap.parse_args()
    sessions = 10 if args.quick else 50
    print(
        f"python {sys.version.split()[0]}; {sessions} sessions x {args.utterances} utterances, "
        f"5 % slow tail, virtual clock"
    )
    base, base_extra, _ = asyncio.run(measure(sessions, args.utterances, None, 0.05))
    p99_base = float(np.percentile(base, 99))
    print(
        f"  no hedge: p50 {np.percentile(base, 50):.3f}s p99 {p99_base:.3f}s "
        f"extra audio billed {base_extra:.1%}"
    )
    for label, hedge in (
        (f"hedged, fixed {args.after:g}s", HedgeConfig(after=args.after)),
        ("hedged, observed p95", HedgeConfig()),
    ):
        waits, extra, hedged = asyncio.run(measure(sessions, args.utterances, hedge, 0.05))
        p99 = float(np.percentile(waits, 99))
        ratio = p99_base / p99
        print(
            f"  {label}: p50 {np.percentile(waits, 50):.3f}s p99 {p99:.3f}s "
            f"({ratio:.1f}x lower; goal >= 2x: {'met' if ratio >= 2 else 'missed'}), "
            f"extra audio billed {extra:.1%} (hedged {hedged:.1%}; goal <= 10 %: "
            f"{'met' if extra <= 0.10 else 'missed'})"
        )


if __name__ == "__main__":
    main()
