"""Quiet failures: the coverage audit, result sanity, engine bad-audio claims, blocked sends,
the stop deadline, probing before switch-back and the reasons NoEndpointAvailable gives.

Each quiet fault lost words silently before the audit: now every word of the speech appears
in exactly one final, or its span is reported."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quiet_faults import QUIET_KINDS, Quiet, QuietFake, QuietFault
from session_kit import Run, check_coverage, check_words, drive, tick

from sttrouter.errors import NoEndpointAvailable
from sttrouter.events import RouteEventKind
from sttrouter.panel import EndpointRegistry, Router
from sttrouter.panel.device import Conditions, NetworkStatus
from sttrouter.resilience import BreakerBoard, RetryPolicy
from sttrouter.results import STTResult, WordTimestamp
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.session.audit import Coverage, SkipVerdict, check_result
from sttrouter.testing import (
    FakeClock,
    Fault,
    FaultKind,
    FaultPlan,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((5, 5, 5))  # finals at .8 / 1.8 / 2.8 s
UNENDED = synthetic_speech((5, 5), gap_seconds=0.2)  # one utterance, finalised only at stop
IDS = ("primary", "backup", "tertiary")


def trio(
    clock: FakeClock, *quiet: tuple[QuietFault, ...], **config: float | None
) -> tuple[dict[str, QuietFake], RoutedSession]:
    svcs = {i: QuietFake(fake_endpoint(i), clock=clock) for i in IDS}
    for eid, faults in zip(IDS, quiet, strict=False):
        svcs[eid].quiet = faults
    session = RoutedSession(
        [s.endpoint for s in svcs.values()],
        service_factory=lambda ep: svcs[ep.id],
        clock=clock,
        retry=RetryPolicy(attempts=2, jitter=0.0),
        config=SessionConfig(**config),  # type: ignore[arg-type]
    )
    return svcs, session


# -- pure pieces ----------------------------------------------------------------------------
def test_result_sanity_rules() -> None:
    ok = STTResult("a", is_final=True, start=1.0, duration=0.5)
    assert check_result(ok, heard=2.0, last_final_end=1.0) is None
    bad = {
        "non-finite": STTResult("a", is_final=True, start=math.nan, duration=0.5),
        "non-finite ": STTResult("a", is_final=True, start=0.0, duration=math.inf),
        "negative": STTResult("a", is_final=True, start=-1.0, duration=0.5),
        "past the": STTResult("a", is_final=True, start=1e12, duration=0.5),
        "boolean": STTResult("a", is_final="false", start=0.0, duration=0.5),  # type: ignore[arg-type]
        "before the previous": STTResult("a", is_final=True, start=0.0, duration=0.1),
    }
    for why, result in bad.items():
        problem = check_result(result, heard=2.0, last_final_end=1.5)
        assert problem is not None
        assert why.strip() in problem
    stray = STTResult(
        "x", is_final=False, start=0.0, duration=0.5, words=[WordTimestamp("x", 0.0, 9.0, 1.0)]
    )
    assert "outside the audio sent" in str(check_result(stray, heard=2.0, last_final_end=None))


def test_coverage_verdicts() -> None:
    cov = Coverage()
    assert cov.on_skip(0, 100, "a") is SkipVerdict.REPLAY_SAME
    assert cov.on_skip(0, 100, "a") is SkipVerdict.REPLAY_ELSEWHERE
    assert cov.on_skip(50, 150, "b") is SkipVerdict.AGREED
    assert not cov.skips
    assert cov.on_skip(0, 100, "a") is SkipVerdict.REPLAY_SAME
    empty = STTResult("", is_final=True, start=0.0, duration=0.01)
    settled = cov.settle(empty, 0, 320, "b")
    assert [s.endpoint_id for s in settled] == ["a"]  # b found no words either: they agree
    assert cov.settle(empty, 0, 320, "b") == []


# -- each quiet fault, one at a time ----------------------------------------------------------
QUIET_CASES = [
    QuietFault(Quiet.SKIP, nth=1, stream=0),
    QuietFault(Quiet.UNPARSEABLE, nth=1, stream=0),
    QuietFault(Quiet.NAN, nth=1),
    QuietFault(Quiet.HUGE, nth=1),
    QuietFault(Quiet.NEGATIVE, nth=1),
    QuietFault(Quiet.NOT_BOOL, nth=1),
    QuietFault(Quiet.BACKWARDS, nth=2),
    QuietFault(Quiet.INTERIMS_ONLY, nth=1),
    QuietFault(Quiet.NO_LAST_FINAL),
    QuietFault(Quiet.BAD_AUDIO, nth=1),
    QuietFault(Quiet.DEAF, nth=7),
]


@pytest.mark.parametrize("fault", QUIET_CASES, ids=lambda f: f"{f.kind.value}-{f.stream}")
async def test_quiet_fault_loses_no_word(fault: QuietFault) -> None:
    clock = FakeClock()
    deadline = 1.5 if fault.kind is Quiet.INTERIMS_ONLY else 10.0
    svcs, session = trio(clock, (fault,), final_timeout=deadline)
    speech = UNENDED if fault.kind is Quiet.NO_LAST_FINAL else SPEECH
    run = await drive(clock, session, speech)
    check_coverage(speech, run, IDS)
    assert run.error is None
    assert not session.uncovered
    kinds = run.kinds()
    assert "failover" in kinds
    if fault.kind in (Quiet.SKIP, Quiet.UNPARSEABLE) and fault.stream == 0:
        # a first skip is replayed on a fresh stream of the same, otherwise healthy endpoint
        assert svcs["primary"].streams_started == 2
        assert svcs["backup"].streams_started == 0
        assert "failed" not in kinds
    elif fault.kind in (Quiet.NAN, Quiet.HUGE, Quiet.NEGATIVE, Quiet.NOT_BOOL, Quiet.BACKWARDS):
        failed = next(e for e in run.events if e.kind is RouteEventKind.FAILED)
        assert "MalformedResponse: insane result" in failed.reason
        assert svcs["primary"].streams_started == 1


async def test_interims_never_reset_the_final_deadline() -> None:
    clock = FakeClock()
    svcs, session = trio(clock, (QuietFault(Quiet.INTERIMS_ONLY),), final_timeout=1.0)
    run = await drive(clock, session, SPEECH)
    check_coverage(SPEECH, run, IDS)
    failed = next(e for e in run.events if e.kind is RouteEventKind.FAILED)
    assert "interim results do not count" in failed.reason
    assert all(r.endpoint_id == "backup" for r in run.finals)
    assert svcs["primary"].streams_started == 1


async def test_two_engines_finding_no_words_agree() -> None:
    """Loud sound that is not speech: both engines skip the span; it counts as covered with an
    event, and the stream does not ping-pong."""
    clock = FakeClock()
    deaf = (QuietFault(Quiet.DEAF, nth=7),)
    svcs, session = trio(clock, deaf, deaf)
    run = await drive(clock, session, SPEECH)
    assert run.error is None
    audit = [e for e in run.events if e.kind is RouteEventKind.AUDIT]
    assert len(audit) == 1
    assert "two endpoints found no words" in audit[0].reason
    assert audit[0].interval is not None
    assert audit[0].interval[0] == pytest.approx(0.8)
    assert not session.uncovered
    assert svcs["tertiary"].streams_started == 0
    assert run.kinds().count("failover") == 2  # same endpoint once, then the backup


async def test_a_skip_nobody_can_replay_is_reported() -> None:
    clock = FakeClock()
    only = QuietFake(fake_endpoint("only"), clock=clock)
    only.quiet = (QuietFault(Quiet.DEAF, nth=7),)
    session = RoutedSession([only.endpoint], service_factory=lambda ep: only, clock=clock)
    run = await drive(clock, session, SPEECH)
    assert isinstance(run.error, NoEndpointAvailable)
    assert session.uncovered == [pytest.approx((0.8, 1.8))]
    assert "audit" in run.kinds()
    check_words(SPEECH, run, session.uncovered)


# -- sends ------------------------------------------------------------------------------------
async def test_a_blocked_send_does_not_block_the_caller() -> None:
    clock = FakeClock()
    svcs, session = trio(clock, send_timeout=0.5)
    svcs["primary"].block_sends_after = 1.2
    blocked: list[float] = []

    async def before(i: int, sent: float) -> None:
        blocked.append(clock.now())

    run = await drive(clock, session, SPEECH, before_chunk=before)
    check_coverage(SPEECH, run, IDS)
    steps = [b - a for a, b in itertools.pairwise(blocked)]
    assert max(steps) <= 0.02 + 0.5 + 0.05  # one chunk period plus at most the send deadline
    failed = next(e for e in run.events if e.kind is RouteEventKind.FAILED)
    assert "a send blocked" in failed.reason


async def test_large_chunks_are_split_to_one_second() -> None:
    clock = FakeClock()
    svcs, session = trio(clock)
    run = await drive(clock, session, SPEECH, chunk=1.5)
    check_coverage(SPEECH, run, IDS)
    assert 0 < svcs["primary"].max_send <= 32000


# -- stop -------------------------------------------------------------------------------------
async def test_stop_has_an_overall_deadline_with_every_endpoint_hostile() -> None:
    clock = FakeClock()
    svcs, session = trio(clock, finish_timeout=2.0, stall_timeout=60.0, final_timeout=60.0)
    for s in svcs.values():
        s.faults = FaultPlan.stall_after(0.0)  # never answers, not even at stop
    await tick(clock, session.start_streaming())
    for c in SPEECH.chunks(0.02):
        await tick(clock, session.send_audio(c))
    started = clock.now()
    with pytest.raises(NoEndpointAvailable, match="within 6s") as info:
        await tick(clock, session.stop_streaming())
    assert clock.now() - started <= 6.0 + 0.1
    assert info.value.uncovered is not None
    assert "primary" in str(info.value)
    assert not session.is_streaming
    assert all(not s.is_streaming for s in svcs.values())  # every leg closed


# -- switch-back --------------------------------------------------------------------------------
class Probed(QuietFake):
    probes = 0

    async def probe(self) -> None:
        self.probes += 1
        await super().probe()


async def test_switch_back_probes_first_and_stays_when_the_probe_fails() -> None:
    clock = FakeClock()
    a = Probed(fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(0.9, stream=0))
    b = QuietFake(fake_endpoint("b"), clock=clock)
    by_id = {"a": a, "b": b}
    session = RoutedSession(
        [a.endpoint, b.endpoint],
        service_factory=lambda ep: by_id[ep.id],
        clock=clock,
        config=SessionConfig(retry_failed_after=0.5),
    )
    speech = synthetic_speech((3, 3, 3, 3, 3))

    def before(i: int, sent: float) -> None:
        a.down = 1.0 <= sent < 3.0  # still down at the first boundaries, back later

    run = await drive(clock, session, speech, before_chunk=before)
    check_coverage(speech, run, ("a", "b"))
    assert a.probes >= 2
    failed = [e for e in run.events if e.kind is RouteEventKind.FAILED]
    assert any("probe failed" in e.reason for e in failed)
    assert a.streams_started == 2  # never reconnected while the probe failed
    assert "switched_back" in run.kinds()


# -- reasons ------------------------------------------------------------------------------------
async def test_no_endpoint_names_the_reason_when_the_router_finds_none() -> None:
    registry = EndpointRegistry(
        [
            fake_endpoint("cloud", needs_network=True, supported_languages=["zh"]),
            fake_endpoint("local", supported_languages=["en"]),
        ]
    )
    session = RoutedSession(
        router=Router(registry),
        conditions=Conditions(network=NetworkStatus.DISCONNECTED),
        language="zh",
        service_factory=lambda ep: QuietFake(ep),
    )
    with pytest.raises(NoEndpointAvailable) as info:
        await session.start_streaming()
    message = str(info.value)
    assert "no endpoint of the chain could open" not in message
    assert "local: does not transcribe 'zh'" in message
    assert "cloud: needs the network" in message
    with pytest.raises(NoEndpointAvailable, match="does not transcribe 'zh'"):
        await session.probe()


async def test_no_endpoint_says_every_endpoint_was_skipped() -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    for eid in IDS:
        board.breaker(eid).trip("down for maintenance")
    session = RoutedSession(
        [fake_endpoint(i) for i in IDS],
        service_factory=lambda ep: QuietFake(ep),
        clock=clock,
        breakers=board,
        retry=RetryPolicy(attempts=1),
    )
    with pytest.raises(NoEndpointAvailable, match="every endpoint was skipped") as info:
        await tick(clock, session.start_streaming())
    assert "circuit open" in str(info.value)


# -- hypothesis: random quiet and loud faults against the same invariant ----------------------
quiet_st = st.builds(
    QuietFault,
    kind=st.sampled_from(QUIET_KINDS),
    nth=st.integers(0, 3),
    stream=st.one_of(st.none(), st.integers(0, 1)),
)
loud_st = st.builds(
    Fault,
    kind=st.sampled_from([k for k in FaultKind if k not in QUIET_KINDS]),
    after=st.one_of(st.none(), st.floats(0.0, 4.0).map(lambda x: round(x, 2))),
    seconds=st.sampled_from([0.0, 0.2]),
    stream=st.one_of(st.none(), st.integers(0, 2)),
)
endpoint_st = st.tuples(st.lists(quiet_st, max_size=2), st.lists(loud_st, max_size=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(endpoint_st, min_size=3, max_size=3),
    utterances=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_random_quiet_faults_keep_every_word(
    plans: list[tuple[list[QuietFault], list[Fault]]], utterances: list[int]
) -> None:
    speech = synthetic_speech(utterances, gap_seconds=0.45)

    async def main() -> tuple[Run, RoutedSession]:
        clock = FakeClock()
        svcs = {}
        for eid, (quiet, loud) in zip(IDS, plans, strict=True):
            svc = QuietFake(fake_endpoint(eid), clock=clock, faults=FaultPlan(loud))
            svc.quiet = tuple(quiet)
            svcs[eid] = svc
        session = RoutedSession(
            [s.endpoint for s in svcs.values()],
            service_factory=lambda ep: svcs[ep.id],
            clock=clock,
            retry=RetryPolicy(attempts=2, jitter=0.0),
            config=SessionConfig(stall_timeout=1.0, finish_timeout=2.0, final_timeout=1.5),
        )
        return await drive(clock, session, speech), session

    run, session = asyncio.run(main())
    agreed = [
        e.interval for e in run.events if e.kind is RouteEventKind.AUDIT and e.interval is not None
    ]
    check_words(speech, run, [*session.uncovered, *agreed])
