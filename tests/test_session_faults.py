"""The fault matrix: every fault kind x position; the finals cover all audio exactly once, or
NoEndpointAvailable names the uncovered interval. Hypothesis drives random plans too."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_kit import Run, check_coverage, drive

from sttrouter.errors import AudioFormatError, NoEndpointAvailable
from sttrouter.resilience import RetryPolicy
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.testing import (
    FINAL_FAULTS,
    FakeClock,
    FakeSTTService,
    Fault,
    FaultKind,
    FaultPlan,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((5, 5, 5))  # utterances 0-0.5, 1.0-1.5, 2.0-2.5; finals at .8/1.8/2.8
IDS = ("primary", "backup", "tertiary")
KINDS = [*(k for k in FaultKind if k not in FINAL_FAULTS), "kill"]  # loud: at a time
POSITIONS = ["at_connect", "mid_utterance", "between_utterances", "during_replay", "all_down"]
AT = {"mid_utterance": 1.25, "between_utterances": 1.9}


class Killable(FakeSTTService):
    """A fake engine that dies (``kill()``) once it has received ``kill_after`` seconds."""

    kill_after: float | None = None

    async def _send(self, pcm: bytes) -> None:
        await super()._send(pcm)
        if self.kill_after is not None and self.stream_seconds >= self.kill_after:
            self.kill()


def plan(kind: FaultKind, after: float | None, stream: int | None = None) -> FaultPlan:
    if kind is FaultKind.LATENCY:
        return FaultPlan((Fault(kind, after=after, seconds=0.3, stream=stream),))
    if kind is FaultKind.CONNECT_FAIL:
        after = None  # a connect failure happens at connect
    return FaultPlan((Fault(kind, after=after, stream=stream),))


def build(kind: str, position: str, clock: FakeClock) -> dict[str, Killable]:
    """Fault plans per endpoint for one cell of the matrix."""
    svcs = {i: Killable(fake_endpoint(i), clock=clock) for i in IDS}
    primary, backup = svcs["primary"], svcs["backup"]
    if position == "all_down":
        targets, after = list(svcs.values()), 0.3
    elif position == "during_replay":
        primary.faults = FaultPlan.drop_after(1.25)  # the buffer then holds 0.8..1.26
        targets, after = [backup], 0.2  # the backup fails while replaying it
    else:
        targets, after = [primary], AT.get(position)
    for svc in targets:
        if kind == "kill":
            svc.kill_after = after if after is not None else 0.0
        else:
            svc.faults = svc.faults | plan(FaultKind(kind), after)
    return svcs


async def run_cell(kind: str, position: str) -> tuple[Run, dict[str, Killable]]:
    clock = FakeClock()
    svcs = build(kind, position, clock)
    session = RoutedSession(
        [s.endpoint for s in svcs.values()],
        service_factory=lambda ep: svcs[ep.id],
        clock=clock,
        retry=RetryPolicy(attempts=2, jitter=0.0),
    )
    run = await drive(clock, session, SPEECH)
    return run, svcs


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", KINDS)
async def test_fault_matrix(kind: str, position: str) -> None:
    run, svcs = await run_cell(kind, position)
    check_coverage(SPEECH, run, IDS)
    harmless = kind == FaultKind.LATENCY.value
    if position == "all_down" and kind == FaultKind.BAD_AUDIO.value:
        # two engines reject the same audio the session validated: the caller's to fix
        assert isinstance(run.error, AudioFormatError)
        assert "both rejected the audio" in str(run.error)
        assert run.error.uncovered is not None
        return
    if position == "all_down" and not harmless:
        # nobody gets past 0.3 s of audio: the caller is told what was not transcribed
        assert isinstance(run.error, NoEndpointAvailable)
        assert "primary" in str(run.error)
        assert "backup" in str(run.error)
        if kind in ("connect_fail", "auth", "quota", "rate_limit") and run.error.uncovered is None:
            assert not run.finals  # failed before any audio
        else:
            assert run.error.uncovered is not None
            assert run.error.uncovered[0] == pytest.approx(0.0)
        return
    assert run.error is None, run.error
    if harmless:  # latency alone is not a failure (only the scripted primary drop fails over)
        assert run.kinds().count("failover") == (1 if position == "during_replay" else 0)
        return
    assert "failed" in run.kinds()
    if kind in ("auth", "quota"):
        failed = next(e for e in run.events if e.kind.value == "failed")
        assert "unusable" not in failed.reason  # the event names the error itself
    if position != "during_replay":
        assert svcs["tertiary"].streams_started == 0  # the backup alone took over
        assert any(r.endpoint_id == "backup" for r in run.finals)
    else:
        assert run.kinds().count("failed") >= 2
        assert any(r.endpoint_id == "tertiary" for r in run.finals)


def test_matrix_is_complete() -> None:
    assert len(KINDS) == len(FaultKind) - len(FINAL_FAULTS) + 1 == 15
    assert len(POSITIONS) == 5


# -- hypothesis: random fault plans against the same invariant ------------------------------
fault_st = st.builds(
    Fault,
    kind=st.sampled_from(KINDS[:-1]),  # the quiet kinds: test_session_audit
    after=st.one_of(st.none(), st.floats(0.0, 4.0).map(lambda x: round(x, 2))),
    seconds=st.sampled_from([0.0, 0.2, 0.6]),
    stream=st.one_of(st.none(), st.integers(0, 2)),
)
plans_st = st.lists(st.lists(fault_st, max_size=2), min_size=3, max_size=3)
speech_st = st.lists(st.integers(1, 5), min_size=1, max_size=4)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans=plans_st, utterances=speech_st, kill_at=st.one_of(st.none(), st.floats(0.0, 3.0)))
def test_random_fault_plans_keep_the_invariant(
    plans: list[list[Fault]], utterances: list[int], kill_at: float | None
) -> None:
    speech = synthetic_speech(utterances, gap_seconds=0.45)

    async def main() -> Run:
        clock = FakeClock()
        svcs = {
            eid: Killable(fake_endpoint(eid), clock=clock, faults=FaultPlan(p))
            for eid, p in zip(IDS, plans, strict=True)
        }
        if kill_at is not None:
            svcs["primary"].kill_after = kill_at
        session = RoutedSession(
            [s.endpoint for s in svcs.values()],
            service_factory=lambda ep: svcs[ep.id],
            clock=clock,
            retry=RetryPolicy(attempts=2, jitter=0.0),
            config=SessionConfig(stall_timeout=1.0, finish_timeout=2.0),
        )
        return await drive(clock, session, speech)

    run = asyncio.run(main())
    check_coverage(speech, run, IDS)
