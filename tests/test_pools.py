"""Endpoint pools: replicas from TOML and code, least-loaded routing, sibling failover."""

from __future__ import annotations

from pathlib import Path

import pytest

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.events import RouteEventKind
from sttrouter.panel import Conditions, EndpointRegistry, Policy, Router, Rule
from sttrouter.panel.pools import PoolLoad, Replica, expand_pool
from sttrouter.resilience import AdmissionController, BreakerBoard, RetryPolicy
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.testing import FakeClock, FakeSTTService, FaultPlan, fake_endpoint, synthetic_speech
from tests.session_kit import check_coverage, drive, tick

POOL_TOML = """
[[endpoint]]
id = "glm"
provider = "glm_server"
location = "self_hosted"
max_concurrent_sessions = 4
replicas = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]

[[endpoint]]
id = "big"
provider = "glm_server"
location = "self_hosted"

[[endpoint.replica]]
url = "http://127.0.0.1:9001"
weight = 2
max_concurrent_sessions = 8

[[endpoint.replica]]
url = "http://127.0.0.1:9002"
id = "big-spare"

[[endpoint]]
id = "deepgram"
provider = "deepgram"
"""


def _load(tmp_path: Path, text: str) -> EndpointRegistry:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return EndpointRegistry.load(path)


def test_replicas_from_toml_are_endpoints_of_their_own(tmp_path: Path) -> None:
    reg = _load(tmp_path, POOL_TOML)
    assert [ep.id for ep in reg] == ["glm#1", "glm#2", "big#1", "big-spare", "deepgram"]
    one, two = reg.pool("glm")
    assert (one.pool, one.connection.base_url, one.max_concurrent_sessions) == (
        "glm",
        "http://127.0.0.1:8001",
        4,
    )
    assert two.connection.base_url == "http://127.0.0.1:8002"
    big, spare = reg.pool("big")
    assert (big.weight, big.max_concurrent_sessions) == (2.0, 8)
    assert (spare.id, spare.weight, spare.max_concurrent_sessions) == ("big-spare", 1.0, None)
    assert reg["deepgram"].pool is None
    # the dump groups replicas back into their pool, and loads to the same endpoints
    again = EndpointRegistry.from_dict(reg.to_dict())
    assert again.endpoints == reg.endpoints
    assert "[[endpoint.replica]]" in reg.dumps()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("replicas = []", "non-empty list"),
        ("replicas = [5]", "must be a URL or a table"),
        ('replicas = ["ftp://x"]', "absolute http"),
        ("[[endpoint.replica]]\nweight = 2", "needs a url"),
        ('[[endpoint.replica]]\nurl = "http://127.0.0.1:1"\nport = 2', "unknown key"),
        ('[[endpoint.replica]]\nurl = "http://127.0.0.1:1"\nweight = "x"', "wrong type"),
        ('replicas = ["http://127.0.0.1:1"]\n[[endpoint.replica]]\nurl = "x"', "either"),
    ],
)
def test_bad_replicas_name_the_problem(tmp_path: Path, text: str, words: str) -> None:
    head = '[[endpoint]]\nid = "glm"\nprovider = "glm_server"\n'
    with pytest.raises(ConfigError, match=words):
        _load(tmp_path, head + text + "\n")


def test_a_pool_and_an_endpoint_cannot_share_an_id() -> None:
    reg = EndpointRegistry([fake_endpoint("glm")])
    with pytest.raises(ConfigError, match="share an id"):
        reg.register_pool(fake_endpoint("glm", cost_per_hour=0), ["http://127.0.0.1:1"])
    reg = EndpointRegistry()
    reg.register_pool(fake_endpoint("glm"), ["http://127.0.0.1:1"])
    with pytest.raises(ConfigError, match="share an id"):
        reg.register(fake_endpoint("glm"))
    with pytest.raises(ConfigError, match="at least one replica"):
        expand_pool(fake_endpoint("x"), [])
    with pytest.raises(ConfigError, match="needs a url"):
        Replica("")


class Load:
    """A load view: streams held per endpoint, and optional latencies."""

    def __init__(self, **held: int) -> None:
        self.held = {k.replace("_", "#"): v for k, v in held.items()}

    def in_use(self, endpoint_id: str) -> int:
        return self.held.get(endpoint_id, 0)


def _pooled(n: int = 3, **kw: object) -> tuple[EndpointRegistry, tuple[STTEndpoint, ...]]:
    reg = EndpointRegistry([fake_endpoint("cloud", cost_per_hour="0.3", expected_latency_ms=5)])
    members = reg.register_pool(
        fake_endpoint("glm", expected_latency_ms=50, **kw),  # type: ignore[arg-type]
        [f"http://127.0.0.1:{8000 + i}" for i in range(n)],
    )
    reg.register(fake_endpoint("backup", expected_latency_ms=500))
    return reg, members


def test_replicas_stand_together_least_loaded_first() -> None:
    reg, _ = _pooled()
    # a policy that names one replica first and the cloud endpoint between the others
    policy = Policy([Rule("r", prefer=["glm#2", "cloud", "glm"])])
    router = Router(reg, policy)
    d = router.decide(Conditions())
    assert d.chain_ids == ("glm#2", "glm#1", "glm#3", "cloud", "backup")
    assert d.load == ()
    d = router.decide(Conditions(), load=Load(glm_2=2, glm_1=1))
    assert d.chain_ids == ("glm#3", "glm#1", "glm#2", "cloud", "backup")
    assert d.load == (("glm#2", 2), ("glm#1", 1), ("glm#3", 0))
    assert [v.rank for v in d.verdicts] == [3, 1, 2, 0, 4]
    assert "pool glm, weight 1, 0 streams" in d.explain()
    assert d.to_dict()["load"] == {"glm#1": 1, "glm#2": 2, "glm#3": 0}
    # the same question with the same load is answered from the memo
    assert router.decide(Conditions(), load=Load(glm_2=2, glm_1=1)) is router.decide(
        Conditions(), load=Load(glm_2=2, glm_1=1)
    )
    # a pool's id is a selector for all of its replicas
    assert Router(reg, Policy([Rule("r", prefer=["glm"])])).decide(Conditions()).chain_ids[:3] == (
        "glm#1",
        "glm#2",
        "glm#3",
    )


def test_ties_go_to_weight_then_recent_latency() -> None:
    reg = EndpointRegistry()
    base = fake_endpoint("glm")
    reg.register_pool(
        base,
        [
            Replica("http://127.0.0.1:1"),
            Replica("http://127.0.0.1:2", weight=3),
            Replica("http://127.0.0.1:3"),
        ],
    )
    router = Router(reg)
    assert router.decide(Conditions(), load=Load()).chain_ids == ("glm#2", "glm#1", "glm#3")
    latency = PoolLoad(Load(glm_2=1), latency={"glm#1": 0.9, "glm#3": 0.2})
    assert router.decide(Conditions(), load=latency).chain_ids == ("glm#3", "glm#1", "glm#2")
    by_call = PoolLoad(Load(), latency=lambda eid: None)
    assert router.decide(Conditions(), load=by_call).chain_ids == ("glm#2", "glm#1", "glm#3")
    assert PoolLoad(Load()).latency("glm#1") is None


def test_an_unavailable_replica_is_skipped_and_its_siblings_serve() -> None:
    reg, _ = _pooled()
    board = BreakerBoard(clock=FakeClock())
    board.breaker("glm#1").trip("down")
    d = Router(reg).decide(Conditions(), health=board, load=Load(glm_2=1))
    assert d.chain_ids[:2] == ("glm#3", "glm#2")
    assert d.skipped() == {"glm#1": d.verdict("glm#1").reason}
    assert "glm#1" not in dict(d.load)


def _factory(clock: FakeClock, faults: dict[str, FaultPlan], built: list[str]) -> object:
    def make(endpoint: STTEndpoint) -> FakeSTTService:
        built.append(endpoint.id)
        return FakeSTTService(endpoint, clock=clock, faults=faults.get(endpoint.id))

    return make


def _session(
    clock: FakeClock,
    reg: EndpointRegistry,
    admission: AdmissionController,
    faults: dict[str, FaultPlan] | None = None,
    built: list[str] | None = None,
) -> RoutedSession:
    return RoutedSession(
        router=Router(reg).bind(load=admission),
        service_factory=_factory(clock, faults or {}, [] if built is None else built),  # type: ignore[arg-type]
        clock=clock,
        admission=admission,
        retry=RetryPolicy(attempts=1),
        config=SessionConfig(),
    )


@pytest.mark.anyio
async def test_new_streams_spread_over_the_replicas() -> None:
    clock = FakeClock()
    reg, _ = _pooled(n=3)
    admission = AdmissionController(clock=clock)
    sessions = [_session(clock, reg, admission) for _ in range(6)]
    for s in sessions:
        await tick(clock, s.start_streaming())
    assert [s.endpoint.id for s in sessions] == ["glm#1", "glm#2", "glm#3"] * 2
    assert [admission.in_use(f"glm#{i}") for i in (1, 2, 3)] == [2, 2, 2]
    for s in sessions[:2]:
        await tick(clock, s.stop_streaming())
    late = _session(clock, reg, admission)
    await tick(clock, late.start_streaming())
    assert late.endpoint.id == "glm#1"  # the replica that two streams just left
    for s in [*sessions[2:], late]:
        await tick(clock, s.stop_streaming())


@pytest.mark.anyio
async def test_a_failed_replica_moves_its_stream_to_a_sibling_without_losing_audio() -> None:
    clock = FakeClock()
    reg, _ = _pooled(n=3)
    admission = AdmissionController(clock=clock)
    built: list[str] = []
    busy = _session(clock, reg, admission)
    await tick(clock, busy.start_streaming())  # glm#1 holds one stream
    session = _session(clock, reg, admission, {"glm#2": FaultPlan.drop_after(2.5)}, built)
    speech = synthetic_speech((3, 3, 3, 3))
    run = await drive(clock, session, speech)
    check_coverage(speech, run, ["glm#2", "glm#3"])
    failover = [e for e in run.events if e.kind is RouteEventKind.FAILOVER]
    assert [(e.previous_endpoint_id, e.endpoint_id) for e in failover] == [("glm#2", "glm#3")]
    # the sibling took it (same engine), never the cloud endpoint or the backup; and the
    # stream stays there at utterance boundaries instead of hopping between replicas
    assert set(built) == {"glm#2", "glm#3"}
    assert RouteEventKind.SWITCHED_BACK not in [e.kind for e in run.events]
    await tick(clock, busy.stop_streaming())


@pytest.mark.anyio
async def test_sessions_of_a_context_spread_over_a_pool() -> None:
    from sttrouter.context import RoutingContext

    clock = FakeClock()
    reg, _ = _pooled(n=2)
    context = RoutingContext(
        reg,
        policy=Policy([Rule("pool-first", prefer=["glm"])]),
        clock=clock,
        service_factory=lambda ep: FakeSTTService(ep, clock=clock),
    )
    first, second = context.session(), context.session()
    await tick(clock, first.start_streaming())
    assert context.decide().chain_ids[:2] == ("glm#2", "glm#1")  # glm#1 holds a stream
    await tick(clock, second.start_streaming())
    assert {first.endpoint.id, second.endpoint.id} == {"glm#1", "glm#2"}
    await tick(clock, first.stop_streaming())
    await tick(clock, second.stop_streaming())
