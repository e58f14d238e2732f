"""Hedged streams: a slow endpoint gets a second one beside it; the first final per utterance
wins; no final is duplicated or lost; hedged audio stays within the cost cap."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_kit import check_coverage, check_words, drive, fakes

from sttrouter.events import RouteEventKind
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.session.hedge import HedgeConfig, HedgeGate, HedgeStats
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    Fault,
    FaultKind,
    FaultPlan,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((5, 5, 5, 5, 5, 5, 5, 5))


def slow(seconds: float, *, stream: int | None = None, after: float | None = None) -> FaultPlan:
    return FaultPlan([Fault(FaultKind.LATENCY, after=after, seconds=seconds, stream=stream)])


def engines(clock: FakeClock, *latencies: FaultPlan | None, languages: tuple[str, ...] = ()):
    services = [
        FakeSTTService(fake_endpoint(name, supported_languages=languages), clock=clock, faults=plan)
        for name, plan in zip("abc", latencies, strict=False)
    ]
    return services, fakes(clock, *services)


def session(clock: FakeClock, services, factory, hedge: HedgeConfig | None) -> RoutedSession:
    return RoutedSession(
        [s.endpoint for s in services],
        service_factory=factory,
        clock=clock,
        config=SessionConfig(hedge=hedge),
    )


def kinds(run) -> list[str]:
    return [k for k in run.kinds() if k.startswith("hedge")]


def billed_twice(s: RoutedSession, speech=SPEECH) -> float:
    """Seconds of audio billed beyond the audio spoken."""
    return sum(u.audio_seconds for u in s.usage().values()) - speech.duration


async def test_a_slow_endpoint_is_hedged_and_the_hedge_wins() -> None:
    clock = FakeClock()
    services, factory = engines(clock, slow(3.0, after=2.0), None)
    s = session(clock, services, factory, HedgeConfig(after=0.5, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert kinds(run) == ["hedge_opened", "hedge_won"]
    opened = next(e for e in run.events if e.kind is RouteEventKind.HEDGE_OPENED)
    assert (opened.endpoint_id, opened.previous_endpoint_id) == ("b", "a")
    assert "no result from a" in opened.reason
    # b serves from the win on: a beat endpoint is held off (hold_after_win, 30 s)
    owners = [r.endpoint_id for r in run.finals]
    assert owners[:2] == ["a", "a"]
    assert set(owners[2:]) == {"b"}
    assert "switched_back" not in run.kinds()
    usage = s.usage()
    # the audio billed twice is exactly what the hedge was sent while both legs ran
    assert billed_twice(s) == pytest.approx(usage["b"].hedged_seconds)
    assert usage["b"].hedged_seconds > 0
    assert usage["a"].hedged_seconds == 0
    assert usage["b"].hedged_seconds < usage["b"].audio_seconds


@pytest.mark.parametrize(("hold", "back_after"), [(0.0, 4), (3.0, 7)])
async def test_a_beaten_endpoint_takes_the_stream_back_once_its_hold_is_over(
    hold: float, back_after: int
) -> None:
    clock = FakeClock()
    services, factory = engines(clock, slow(3.0, after=2.0, stream=0), None)
    config = HedgeConfig(after=0.5, max_share=1.0, hold_after_win=hold)
    run = await drive(clock, session(clock, services, factory, config), SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert run.kinds()[-1] == "switched_back"
    won = next(e for e in run.events if e.kind is RouteEventKind.HEDGE_WON)
    back = next(e for e in run.events if e.kind is RouteEventKind.SWITCHED_BACK)
    assert back.clock_time >= won.clock_time + hold
    owners = [r.endpoint_id for r in run.finals]
    assert owners[back_after - 1 :] == ["b"] + ["a"] * (len(owners) - back_after)


async def test_a_failover_to_the_hedge_is_not_held() -> None:
    clock = FakeClock()
    plan = FaultPlan(
        [
            Fault(FaultKind.LATENCY, after=2.0, seconds=3.0, stream=0),
            Fault(FaultKind.DROP, after=2.6, stream=0),
        ]
    )
    services, factory = engines(clock, plan, None)
    config = HedgeConfig(after=0.5, max_share=1.0, hold_after_win=1000.0)
    s = RoutedSession(
        [x.endpoint for x in services],
        service_factory=factory,
        clock=clock,
        config=SessionConfig(hedge=config, retry_failed_after=1.0),
    )
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert "the first endpoint failed" in run.events[run.kinds().index("hedge_won")].reason
    assert "switched_back" in run.kinds()  # the failed endpoint is back once usable


async def test_the_first_endpoint_wins_and_the_hedge_is_cancelled() -> None:
    clock = FakeClock()
    # a answers after 0.6 s: late enough to be hedged, but b is slower still
    services, factory = engines(clock, slow(0.6), slow(2.5))
    s = session(clock, services, factory, HedgeConfig(after=0.3, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert "hedge_cancelled" in kinds(run)
    assert "hedge_won" not in kinds(run)
    assert all(r.endpoint_id == "a" for r in run.finals)
    cancelled = next(e for e in run.events if e.kind is RouteEventKind.HEDGE_CANCELLED)
    assert "final of a came first" in cancelled.reason


async def test_without_a_hedge_config_nothing_is_hedged() -> None:
    clock = FakeClock()
    services, factory = engines(clock, slow(3.0, after=2.0), None)
    run = await drive(clock, session(clock, services, factory, None), SPEECH)
    check_coverage(SPEECH, run)
    assert kinds(run) == []
    assert services[1].streams_started == 0


async def test_the_cost_cap_refuses_a_hedge() -> None:
    clock = FakeClock()
    services, factory = engines(clock, slow(3.0, after=2.0), None)
    s = session(clock, services, factory, HedgeConfig(after=0.5, max_share=0.01))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run)
    assert kinds(run)[0] == "hedge_cancelled"
    assert "cost cap" in run.events[-1].reason or any("cost cap" in e.reason for e in run.events)
    assert services[1].streams_started == 0
    assert s.usage()["a"].hedged_seconds == 0


async def test_a_hedge_never_crosses_language_capability() -> None:
    clock = FakeClock()
    a = FakeSTTService(
        fake_endpoint("a", supported_languages=("en",)), clock=clock, faults=slow(3.0, after=2.0)
    )
    b = FakeSTTService(fake_endpoint("b", supported_languages=("de",)), clock=clock)
    c = FakeSTTService(fake_endpoint("c", supported_languages=("en",)), clock=clock)
    s = session(clock, [a, b, c], fakes(clock, a, b, c), HedgeConfig(after=0.5, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run)
    assert b.streams_started == 0
    assert c.streams_started >= 1
    assert "hedge_opened" in kinds(run)


async def test_the_first_endpoint_failing_hands_the_stream_to_the_hedge() -> None:
    clock = FakeClock()
    plan = FaultPlan(
        [
            Fault(FaultKind.LATENCY, after=2.0, seconds=3.0),
            Fault(FaultKind.DROP, after=2.6, stream=0),
        ]
    )
    services, factory = engines(clock, plan, None)
    s = session(clock, services, factory, HedgeConfig(after=0.5, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    won = next(e for e in run.events if e.kind is RouteEventKind.HEDGE_WON)
    assert "the first endpoint failed" in won.reason
    assert "failover" not in run.kinds()  # b had the audio already: nothing to replay


async def test_the_threshold_learns_the_observed_percentile() -> None:
    stats = HedgeStats()
    gate = HedgeGate(HedgeConfig(min_samples=5, initial_after=2.0, stats=stats))
    ep = fake_endpoint("a")
    assert gate.threshold(ep) == 2.0
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        stats.observe("a", t)
    assert gate.threshold(ep) == 1.0  # nearest-rank p95 of ten samples
    assert HedgeGate(HedgeConfig(percentile=50, min_samples=5, stats=stats)).threshold(ep) == 0.5


async def test_p95_mode_hedges_a_slow_utterance() -> None:
    clock = FakeClock()
    services, factory = engines(clock, slow(3.0, after=6.0), None)
    s = session(clock, services, factory, HedgeConfig(min_samples=5, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert "hedge_opened" in kinds(run)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    faults=st.lists(
        st.tuples(
            st.sampled_from(
                [FaultKind.LATENCY, FaultKind.DROP, FaultKind.STALL, FaultKind.EMPTY_FINALS]
            ),
            st.floats(0.0, 5.0),
            st.floats(0.0, 4.0),
            st.sampled_from([None, 0, 1]),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=4,
    ),
    share=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    after=st.sampled_from([0.2, 0.5, 1.0]),
)
def test_the_cost_cap_holds_under_random_faults(faults, share, after) -> None:
    import anyio

    async def main() -> None:
        clock = FakeClock()
        plans = {n: [] for n in "abc"}
        for kind, at, seconds, stream, name in faults:
            plans[name].append(Fault(kind, after=at, seconds=seconds, stream=stream))
        services, factory = engines(clock, *(FaultPlan(plans[n]) for n in "abc"))
        s = session(clock, services, factory, HedgeConfig(after=after, max_share=share))
        run = await drive(clock, s, SPEECH)
        check_words(SPEECH, run, s.uncovered)
        usage = s.usage()
        hedged = sum(u.hedged_seconds for u in usage.values())
        assert hedged <= share * SPEECH.duration + 1e-9
        assert s.config.hedge is not None
        stats = s.config.hedge.stats
        assert stats.hedged_bytes <= share * stats.total_bytes

    anyio.run(main)


async def test_stop_streaming_does_not_wait_for_a_slow_first_endpoint() -> None:
    clock = FakeClock()
    # a turns slow (4 s) for the last utterance; the hedge opens, and its last final (0.4 s
    # late) comes after stop_streaming was called
    services, factory = engines(clock, slow(4.0, after=7.0), slow(0.4))
    s = session(clock, services, factory, HedgeConfig(after=0.3, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert kinds(run) == ["hedge_opened", "hedge_won"]
    assert run.events[-1].reason == "it delivered the last finals first"
    assert run.finals[-1].endpoint_id == "b"
    assert clock.now() < SPEECH.duration + 4.0  # a's last final was not waited for
    assert not any(leg_open for leg_open in (services[0].is_streaming, services[1].is_streaming))
    assert billed_twice(s) == pytest.approx(s.usage()["b"].hedged_seconds)


async def test_stop_streaming_with_a_hedge_lets_the_faster_first_endpoint_finish() -> None:
    clock = FakeClock()
    # b is slower still: a's last finals come first and the hedge is cancelled at the end
    services, factory = engines(clock, slow(0.6, after=7.0), slow(3.0))
    s = session(clock, services, factory, HedgeConfig(after=0.3, max_share=1.0))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, chain=("a", "b"))
    assert kinds(run)[0] == "hedge_opened"
    assert run.events[-1].kind is RouteEventKind.HEDGE_CANCELLED
    assert run.events[-1].reason == "the stream ended"
    assert all(r.endpoint_id == "a" for r in run.finals)
    assert billed_twice(s) == pytest.approx(s.usage()["b"].hedged_seconds)
