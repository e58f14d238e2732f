"""Helpers shared by the routed-session tests: drive a session on a FakeClock, check coverage."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import attrs

from sttrouter.errors import AudioFormatError, NoEndpointAvailable, STTError
from sttrouter.events import RouteEvent
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult
from sttrouter.session import RoutedSession
from sttrouter.testing import FakeClock, FakeSTTService, SyntheticSpeech, settle

T = TypeVar("T")
EPS = 1e-6


async def tick(clock: FakeClock, aw: Awaitable[T], *, step: float = 0.05, limit: float = 900) -> T:
    """Await ``aw`` while moving virtual time forward whenever it is blocked."""
    task = asyncio.ensure_future(aw)
    await settle()
    waited = 0.0
    while not task.done():
        await clock.advance(step)
        waited += step
        if waited > limit:
            task.cancel()
            raise AssertionError(f"still blocked after {limit}s of virtual time")
    return task.result()


@attrs.define
class Run:
    results: list[STTResult] = attrs.Factory(list)
    error: STTError | None = None
    events: list[RouteEvent] = attrs.Factory(list)

    @property
    def finals(self) -> list[STTResult]:
        return [r for r in self.results if r.is_final]

    def kinds(self) -> list[str]:
        return [e.kind.value for e in self.events]


async def drive(
    clock: FakeClock,
    session: RoutedSession,
    speech: SyntheticSpeech,
    *,
    chunk: float = 0.02,
    before_chunk: Callable[[int, float], Awaitable[None] | None] | None = None,
    pause_after: dict[int, float] | None = None,
    options: StreamOptions | None = None,
) -> Run:
    """Stream ``speech`` in real time (virtual), collect results, stop; never raises STTError."""
    run = Run()

    async def collect(results: object) -> None:
        try:
            async for r in results:  # type: ignore[attr-defined]
                run.results.append(r)
        except STTError as exc:
            run.error = run.error or exc

    try:
        results = await tick(clock, session.start_streaming(options=options))
    except STTError as exc:
        run.error = exc
        run.events = list(session.history)
        return run
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, results)
        try:
            sent = 0.0
            for i, c in enumerate(speech.chunks(chunk)):
                if before_chunk is not None:
                    maybe = before_chunk(i, sent)
                    if maybe is not None:
                        await maybe
                await tick(clock, session.send_audio(c))
                sent += len(c) / 32000
                await clock.advance(chunk)
                if pause_after and i in pause_after:
                    await clock.advance(pause_after[i])
            await tick(clock, session.stop_streaming())
        except STTError as exc:
            run.error = run.error or exc
            await session.cancel_streaming()
    run.events = list(session.history)
    return run


def check_coverage(speech: SyntheticSpeech, run: Run, chain: Sequence[str] = ()) -> None:
    """Invariant 1: every word exactly once at its true time, or NoEndpointAvailable names the
    uncovered interval (and no final reaches into it)."""
    finals = run.finals
    for a, b in itertools.pairwise(finals):
        assert b.start >= a.end - EPS, f"finals overlap: {a} / {b}"
    if chain:
        for r in run.results:
            assert r.endpoint_id in chain, r
    counts = Counter(w.word for r in finals for w in r.words)
    timed = {w.word: (w.start, w.end) for r in finals for w in r.words}
    limit = float("inf")
    if run.error is not None:
        # AudioFormatError: two engines rejected audio the session had validated
        assert isinstance(run.error, NoEndpointAvailable | AudioFormatError), repr(run.error)
        uncovered = run.error.uncovered
        limit = uncovered[0] if uncovered is not None else 0.0
        assert all(r.end <= limit + EPS for r in finals), (limit, finals[-1:])
        if uncovered is not None:
            assert uncovered[1] > uncovered[0]
    for word, start, end in speech.words:
        if end <= limit + EPS:
            assert counts[word] == 1, f"{word} ({start:.2f}..{end:.2f}) appears {counts[word]}x"
            assert abs(timed[word][0] - start) < EPS
            assert abs(timed[word][1] - end) < EPS
        else:
            assert counts[word] == 0, f"{word} lies in the uncovered interval but has a final"
    if run.error is None:
        # the finals tile the whole stream: first at 0, contiguous, last at the end
        assert finals, "no finals"
        assert abs(finals[0].start) < EPS
        for a, b in itertools.pairwise(finals):
            assert abs(b.start - a.end) < 1e-3, (a, b)
        assert abs(finals[-1].end - speech.duration) < 1e-3


def check_words(speech: SyntheticSpeech, run: Run, reported: Sequence[tuple[float, float]]) -> None:
    """Every word of ``speech`` appears in exactly one final at its true time, or lies inside a
    reported interval (``reported``, or from the error's ``uncovered`` on to the end); no word
    is ever duplicated, and finals never overlap."""
    finals = run.finals
    for a, b in itertools.pairwise(finals):
        assert b.start >= a.end - EPS, f"finals overlap: {a} / {b}"
    spans = list(reported)
    if run.error is not None:
        assert isinstance(run.error, NoEndpointAvailable | AudioFormatError), repr(run.error)
        uncovered = getattr(run.error, "uncovered", None)
        spans.append((uncovered[0] if uncovered is not None else 0.0, float("inf")))
    counts = Counter(w.word for r in finals for w in r.words)
    timed = {w.word: (w.start, w.end) for r in finals for w in r.words}
    for word, start, end in speech.words:
        assert counts[word] <= 1, f"{word} ({start:.2f}..{end:.2f}) appears {counts[word]}x"
        if counts[word] == 1:
            assert abs(timed[word][0] - start) < EPS
            assert abs(timed[word][1] - end) < EPS
            continue
        inside = any(lo - EPS <= start and end <= hi + EPS for lo, hi in spans)
        assert inside, f"{word} ({start:.2f}..{end:.2f}) has no final and no report: {spans}"


def fakes(clock: FakeClock, *services: FakeSTTService) -> Callable[[object], FakeSTTService]:
    """A service factory that hands out one FakeSTTService per endpoint id."""
    by_id = {s.endpoint.id: s for s in services}

    def factory(endpoint: object) -> FakeSTTService:
        return by_id[endpoint.id]  # type: ignore[attr-defined]

    return factory
