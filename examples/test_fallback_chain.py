"""Testing a fallback chain with ``sttrouter.testing`` — a pytest file to copy.

Run it: ``pytest examples/test_fallback_chain.py``. No network, no real engine, no sleeping:
the engines are :class:`~sttrouter.testing.FakeSTTService`s that read words back from
:func:`~sttrouter.testing.synthetic_speech` audio, faults come from
:class:`~sttrouter.testing.FaultPlan`, and time is a :class:`~sttrouter.testing.FakeClock`
(the ``fake_clock`` fixture of sttrouter's pytest plugin).

The property every test checks is the one that matters in production: each word the caller
spoke appears in exactly one final result, in order, whichever endpoint produced it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import anyio
import pytest

from sttrouter import (
    NoEndpointAvailable,
    RoutedSession,
    RouteEventKind,
    SessionConfig,
    STTEndpoint,
    STTError,
    STTResult,
)
from sttrouter.testing import FakeClock, FakeSTTService, FaultPlan, SyntheticSpeech, fake_endpoint

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PRIMARY = fake_endpoint("primary", cost_per_hour="0.26")
BACKUP = fake_endpoint("backup", cost_per_hour="0.37")
LAST_RESORT = fake_endpoint("last-resort")


def chain_session(
    clock: FakeClock,
    faults: Mapping[str, FaultPlan],
    chain: tuple[STTEndpoint, ...] = (PRIMARY, BACKUP),
    **config: float,
) -> RoutedSession:
    """A routed session over ``chain`` whose engines fail as ``faults`` says."""

    def build(endpoint: STTEndpoint) -> FakeSTTService:
        return FakeSTTService(endpoint, faults=faults.get(endpoint.id), clock=clock)

    return RoutedSession(chain, service_factory=build, clock=clock, config=SessionConfig(**config))


async def run(session: RoutedSession, speech: SyntheticSpeech, clock: FakeClock) -> list[STTResult]:
    """Speak the clip in real time (on the virtual clock), stop, and return every result.

    Raises the session's error (e.g. ``NoEndpointAvailable``) if the stream failed.
    """
    results: list[STTResult] = []
    failure: STTError | None = None
    done = anyio.Event()

    async def talk() -> None:
        nonlocal failure
        try:
            async with session.stream() as s:

                async def read() -> None:
                    nonlocal failure
                    try:
                        async for r in s:
                            results.append(r)
                    except STTError as exc:
                        failure = failure or exc

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    try:
                        for chunk in speech.chunks(0.1):
                            await s.send(chunk)
                            await clock.sleep(0.1)  # a microphone: 100 ms every 100 ms
                        await s.stop()
                    except STTError as exc:
                        failure = failure or exc
        except STTError as exc:
            failure = failure or exc
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(talk)
        while not done.is_set():  # virtual time: audio pacing and deadlines (stall, connect)
            await clock.advance(0.05)
    if failure is not None:
        raise failure
    return results


def final_words(results: list[STTResult]) -> list[str]:
    return [w for r in results if r.is_final for w in r.transcript.split()]


def truth(speech: SyntheticSpeech) -> list[str]:
    return [w for w, _, _ in speech.words]


async def test_healthy_primary_serves_everything(
    fake_clock: FakeClock, synthetic_speech_clip: SyntheticSpeech
) -> None:
    session = chain_session(fake_clock, {})
    results = await run(session, synthetic_speech_clip, fake_clock)
    assert final_words(results) == truth(synthetic_speech_clip)
    assert {r.endpoint_id for r in results} == {"primary"}
    assert [e.kind for e in session.history] == [RouteEventKind.SELECTED]


async def test_primary_drops_backup_takes_over(
    fake_clock: FakeClock, synthetic_speech_clip: SyntheticSpeech
) -> None:
    # the primary's connection breaks in the middle of the second utterance
    session = chain_session(fake_clock, {"primary": FaultPlan.drop_after(1.4)})
    results = await run(session, synthetic_speech_clip, fake_clock)

    assert final_words(results) == truth(synthetic_speech_clip)  # nothing lost, nothing twice
    finals = [r for r in results if r.is_final]
    assert finals[0].endpoint_id == "primary"
    assert finals[-1].endpoint_id == "backup"
    for a, b in itertools.pairwise(finals):  # finals follow each other on the timeline
        assert b.start >= a.start
    kinds = [e.kind for e in session.history]
    assert RouteEventKind.FAILOVER in kinds
    failover = next(e for e in session.history if e.kind is RouteEventKind.FAILOVER)
    assert (failover.previous_endpoint_id, failover.endpoint_id) == ("primary", "backup")
    usage = session.usage()
    assert usage["backup"].replayed_seconds > 0  # the unfinished utterance was replayed


async def test_a_silent_stall_is_detected(
    fake_clock: FakeClock, synthetic_speech_clip: SyntheticSpeech
) -> None:
    # the primary stops answering after 0.3 s of audio, without an error: only a deadline
    # on the (virtual) clock can notice
    session = chain_session(fake_clock, {"primary": FaultPlan.stall_after(0.3)}, stall_timeout=2.0)
    results = await run(session, synthetic_speech_clip, fake_clock)
    assert final_words(results) == truth(synthetic_speech_clip)
    failed = next(e for e in session.history if e.kind is RouteEventKind.FAILED)
    assert failed.endpoint_id == "primary"
    assert "stall" in failed.reason.lower() or "no result" in failed.reason.lower()


async def test_rejected_key_skips_to_the_next_endpoint(
    fake_clock: FakeClock, synthetic_speech_clip: SyntheticSpeech
) -> None:
    session = chain_session(
        fake_clock,
        {"primary": FaultPlan.auth_error(), "backup": FaultPlan.rate_limited()},
        chain=(PRIMARY, BACKUP, LAST_RESORT),
    )
    results = await run(session, synthetic_speech_clip, fake_clock)
    assert final_words(results) == truth(synthetic_speech_clip)
    assert {r.endpoint_id for r in results if r.is_final} == {"last-resort"}


async def test_when_everything_fails_the_caller_is_told_what_was_lost(
    fake_clock: FakeClock, synthetic_speech_clip: SyntheticSpeech
) -> None:
    session = chain_session(
        fake_clock,
        {"primary": FaultPlan.drop_after(1.0), "backup": FaultPlan.fail_on_connect()},
    )
    with pytest.raises(NoEndpointAvailable) as info:
        await run(session, synthetic_speech_clip, fake_clock)
    assert info.value.uncovered is not None
    start, end = info.value.uncovered
    assert start < 1.0 <= end  # the audio without a final is named
