"""RoutedSession and the stream contract: per-stream options carried to every leg, finalize
forwarded (and re-applied after a failover), metrics priced by the usage ledger, format
checks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from session_kit import check_coverage, drive, fakes, tick

from sttrouter.audio import AudioFormat
from sttrouter.errors import AudioFormatError, NoEndpointAvailable
from sttrouter.events import RouteEventKind
from sttrouter.metrics import cost_for
from sttrouter.options import StreamOptions
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.panel.router import Router
from sttrouter.resilience import BreakerBoard, BreakerState
from sttrouter.session import RoutedSession, StreamState
from sttrouter.testing import FakeClock, FakeSTTService, FaultPlan, fake_endpoint, synthetic_speech

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((5, 5, 5))
KEYWORDS = StreamOptions(keywords=["sttrouter"])


class Recording(FakeSTTService):
    """A fake engine that records the options of its streams and when finalize came."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.opened_with: list[StreamOptions] = []
        self.finalized_at: list[int] = []  # bytes received when finalize came

    async def _open(self) -> None:
        self.opened_with.append(self.stream_options)
        await super()._open()

    async def _finalize(self) -> None:
        self.finalized_at.append(len(self.received))
        await super()._finalize()


# -- per-stream options ---------------------------------------------------------------------
async def test_an_endpoint_that_refuses_the_options_is_skipped_without_blame() -> None:
    clock = FakeClock()
    plain = FakeSTTService(fake_endpoint("plain"), clock=clock, supported_options=())
    keen = Recording(fake_endpoint("keen"), clock=clock)
    board = BreakerBoard(clock=clock)
    s = RoutedSession(
        [plain.endpoint, keen.endpoint],
        service_factory=fakes(clock, plain, keen),
        clock=clock,
        breakers=board,
    )
    run = await drive(clock, s, SPEECH, options=KEYWORDS)
    check_coverage(SPEECH, run, ("keen",))
    assert keen.opened_with == [KEYWORDS]
    assert plain.streams_started == 0
    assert board["plain"].state is BreakerState.CLOSED  # not the endpoint's fault
    assert "failed" not in run.kinds()
    assert s.usage()["keen"].failures == 0
    # the next stream without options may use it again
    run = await drive(clock, s, SPEECH)
    check_coverage(SPEECH, run, ("plain",))


async def test_no_endpoint_honours_the_options() -> None:
    clock = FakeClock()
    a = FakeSTTService(fake_endpoint("a"), clock=clock, supported_options=())
    b = FakeSTTService(fake_endpoint("b"), clock=clock, supported_options=("language",))
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    with pytest.raises(NoEndpointAvailable, match="keywords") as info:
        await s.start_streaming(options=KEYWORDS)
    assert info.value.uncovered is None
    assert {eid for eid, _ in info.value.attempts} == {"a", "b"}
    assert not s.is_streaming


async def test_options_are_carried_across_failover() -> None:
    clock = FakeClock()
    a = Recording(fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(1.25))
    b = Recording(fake_endpoint("b"), clock=clock)
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    run = await drive(clock, s, SPEECH, options=KEYWORDS)
    check_coverage(SPEECH, run, ("a", "b"))
    assert "failover" in run.kinds()
    assert a.opened_with == [KEYWORDS]
    assert b.opened_with == [KEYWORDS]
    assert s.stream_options == StreamOptions()  # the stream is over


# -- finalize -------------------------------------------------------------------------------
async def test_finalize_goes_to_the_live_leg_and_is_a_no_op_when_idle() -> None:
    clock = FakeClock()
    a = Recording(fake_endpoint("a"), clock=clock)
    b = Recording(fake_endpoint("b"), clock=clock)
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    await s.finalize()  # nothing open: nothing happens

    async def force(i: int, sent: float) -> None:
        if i == 30:
            await s.finalize()

    run = await drive(clock, s, SPEECH, before_chunk=force)
    check_coverage(SPEECH, run, ("a",))
    assert a.finalized_at == [30 * 640]
    assert b.finalized_at == []


async def test_finalize_during_a_failover_reaches_the_new_leg_after_replay() -> None:
    clock = FakeClock()
    a = Recording(fake_endpoint("a"), clock=clock, faults=FaultPlan.drop_after(1.25))
    b = Recording(fake_endpoint("b"), clock=clock, connect_delay=0.5)
    s = RoutedSession([a.endpoint, b.endpoint], service_factory=fakes(clock, a, b), clock=clock)
    states: list[StreamState] = []

    async def force(i: int, sent: float) -> None:
        if i == 66:
            states.append(s.stream_state)
            await s.finalize()

    run = await drive(clock, s, SPEECH, before_chunk=force)
    check_coverage(SPEECH, run, ("a", "b"))
    assert states == [StreamState.MOVING]
    assert a.finalized_at == []
    assert len(b.finalized_at) == 1
    failover = next(e for e in run.events if e.kind is RouteEventKind.FAILOVER)
    assert failover.interval is not None
    replayed = round((failover.interval[1] - failover.interval[0]) * 32000)
    assert b.finalized_at[0] >= replayed  # after the replay, never before


# -- cost comes from the usage ledger -------------------------------------------------------
def priced() -> tuple[FakeClock, Recording, Recording]:
    clock = FakeClock()
    a = Recording(fake_endpoint("a", cost_per_hour="3.20"), clock=clock)
    b = Recording(fake_endpoint("b", cost_per_hour="1.00"), clock=clock)
    return clock, a, b


@pytest.mark.parametrize("failover", [False, True])
@pytest.mark.parametrize("mode", ["chain", "router"])
async def test_metrics_cost_is_the_ledger_cost(mode: str, failover: bool) -> None:
    clock, a, b = priced()
    factory = fakes(clock, a, b)
    if mode == "chain":
        s = RoutedSession([a.endpoint, b.endpoint], service_factory=factory, clock=clock)
    else:
        router = Router(EndpointRegistry([a.endpoint, b.endpoint]))
        s = RoutedSession(router=router, service_factory=factory, clock=clock)
    first = a if s.chain[0].id == "a" else b
    if failover:
        first.faults = FaultPlan.drop_after(1.25)
    run = await drive(clock, s, SPEECH)
    assert run.error is None
    assert ("failover" in run.kinds()) is failover
    usage = s.usage()
    assert s.metrics.cost == s.cost
    assert s.cost > 0
    assert s.cost == sum((u.cost for u in usage.values()), Decimal(0))
    assert s.metrics.to_dict()["cost"] == str(s.cost)
    # every endpoint's audio is billed at its own price
    assert s.cost == sum(
        (
            cost_for(ep.cost_per_hour, usage[ep.id].audio_seconds)
            for ep in s.chain
            if ep.id in usage
        ),
        Decimal(0),
    )
    assert len(usage) == (2 if failover else 1)


# -- format checks --------------------------------------------------------------------------
async def test_a_string_instead_of_an_audio_format_is_a_clear_error() -> None:
    clock = FakeClock()
    a = FakeSTTService(fake_endpoint("a"), clock=clock)
    s = RoutedSession([a.endpoint], service_factory=fakes(clock, a), clock=clock)
    with pytest.raises(AudioFormatError, match="AudioFormat"):
        await s.start_streaming("16k")  # type: ignore[arg-type]
    assert not s.is_streaming
    results = await tick(clock, s.start_streaming(AudioFormat(sample_rate=8000)))
    await s.send_audio(b"\x00\x00" * 160)
    await tick(clock, s.stop_streaming())
    assert all([r.endpoint_id == "a" async for r in results])
    assert len(a.received) == 640  # 20 ms at 8 kHz became 20 ms at 16 kHz
