"""Router.decide: properties over every tier × network × thermal × language and random
registries and policies, checked against a plain reference implementation; reasons; health;
caching; the Decision value."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_panel_registry import registries

from sttrouter.endpoint import ConnectionConfig, STTEndpoint
from sttrouter.panel.device import Conditions, DeviceTier, NetworkStatus, ThermalState
from sttrouter.panel.policy import Policy, Rule, Unlisted, default_policy, tie_break_key
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import Decision, Router, SkipReason

LANGS = [None, "en", "EN-us", "zh", "yue", "de", "ko"]
conditions = st.builds(
    Conditions,
    tier=st.sampled_from(list(DeviceTier)),
    network=st.sampled_from(list(NetworkStatus)),
    thermal=st.sampled_from(list(ThermalState)),
    memory_gb=st.none() | st.floats(0, 16),
)
selectors = st.sampled_from(
    [
        "*",
        "provider:deepgram",
        "provider:offline",
        "location:on_device",
        "location:cloud",
        "glm_server",
        "self_hosted",
        "fake",
        "nothing",
    ]
)
_sets = st.none() | st.frozensets(st.sampled_from(list(DeviceTier)), min_size=1)
rules = st.builds(
    Rule,
    name=st.uuids().map(str),
    tiers=_sets,
    networks=st.none() | st.frozensets(st.sampled_from(list(NetworkStatus)), min_size=1),
    thermals=st.none() | st.frozensets(st.sampled_from(list(ThermalState)), min_size=1),
    prefer=st.lists(selectors, max_size=4).map(tuple),
    exclude=st.lists(selectors, max_size=2).map(tuple),
)
policies = st.one_of(
    st.just(default_policy()),
    st.builds(
        Policy,
        rules=st.lists(rules, max_size=5).map(tuple),
        unlisted=st.sampled_from(list(Unlisted)),
    ),
)
environs = st.sampled_from([{}, {"DEEPGRAM_API_KEY": "k"}, {"X_KEY": "k", "DEEPGRAM_API_KEY": ""}])


class Health:
    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.asked: list[str] = []

    def is_available(self, endpoint_id: str) -> bool:
        self.asked.append(endpoint_id)
        return endpoint_id not in self.down


# --- a plain reference: scan the rules, resolve selectors, filter with every check ---------


def _matches(sel: str, ep: STTEndpoint, eps: Sequence[STTEndpoint]) -> bool:
    if any(e.id == sel for e in eps):
        return ep.id == sel
    if sel == "*":
        return True
    if sel.startswith("provider:"):
        return ep.provider == sel[9:]
    if sel.startswith("location:"):
        return ep.location.value == sel[9:]
    if any(e.provider == sel for e in eps):
        return ep.provider == sel
    return ep.location.value == sel


def reference(
    reg: EndpointRegistry,
    policy: Policy,
    c: Conditions,
    language: str | None,
    streaming: bool,
    health: Health | None,
    env: Mapping[str, str],
) -> tuple[str | None, list[str], dict[str, str]]:
    eps = list(reg)
    idx = {ep.id: i for i, ep in enumerate(eps)}
    rule = next((r for r in policy.rules if r.matches(c.tier, c.network, c.thermal)), None)

    def key(e: STTEndpoint) -> tuple[object, ...]:
        return tie_break_key(e, idx[e.id])

    order: list[STTEndpoint] = []
    for sel in rule.prefer if rule else ():
        for ep in sorted((e for e in eps if _matches(sel, e, eps)), key=key):
            if ep not in order:
                order.append(ep)
    unlisted = sorted((e for e in eps if e not in order), key=key)
    excluded = {
        e.id for sel in (rule.exclude if rule else ()) for e in eps if _matches(sel, e, eps)
    }
    if policy.unlisted is Unlisted.APPEND:
        order += unlisted
    else:
        excluded |= {e.id for e in unlisted}
    offline = sorted((e for e in eps if e.provider == "offline"), key=key)
    order = [e for e in order if e.provider != "offline"] + offline
    chain, why = [], {}
    lang = language.lower() if language else None
    for ep in eps:
        r = None
        if ep.needs_network and c.network is NetworkStatus.DISCONNECTED:
            r = "needs_network"
        elif c.tier.rank < ep.min_tier.rank:
            r = "tier_too_low"
        elif c.thermal.rank > ep.max_thermal.rank:
            r = "too_hot"
        elif ep.id in excluded and ep.provider != "offline":
            r = "not_in_policy"
        elif ep.memory_gb is not None and c.memory_gb is not None and ep.memory_gb > c.memory_gb:
            r = "insufficient_memory"
        elif not ep.supports_language(lang):
            r = "language_unsupported"
        elif streaming and not ep.supports_streaming:
            r = "not_streaming"
        elif not ep.connection.has_api_key(env):
            r = "no_api_key"
        elif health is not None and not health.is_available(ep.id):
            r = "breaker_open"
        if r:
            why[ep.id] = r
    chain = [e.id for e in order if e.id not in why]
    return (rule.name if rule else None), chain, why


@settings(max_examples=200, deadline=None)
@given(
    registries(),
    policies,
    conditions,
    st.sampled_from(LANGS),
    st.booleans(),
    st.none() | st.sets(st.sampled_from(["a", "b", "deepgram", "x"])),
    environs,
)
def test_router_agrees_with_reference_and_keeps_invariants(
    reg: EndpointRegistry,
    policy: Policy,
    c: Conditions,
    language: str | None,
    streaming: bool,
    down: set[str] | None,
    env: dict[str, str],
) -> None:
    health = None if down is None else Health(down)
    router = Router(reg, policy)
    d = router.decide(c, language, streaming, health=health, environ=env)
    rule, chain, why = reference(
        reg, policy, c, language, streaming, None if down is None else Health(down), env
    )
    assert d.rule == rule
    assert list(d.chain_ids) == chain
    assert {k: v.value for k, v in d.skipped().items()} == why

    # never an endpoint whose needs the conditions fail
    for ep in d.chain:
        assert not (ep.needs_network and c.network is NetworkStatus.DISCONNECTED)
        assert c.tier.rank >= ep.min_tier.rank
        assert c.thermal.rank <= ep.max_thermal.rank
        assert ep.supports_language(language)
        assert ep.supports_streaming or not streaming
        assert ep.connection.has_api_key(env)
        assert down is None or ep.id not in down
        assert ep.memory_gb is None or c.memory_gb is None or ep.memory_gb <= c.memory_gb
    # the offline engine is last whenever it is registered and usable
    offline_usable = [e for e in reg if e.provider == "offline" and e.id not in why]
    if offline_usable:
        assert d.chain[-1].provider == "offline"
        n = len(offline_usable)
        assert all(e.provider == "offline" for e in d.chain[-n:])
    # every endpoint has exactly one verdict, in registration order; ranks are 0..n-1
    assert [v.endpoint_id for v in d.verdicts] == [e.id for e in reg]
    ranks = sorted(v.rank for v in d.verdicts if v.rank is not None)
    assert ranks == list(range(len(d.chain)))
    for v in d.verdicts:
        assert (v.rank is None) != (v.reason is None)
        if v.rank is not None:
            assert d.chain[v.rank].id == v.endpoint_id
    # equal inputs, equal decisions: a fresh router, and the same router again
    again = Router(reg, policy).decide(c, language, streaming, health=health, environ=env)
    assert again == d
    assert router.decide(c, language, streaming, health=health, environ=env) == d
    uncached = Router(reg, policy, memoize=False)
    assert uncached.decide(c, language, streaming, health=health, environ=env) == d
    # JSON-serialisable and stable
    assert json.loads(d.to_json()) == d.to_dict()
    assert again.to_json() == d.to_json()


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(list(DeviceTier)),
    st.sampled_from(list(NetworkStatus)),
    st.sampled_from(list(ThermalState)),
    st.sampled_from(LANGS),
)
def test_default_setup_over_every_combination(
    tier: DeviceTier, network: NetworkStatus, thermal: ThermalState, language: str | None
) -> None:
    d = Router(default_registry()).decide(
        Conditions(tier, network, thermal), language, environ={"DEEPGRAM_API_KEY": "k"}
    )
    if network is NetworkStatus.DISCONNECTED:
        assert all(not ep.needs_network for ep in d.chain)
    if thermal in (ThermalState.SERIOUS, ThermalState.CRITICAL):
        assert "glm-local" not in d.chain_ids
    if language in (None, "en", "EN-us"):
        assert d.chain_ids[-1] == "offline"
    # Deepgram (any language, key set) serves whenever the network is up
    if network is not NetworkStatus.DISCONNECTED:
        assert "deepgram" in d.chain_ids


# --- specific reasons --------------------------------------------------------------------


def test_every_reason_with_its_explanation() -> None:
    reg = EndpointRegistry(
        [
            STTEndpoint(id="net", provider="fake"),
            STTEndpoint(id="big", provider="fake", needs_network=False, min_tier="ultra"),
            STTEndpoint(id="warm", provider="fake", needs_network=False, max_thermal="nominal"),
            STTEndpoint(id="mem", provider="fake", needs_network=False, memory_gb=8),
            STTEndpoint(id="zh", provider="fake", needs_network=False, supported_languages=["zh"]),
            STTEndpoint(id="batch", provider="fake", needs_network=False, supports_streaming=False),
            STTEndpoint(
                id="keyed",
                provider="fake",
                needs_network=False,
                connection=ConnectionConfig(api_key_env="K"),
            ),
            STTEndpoint(id="sick", provider="fake", needs_network=False),
            STTEndpoint(id="banned", provider="fake", needs_network=False),
            STTEndpoint(id="ok", provider="fake", needs_network=False),
        ]
    )
    policy = Policy((Rule("r", prefer=("*",), exclude=("banned",)),))
    c = Conditions("pro_max", "disconnected", "fair", memory_gb=4)
    d = Router(reg, policy).decide(c, "en", environ={}, health=Health({"sick"}))
    assert d.chain_ids == ("ok",)
    assert d.skipped() == {
        "net": SkipReason.NEEDS_NETWORK,
        "big": SkipReason.TIER_TOO_LOW,
        "warm": SkipReason.TOO_HOT,
        "mem": SkipReason.INSUFFICIENT_MEMORY,
        "zh": SkipReason.LANGUAGE_UNSUPPORTED,
        "batch": SkipReason.NOT_STREAMING,
        "keyed": SkipReason.NO_API_KEY,
        "sick": SkipReason.BREAKER_OPEN,
        "banned": SkipReason.NOT_IN_POLICY,
    }
    details = {v["endpoint"]: v["detail"] for v in d.to_dict()["verdicts"]}
    assert details["net"] == "needs the network; the device is disconnected"
    assert "ultra" in details["big"]
    assert "pro_max" in details["big"]
    assert "nominal" in details["warm"]
    assert "fair" in details["warm"]
    assert "8 GB" in details["mem"]
    assert "4 GB" in details["mem"]
    assert "'en'" in details["zh"]
    assert "stream" in details["batch"]
    assert "K is not set" in details["keyed"]
    assert "breaker" in details["sick"]
    assert "'r'" in details["banned"]
    assert details["ok"] is None
    assert d.describe("ok") is None
    assert d.describe("net") == details["net"]
    text = d.explain()
    assert "rule: r" in text
    assert "memory=4GB" in text
    assert "language=en" in text
    for eid in details:
        assert eid in text
    # a batch request takes the batch engine
    assert "batch" in Router(reg, policy).decide(c, "en", streaming=False, environ={}).chain_ids


def test_health_is_asked_only_about_otherwise_usable_endpoints() -> None:
    health = Health(set())
    Router(default_registry()).decide(
        Conditions("pro_max", "disconnected", "nominal"), environ={}, health=health
    )
    assert health.asked == ["offline"]


def test_health_changes_change_the_decision() -> None:
    router = Router(default_registry())
    c = Conditions("pro_max", "connected", "nominal")
    env = {"DEEPGRAM_API_KEY": "k"}
    assert router.decide(c, environ=env).chain_ids[0] == "glm-server"
    d = router.decide(c, environ=env, health=Health({"glm-server"}))
    assert d.chain_ids[0] == "deepgram"
    assert d.verdict("glm-server").reason is SkipReason.BREAKER_OPEN
    assert router.decide(c, environ=env, health=Health(set())).chain_ids[0] == "glm-server"


def test_api_keys_come_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(default_registry())
    c = Conditions("unsupported", "connected", "nominal")
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    assert "deepgram" not in router.decide(c).chain_ids
    monkeypatch.setenv("DEEPGRAM_API_KEY", "sk-SECRET")
    d = router.decide(c)
    assert d.chain_ids[0] == "deepgram"
    assert "sk-SECRET" not in d.to_json() + d.explain() + repr(d)


def test_registry_changes_invalidate_the_compiled_state() -> None:
    reg = default_registry()
    router = Router(reg)
    c = Conditions("ultra", "connected", "nominal")
    first = router.decide(c, environ={})
    assert first.chain_ids[0] == "glm-local"
    reg.unregister("glm-local")
    assert router.decide(c, environ={}).chain_ids[0] == "glm-server"
    reg.register(STTEndpoint(id="glm-local-2", provider="glm_local", location="on_device",
                             needs_network=False))  # fmt: skip
    d = router.decide(c, environ={})
    assert d.chain_ids[0] == "glm-local-2"
    assert len(d.verdicts) == len(reg)
    assert router.plan(DeviceTier.ULTRA, NetworkStatus.CONNECTED, ThermalState.NOMINAL)[0] == (
        "ultra-on-device"
    )


def test_memo_is_bounded() -> None:
    router = Router(default_registry())
    for i in range(5000):
        router.decide(Conditions(memory_gb=float(i)), environ={})
    assert len(router._memo) <= 4096
    assert len(router._filters) <= 4096


def test_memo_sees_environment_changes_in_place() -> None:
    router = Router(default_registry())
    c = Conditions("pro_standard", "connected", "nominal")
    env: dict[str, str] = {}
    assert router.decide(c, environ=env).chain_ids[0] == "glm-server"
    env["DEEPGRAM_API_KEY"] = "k"
    assert router.decide(c, environ=env).chain_ids[0] == "deepgram"
    env["DEEPGRAM_API_KEY"] = ""
    assert router.decide(c, environ=env).chain_ids[0] == "glm-server"


def test_empty_registry_and_no_chain() -> None:
    d = Router(EndpointRegistry()).decide(Conditions())
    assert d.chain == ()
    assert d.verdicts == ()
    assert d.primary is None
    assert "no endpoint can serve" in d.explain()
    d = Router(default_registry()).decide(Conditions(network="disconnected"), "zh", environ={})
    assert d.chain == ()
    with pytest.raises(KeyError):
        d.verdict("nope")


def test_decision_value() -> None:
    d = Router(default_registry()).decide(Conditions("ultra"), "EN", environ={})
    assert isinstance(d, Decision)
    assert d.language == "en"
    assert d.streaming
    assert d.primary is not None
    assert d.primary.id == "glm-local"
    data = d.to_dict()
    assert data["conditions"] == {
        "tier": "ultra",
        "network": "connected",
        "thermal": "nominal",
        "memory_gb": None,
    }
    assert data["chain"] == list(d.chain_ids)
    assert data["rule"] == "ultra-on-device"
    assert {v["reason"] for v in data["verdicts"]} == {None, "no_api_key"}
    with pytest.raises(AttributeError):
        d.chain = ()  # type: ignore[misc]


def test_panel_public_names() -> None:
    import sttrouter.panel as panel

    assert sorted(panel.__all__) == sorted(
        [
            "BoundRouter",
            "Budget",
            "BudgetBook",
            "BudgetMeter",
            "BudgetView",
            "InMemorySpend",
            "LoadView",
            "OnExhausted",
            "Period",
            "PoolLoad",
            "Replica",
            "Spend",
            "SpendCounters",
            "Conditions",
            "ConnectionConfig",
            "Decision",
            "DeviceTier",
            "EndpointRegistry",
            "HealthView",
            "HostInfo",
            "Location",
            "NetworkStatus",
            "Policy",
            "Provider",
            "Router",
            "Rule",
            "STTEndpoint",
            "SkipReason",
            "ThermalState",
            "Unlisted",
            "Verdict",
            "default_policy",
            "default_registry",
            "detect_host",
            "host_conditions",
            "tier_for_apple_device",
            "tier_for_memory",
        ]
    )
    for name in panel.__all__:
        assert getattr(panel, name) is not None
