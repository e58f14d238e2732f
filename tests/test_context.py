"""RoutingContext: sessions of one context share breakers, health and admission limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from session_kit import check_coverage, drive, tick

from sttrouter import Conditions, RoutingContext, SessionConfig, SkipReason
from sttrouter.errors import ConfigError
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.panel import EndpointRegistry, Policy, Router
from sttrouter.resilience import BreakerState, HealthConfig, RetryPolicy
from sttrouter.state import InMemoryState
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    fake_endpoint,
    settle,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio


def make_context(
    clock: FakeClock,
    faults: dict[str, FaultPlan] | None = None,
    *,
    limit: int | None = None,
    **kwargs: object,
) -> tuple[RoutingContext, list[FakeSTTService]]:
    """A context over endpoints A (best) and B, with a fresh fake engine per stream."""
    registry = EndpointRegistry(
        [
            fake_endpoint("A", expected_latency_ms=5.0, max_concurrent_sessions=limit),
            fake_endpoint("B", expected_latency_ms=50.0),
        ]
    )
    built: list[FakeSTTService] = []

    def factory(endpoint: object) -> FakeSTTService:
        svc = FakeSTTService(endpoint, clock=clock, faults=(faults or {}).get(endpoint.id))  # type: ignore[arg-type,attr-defined]
        built.append(svc)
        return svc

    context = RoutingContext(
        registry,
        clock=clock,
        service_factory=factory,
        retry=RetryPolicy(attempts=1),
        **kwargs,  # type: ignore[arg-type]
    )
    return context, built


async def test_an_auth_error_in_one_session_makes_the_next_decision_skip_the_endpoint() -> None:
    clock = FakeClock()
    context, _ = make_context(clock, {"A": FaultPlan.auth_error()})
    assert context.decide().chain_ids == ("A", "B")
    speech = synthetic_speech((5, 5))

    first = context.session(Conditions())
    assert first.chain[0].id == "A"
    run = await drive(clock, first, speech)
    check_coverage(speech, run, ["B"])  # the first session fails over to B and loses nothing
    assert "failed" in run.kinds()

    decision = context.decide(Conditions())
    assert decision.chain_ids == ("B",)
    assert decision.skipped() == {"A": SkipReason.BREAKER_OPEN}
    second = context.session(Conditions())
    assert [ep.id for ep in second.chain] == ["B"]  # its own decision skips A too
    run = await drive(clock, second, speech)
    check_coverage(speech, run, ["B"])
    assert {e.endpoint_id for e in run.events if e.kind is RouteEventKind.FAILED} == set()

    # what the state learned, for status pages
    record = context.state.failures.last("A")
    assert record is not None
    assert record.permanent
    assert context.state.failures.unusable().keys() == {"A"}
    assert context.state.snapshot()["A"]["breaker"] == "open"


async def test_sessions_of_one_context_share_the_concurrency_limit_and_spill() -> None:
    clock = FakeClock()
    context, _ = make_context(clock, limit=1)
    first = context.session()
    await tick(clock, first.start_streaming())
    assert first.endpoint.id == "A"
    assert context.state.admission.in_use("A") == 1

    events: list[RouteEvent] = []
    second = context.session(on_event=events.append)
    await tick(clock, second.start_streaming())  # waits in A's queue, then spills to B
    assert second.endpoint.id == "B"
    kinds = [(e.kind, e.endpoint_id) for e in events]
    assert (RouteEventKind.QUEUED, "A") in kinds
    assert kinds[-1] == (RouteEventKind.SELECTED, "B")
    assert context.state.admission.in_use("A") == 1
    await tick(clock, first.stop_streaming())
    await tick(clock, second.stop_streaming())
    assert context.state.admission.in_use("A") == 0


async def test_a_waiting_session_takes_the_slot_when_it_frees() -> None:
    clock = FakeClock()
    heard: list[RouteEvent] = []
    context, _ = make_context(clock, limit=1, on_event=heard.append)
    first = context.session()
    await tick(clock, first.start_streaming())
    mine: list[RouteEvent] = []
    second = context.session(on_event=mine.append)
    waiting = asyncio.ensure_future(second.start_streaming())
    await settle()
    assert not waiting.done()
    assert context.state.admission.waiting("A") == 1
    await tick(clock, first.stop_streaming())
    await tick(clock, waiting)
    assert second.endpoint.id == "A"
    assert RouteEventKind.QUEUED in [e.kind for e in heard]  # the context hears every session
    assert mine == heard[-len(mine) :]  # and the session's own listener its events
    assert [e.kind for e in mine] == [RouteEventKind.QUEUED, RouteEventKind.SELECTED]
    await tick(clock, second.stop_streaming())


async def test_private_sessions_do_not_share_what_contexts_do() -> None:
    clock = FakeClock()
    one, _ = make_context(clock, {"A": FaultPlan.auth_error()})
    other, _ = make_context(clock)
    run = await drive(clock, one.session(), synthetic_speech((5,)))
    assert run.error is None
    assert one.decide().chain_ids == ("B",)
    assert other.decide().chain_ids == ("A", "B")  # another context has its own state


async def test_fixed_chains_by_id_and_config_defaults() -> None:
    clock = FakeClock()
    config = SessionConfig(replay_seconds=5.0)
    context, _ = make_context(clock, session_config=config)
    session = context.session(chain=["B", context.registry["A"]])
    assert [ep.id for ep in session.chain] == ["B", "A"]
    assert session.config is config
    own = SessionConfig(replay_seconds=7.0)
    assert context.session(config=own).config is own
    with pytest.raises(ConfigError, match="not registered"):
        context.session(chain=["nope"])
    run = await drive(clock, session, synthetic_speech((5,)))
    assert {r.endpoint_id for r in run.finals} == {"B"}
    assert context.state.admission.in_use("B") == 0


async def test_routers_policies_and_states() -> None:
    clock = FakeClock()
    registry = EndpointRegistry([fake_endpoint("A"), fake_endpoint("B")])
    router = Router(registry)
    state = InMemoryState(clock=clock)
    context = RoutingContext(router, state=state)
    assert context.router is router
    assert context.registry is registry
    assert context.clock is clock  # taken from the state
    assert context.state is state
    with pytest.raises(ConfigError, match="policy"):
        RoutingContext(router, policy=Policy(rules=()))
    with pytest.raises(ConfigError, match="EndpointRegistry or a Router"):
        RoutingContext([fake_endpoint("A")])  # type: ignore[arg-type]
    assert "RoutingContext" in repr(context)
    async with context as entered:
        assert entered is context


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    EndpointRegistry([fake_endpoint("A"), fake_endpoint("B", expected_latency_ms=99.0)]).dump(path)
    context = RoutingContext.from_toml(path)
    assert isinstance(context.state, InMemoryState)
    assert context.decide(language="en").chain_ids == ("A", "B")
    policy = tmp_path / "policy.toml"
    policy.write_text('unlisted = "exclude"\n[[rule]]\nname = "only-b"\nprefer = ["B"]\n')
    for given in (policy, Policy.load(policy)):
        only_b = RoutingContext.from_toml(path, policy=given)
        decision = only_b.decide()
        assert decision.chain_ids == ("B",)
        assert decision.skipped() == {"A": SkipReason.NOT_IN_POLICY}


async def test_monitor_adds_a_shared_health_view() -> None:
    clock = FakeClock()
    down: set[str] = set()

    def factory(endpoint: object) -> FakeSTTService:
        svc = FakeSTTService(endpoint, clock=clock)  # type: ignore[arg-type]
        svc.down = svc.endpoint.id in down
        return svc

    registry = EndpointRegistry([fake_endpoint("A"), fake_endpoint("B")])
    context = RoutingContext(registry, clock=clock, service_factory=factory)
    monitor = context.monitor(HealthConfig(unhealthy_after=1))
    down.add("A")
    await monitor.check_all()
    decision = context.decide()
    assert decision.chain_ids == ("B",)
    assert decision.skipped() == {"A": SkipReason.BREAKER_OPEN}
    assert [ep.id for ep in context.session().chain] == ["B"]
    assert context.state.breakers.states() == {}  # health, not the breaker, said no
    down.clear()
    await monitor.check_all()
    await monitor.check_all()
    assert context.decide().chain_ids == ("A", "B")


def test_default_service_factory_builds_the_real_engine_on_the_context_clock() -> None:
    pytest.importorskip("pocketsphinx")
    from sttrouter.providers.offline import offline_endpoint

    clock = FakeClock()
    context = RoutingContext(EndpointRegistry([offline_endpoint()]), clock=clock)
    service = context.service_factory(offline_endpoint())
    assert service.endpoint.id == "offline"
    assert service.clock is clock  # type: ignore[attr-defined]
    assert context.state.breakers.breaker("offline").state is BreakerState.CLOSED
