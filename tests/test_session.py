"""RoutedSession behaviour: contract, replay/re-basing, switch-back, re-route, admission spill,
breakers, permanent and caller errors, overflow, events."""

from __future__ import annotations

import logging
from decimal import Decimal
from types import SimpleNamespace

import anyio
import pytest
from session_kit import check_coverage, drive, fakes, tick

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import AudioFormatError, ConfigError, NoEndpointAvailable
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.panel.device import Conditions, ThermalState
from sttrouter.resilience import (
    AdmissionController,
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    HealthMonitor,
    RetryPolicy,
)
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.session.leg import stall_timeout_for
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    check_stt_service,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((5, 5, 5))


def pair(
    clock: FakeClock, primary: FaultPlan | None = None, **kw: object
) -> tuple[FakeSTTService, FakeSTTService, RoutedSession]:
    a = FakeSTTService(fake_endpoint("a", cost_per_hour="0.36"), clock=clock, faults=primary)
    b = FakeSTTService(fake_endpoint("b", cost_per_hour="0.26"), clock=clock)
    s = RoutedSession(
        [a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock, **kw
    )  # type: ignore[arg-type]
    return a, b, s


async def test_conformance() -> None:
    speech = synthetic_speech((3, 4))

    def make() -> RoutedSession:
        return RoutedSession(
            [fake_endpoint("one"), fake_endpoint("two")],
            service_factory=lambda ep: FakeSTTService(ep),
        )

    results = await check_stt_service(make, speech.pcm)
    assert " ".join(r.transcript for r in results if r.is_final and r.transcript) == speech.text


async def test_healthy_stream_stays_on_the_primary() -> None:
    clock = FakeClock()
    a, b, s = pair(clock)
    assert s.endpoint.id == "a"
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a",))
    assert run.kinds() == ["selected"]
    assert b.streams_started == 0
    assert bytes(a.received) == SPEECH.pcm


async def test_failover_replays_since_last_final_and_rebases() -> None:
    clock = FakeClock()
    _a, b, s = pair(clock, FaultPlan.drop_after(1.25))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a", "b"))
    assert run.kinds() == ["selected", "failed", "failover"]
    failover = run.events[-1]
    assert failover.previous_endpoint_id == "a"
    assert failover.endpoint_id == "b"
    assert failover.interval == pytest.approx((0.8, 1.26))
    # the backup heard exactly the audio from the last final on, nothing before it
    assert bytes(b.received) == SPEECH.pcm[ENGINE_FORMAT.bytes_for(0.8) :]
    assert [r.endpoint_id for r in run.finals] == ["a", "b", "b", "b"]
    assert s.endpoint.id == "b"
    assert s.metrics.failovers == 1
    usage = s.usage()
    assert usage["a"].failures == 1
    assert usage["b"].replayed_seconds == pytest.approx(0.46)
    assert usage["b"].audio_seconds == pytest.approx(2.2)
    assert s.cost == usage["a"].cost + usage["b"].cost
    assert usage["b"].cost > Decimal(0)


async def test_partials_of_the_failed_endpoint_are_superseded() -> None:
    clock = FakeClock()
    _, _, s = pair(clock, FaultPlan.drop_after(1.25))
    run = await drive(clock, s, SPEECH)
    i = next(i for i, r in enumerate(run.results) if r.endpoint_id == "b")
    # after the switch, nothing from the failed endpoint reaches the caller
    assert all(r.endpoint_id == "b" for r in run.results[i:])
    # and the backup re-announces the interrupted utterance from its start
    assert run.results[i].start == pytest.approx(0.8)


async def test_connect_timeout_fails_over() -> None:
    clock = FakeClock()
    a, _b, s = pair(clock, config=SessionConfig(connect_timeout=2.0))
    a.connect_delay = 10.0
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("b",))
    failed = run.events[0]
    assert failed.kind is RouteEventKind.FAILED
    assert "ConnectTimeout" in failed.reason
    assert run.events[1].kind is RouteEventKind.SELECTED
    assert run.events[1].endpoint_id == "b"


async def test_stall_detected_on_the_clock() -> None:
    clock = FakeClock()
    _a, _b, s = pair(clock, FaultPlan.stall_after(1.25), config=SessionConfig(stall_timeout=0.5))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a", "b"))
    failed = next(e for e in run.events if e.kind is RouteEventKind.FAILED)
    assert "StreamStalled" in failed.reason
    # detected 0.5 s after the first unanswered speech (at 1.26 s), well before the end
    assert failed.audio_time < 1.9


async def test_empty_finals_over_speech_fail_over_and_keep_the_audio() -> None:
    clock = FakeClock()
    _, _, s = pair(clock, FaultPlan.empty_finals_after(0.9))
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a", "b"))
    failed = next(e for e in run.events if e.kind is RouteEventKind.FAILED)
    assert "EmptyTranscripts" in failed.reason


async def test_permanent_error_after_open_trips_breaker_and_never_switches_back() -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    _, _, s = pair(
        clock,
        FaultPlan.auth_error(after=0.3),
        breakers=board,
        config=SessionConfig(retry_failed_after=0.1),
    )
    run = await drive(clock, s, synthetic_speech((3, 3, 3, 3)))
    assert run.error is None
    assert board["a"].state is BreakerState.OPEN
    assert "switched_back" not in run.kinds()
    assert "AuthenticationFailed" in run.events[1].reason


async def test_engine_rejecting_validated_audio_fails_over() -> None:
    """An engine that calls audio bad which the session validated is the engine's failure:
    the backup takes over and nothing is lost; only when the backup rejects the same audio
    too does the caller get AudioFormatError, naming the uncovered span."""

    class Picky(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            await super()._send(pcm)
            if self.stream_seconds >= 0.5:
                raise AudioFormatError("engine rejects this audio")

    clock = FakeClock()
    a = Picky(fake_endpoint("a"), clock=clock)
    b = FakeSTTService(fake_endpoint("b"), clock=clock)
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a", "b"))
    assert run.kinds()[:3] == ["selected", "failed", "failover"]
    assert "AudioFormatError" in run.events[1].reason
    assert s.breakers["a"].state is not BreakerState.OPEN  # one claim does not trip it

    c = Picky(fake_endpoint("c"), clock=clock)
    d = Picky(fake_endpoint("d"), clock=clock)
    s3 = RoutedSession([c.endpoint, d.endpoint], service_factory=fakes(clock, c, d), clock=clock)
    run = await drive(clock, s3, SPEECH)
    assert isinstance(run.error, AudioFormatError)
    assert "c and d both rejected" in run.error.message
    assert run.error.uncovered is not None
    assert run.error.uncovered[0] == pytest.approx(0.0)


async def test_bad_audio_from_the_caller_is_refused_before_any_endpoint() -> None:
    clock = FakeClock()
    _, _b2, s2 = pair(clock)
    await s2.start_streaming()
    with pytest.raises(AudioFormatError):
        await s2.send_audio(b"\x00")
    await s2.send_audio(SPEECH.pcm[:640])
    assert [e.kind.value for e in s2.history] == ["selected"]
    await s2.cancel_streaming()


async def test_every_endpoint_down_names_the_uncovered_interval() -> None:
    clock = FakeClock()
    a = FakeSTTService(fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(1.25))
    b = FakeSTTService(fake_endpoint("b"), clock=clock, faults=FaultPlan.fail_on_connect())
    s = RoutedSession(
        [a.endpoint, b.endpoint],
        service_factory=fakes(clock, a, b),
        clock=clock,
        retry=RetryPolicy(attempts=1),
    )
    run = await drive(clock, s, SPEECH)
    assert isinstance(run.error, NoEndpointAvailable)
    assert run.error.uncovered == pytest.approx((0.8, 1.26))
    assert dict(run.error.attempts)["b"].startswith("connection refused")
    assert "0.800s..1.260s not transcribed" in str(run.error)
    check_coverage(SPEECH, run, ("a", "b"))


async def test_nothing_usable_at_start() -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    board["a"].trip("bad key")
    board["b"].trip("bad key")
    _, _, s = pair(clock, breakers=board)
    with pytest.raises(NoEndpointAvailable, match="circuit open") as info:
        await s.start_streaming()
    assert info.value.uncovered is None
    assert not s.is_streaming


async def test_open_breaker_is_skipped_and_half_open_trial_closes_it() -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(failure_threshold=1, cool_down=10.0), clock=clock)
    board["a"].record_failure("earlier outage")
    a, _b, s = pair(clock, breakers=board)
    run = await drive(clock, s, SPEECH)
    assert run.events[0].endpoint_id == "b"
    assert a.streams_started == 0
    await clock.advance(10.0)
    assert board["a"].state is BreakerState.HALF_OPEN
    run = await drive(clock, s, SPEECH)
    assert run.events[0].endpoint_id == "a"  # the trial
    assert board["a"].state is BreakerState.CLOSED
    check_coverage(SPEECH, run, ("a",))


async def test_switch_back_at_the_next_utterance_boundary() -> None:
    clock = FakeClock()
    a, _b, s = pair(
        clock, FaultPlan.drop_after(1.25, stream=0), config=SessionConfig(retry_failed_after=1.0)
    )
    speech = synthetic_speech((5, 5, 5, 5))
    run = await drive(clock, s, speech)
    check_coverage(speech, run, ("a", "b"))
    assert run.kinds() == ["selected", "failed", "failover", "recovered", "switched_back"]
    back = run.events[-1]
    assert back.previous_endpoint_id == "b"
    assert back.endpoint_id == "a"
    # it moved at a final boundary: the utterance after it is served by the primary
    assert [r.endpoint_id for r in run.finals][-2:] == ["a", "a"]
    assert a.streams_started == 2


async def test_switch_back_attempt_that_fails_stays_put() -> None:
    clock = FakeClock()
    a, _b, s = pair(clock, config=SessionConfig(retry_failed_after=0.5))
    a.faults = FaultPlan.drop_after(1.25, stream=0)
    for n in (1, 2, 3):
        a.faults = a.faults | FaultPlan.fail_on_connect(stream=n)
    speech = synthetic_speech((5, 5, 5, 5))
    run = await drive(clock, s, speech)
    check_coverage(speech, run, ("a", "b"))
    assert "switched_back" not in run.kinds()
    assert run.kinds().count("failed") >= 2
    assert all(r.endpoint_id == "b" for r in run.finals[1:])


class ThermalRouter:
    """A decider: the cloud endpoint first while cool, the on-device one when hot."""

    def __init__(self, cloud: STTEndpoint, local: STTEndpoint) -> None:
        self.cloud, self.local = cloud, local
        self.calls = 0

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: object = None,
    ) -> SimpleNamespace:
        self.calls += 1
        hot = conditions.thermal.rank >= ThermalState.SERIOUS.rank
        return SimpleNamespace(chain=(self.local, self.cloud) if hot else (self.cloud, self.local))


async def test_update_conditions_reroutes_at_the_next_boundary() -> None:
    clock = FakeClock()
    cloud = FakeSTTService(fake_endpoint("cloud"), clock=clock)
    local = FakeSTTService(fake_endpoint("local"), clock=clock)
    router = ThermalRouter(cloud.endpoint, local.endpoint)
    s = RoutedSession(router=router, service_factory=fakes(clock, cloud, local), clock=clock)
    assert s.endpoint.id == "cloud"

    def heat(i: int, sent: float) -> None:
        if i == 60:  # 1.2 s: mid-utterance
            s.update_conditions(Conditions(thermal="serious"))

    run = await drive(clock, s, SPEECH, before_chunk=heat)
    check_coverage(SPEECH, run, ("cloud", "local"))
    assert run.kinds() == ["selected", "rerouted"]
    ev = run.events[1]
    assert ev.endpoint_id == "local"
    assert "thermal serious" in ev.reason
    # the utterance in progress finished on the cloud endpoint, the next ones on-device
    assert [r.endpoint_id for r in run.finals] == ["cloud", "cloud", "local", "local"]
    assert s.conditions.thermal is ThermalState.SERIOUS


async def test_router_with_real_registry() -> None:
    from sttrouter.panel.registry import EndpointRegistry
    from sttrouter.panel.router import Router

    clock = FakeClock()
    eps = [fake_endpoint("x"), fake_endpoint("y")]
    router = Router(EndpointRegistry(eps))
    svcs = {e.id: FakeSTTService(e, clock=clock) for e in eps}
    s = RoutedSession(router=router, service_factory=lambda ep: svcs[ep.id], clock=clock)
    run = await drive(clock, s, SPEECH)
    assert run.error is None
    assert s.chain
    assert {r.endpoint_id for r in run.finals} <= {"x", "y"}


async def test_admission_queue_then_spill_then_switch_back() -> None:
    clock = FakeClock()
    limited = fake_endpoint("glm", max_concurrent_sessions=1)
    glm1 = FakeSTTService(limited, clock=clock)
    glm2 = FakeSTTService(limited, clock=clock)
    cloud = FakeSTTService(fake_endpoint("cloud"), clock=clock)
    adm = AdmissionController(clock=clock, queue_timeout=1.0)
    first = RoutedSession(
        [limited, cloud.endpoint],
        service_factory=fakes(clock, glm1, cloud),
        clock=clock,
        admission=adm,
    )
    second = RoutedSession(
        [limited, cloud.endpoint],
        service_factory=fakes(clock, glm2, cloud),
        clock=clock,
        admission=adm,
    )
    await first.start_streaming()
    assert adm.in_use("glm") == 1
    results = await tick(clock, second.start_streaming())
    kinds = [e.kind.value for e in second.history]
    assert kinds == ["queued", "selected"]
    assert second.endpoint.id == "cloud"
    assert glm2.streams_started == 0
    await first.cancel_streaming()  # frees the slot
    assert adm.in_use("glm") == 0
    collected = []

    async def collect() -> None:
        async for r in results:
            collected.append(r)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        for c in SPEECH.chunks():
            await tick(clock, second.send_audio(c))
            await clock.advance(0.02)
        await tick(clock, second.stop_streaming())
    assert "switched_back" in [e.kind.value for e in second.history]
    assert collected[-1].endpoint_id == "glm"
    assert adm.in_use("glm") == 0  # released at stop


async def test_health_monitor_view_skips_unhealthy() -> None:
    clock = FakeClock()
    mon = HealthMonitor({"a": _never}, clock=clock)
    for _ in range(3):
        mon.observe("a", False, "probe failed")
    a, _b, s = pair(clock, health=mon)
    run = await drive(clock, s, SPEECH)
    assert run.events[0].endpoint_id == "b"
    assert a.streams_started == 0


async def _never() -> None:
    raise OSError("down")


def _overflowing_session(clock: FakeClock, *, strict: bool) -> RoutedSession:
    a = FakeSTTService(
        fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(2.3), endpoint_silence=9.0
    )
    b = FakeSTTService(fake_endpoint("b"), clock=clock)
    return RoutedSession(
        [a.endpoint, b.endpoint],
        service_factory=fakes(clock, a, b),
        clock=clock,
        config=SessionConfig(
            replay_seconds=1.0,
            stall_timeout=60.0,
            final_timeout=60.0,
            raise_on_lost_audio=strict,
        ),
    )


async def test_lost_audio_from_an_overflow_is_raised_at_stop() -> None:
    clock = FakeClock()
    s = _overflowing_session(clock, strict=True)
    run = await drive(clock, s, SPEECH)
    assert isinstance(run.error, NoEndpointAvailable)
    assert run.error.uncovered == pytest.approx((0.0, 1.3))
    assert "replay_seconds" in str(run.error)
    # everything after the lost span was still transcribed before the error
    words = [w.word for r in run.finals for w in r.words]
    assert words == [w for w, start, _ in SPEECH.words if start >= 1.3 - 1e-9]


async def test_overflow_drops_oldest_and_reports_uncovered_on_failover() -> None:
    clock = FakeClock()
    s = _overflowing_session(clock, strict=False)
    run = await drive(clock, s, SPEECH)
    kinds = run.kinds()
    assert kinds[:2] == ["selected", "overflow"]  # one event per episode, not per chunk
    assert kinds.count("overflow") == 2
    lost = run.events[-2]
    assert lost.kind is RouteEventKind.OVERFLOW
    assert lost.interval == pytest.approx((0.0, 1.3))
    assert run.events[-1].kind is RouteEventKind.FAILOVER
    assert s.uncovered == [pytest.approx((0.0, 1.3))]
    assert run.error is None
    words = [w.word for r in run.finals for w in r.words]
    assert words == [w for w, start, _ in SPEECH.words if start >= 1.3 - 1e-9]


async def test_events_iterator_callback_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[RouteEvent] = []
    _, _, s = pair(clock, FaultPlan.drop_after(1.25), on_event=seen.append)
    streamed: list[RouteEvent] = []

    async def listen() -> None:
        async for ev in s.events():
            streamed.append(ev)

    with caplog.at_level(logging.INFO, logger="sttrouter.session"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            run = await drive(clock, s, SPEECH)
    assert streamed == seen == run.events
    assert [e.kind.value for e in seen] == ["selected", "failed", "failover"]
    text = caplog.text
    assert "failover a -> b" in text
    for word, _, _ in SPEECH.words:
        assert f" {word} " not in f" {text} "  # no transcript content in the logs
    d = seen[-1].to_dict()
    assert d["kind"] == "failover"
    assert d["interval"] == pytest.approx([0.8, 1.26])


async def test_listener_errors_do_not_break_the_stream() -> None:
    clock = FakeClock()

    def bad(_: RouteEvent) -> None:
        raise RuntimeError("listener bug")

    _, _, s = pair(clock, on_event=bad)
    run = await drive(clock, s, SPEECH)
    assert run.error is None


def test_configuration_errors() -> None:
    ep = fake_endpoint("a")
    with pytest.raises(ConfigError, match="either a chain"):
        RoutedSession()
    with pytest.raises(ConfigError, match="either a chain"):
        RoutedSession([ep], router=ThermalRouter(ep, ep))
    with pytest.raises(ConfigError, match="at least one"):
        RoutedSession([])
    with pytest.raises(ConfigError, match="router"):
        RoutedSession([ep]).update_conditions(Conditions())
    with pytest.raises(ConfigError, match="replay_seconds"):
        SessionConfig(replay_seconds=0)


async def test_probe_uses_the_first_endpoint() -> None:
    clock = FakeClock()
    a, _, s = pair(clock)
    await s.probe()
    a.down = True
    with pytest.raises(Exception, match="down"):
        await s.probe()
    assert a.streams_started == 0


async def test_a_slow_close_of_the_failed_engine_does_not_delay_failover() -> None:
    class SlowClose(FakeSTTService):
        async def _abort(self) -> None:
            await self.clock.sleep(10.0)  # a dead socket's close handshake timing out

    clock = FakeClock()
    a = SlowClose(fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(1.25))
    b = FakeSTTService(fake_endpoint("b"), clock=clock)
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a", "b"))
    failed, failover = run.events[1], run.events[2]
    assert failover.kind is RouteEventKind.FAILOVER
    assert failover.clock_time - failed.clock_time < 0.05


async def test_per_endpoint_stall_timeout() -> None:
    from sttrouter.endpoint import ConnectionConfig

    clock = FakeClock()
    slow_ep = fake_endpoint("a", connection=ConnectionConfig(options={"stall_timeout": 30.0}))
    a = FakeSTTService(slow_ep, clock=clock, faults=FaultPlan.added_latency(8.0))
    b = FakeSTTService(fake_endpoint("b"), clock=clock)
    s = RoutedSession([slow_ep, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("a",))  # 8 s late is slow, not stalled, for this endpoint
    assert run.kinds() == ["selected"]
    bad = fake_endpoint("c", connection=ConnectionConfig(options={"stall_timeout": "soon"}))
    with pytest.raises(ConfigError, match="stall_timeout"):
        stall_timeout_for(bad, 5.0)
    assert stall_timeout_for(slow_ep, 5.0) == 30.0
    assert stall_timeout_for(b.endpoint, 5.0) == 5.0
