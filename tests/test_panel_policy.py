"""Policy: rules as data, selectors, loading errors, and the default policy pinned for all 48
tier × network × thermal combinations."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.panel.device import Conditions, DeviceTier, NetworkStatus, ThermalState
from sttrouter.panel.policy import (
    ALL_COMBOS,
    DEFAULT_POLICY_TOML,
    Policy,
    Rule,
    Unlisted,
    default_policy,
    resolve_selector,
)
from sttrouter.panel.registry import default_registry
from sttrouter.panel.router import Router

KEYS = {"DEEPGRAM_API_KEY": "x", "ASSEMBLYAI_API_KEY": "y"}

GL, GS, DG, AA, OFF = "glm-local", "glm-server", "deepgram", "assemblyai", "offline"
SERVER_FIRST = (GS, DG, AA, OFF)
DEEPGRAM_FIRST = (DG, GS, AA, OFF)
ON_DEVICE_FIRST = (GL, GS, DG, AA, OFF)

# (tier, network, thermal) -> (rule, chain) with the built-in registry and every key set.
# Seed (§5.3 selectSTTService, first match):
#   (ultra,_,nominal) -> on-device; (ultra,_,serious) -> GLM server;
#   (proMax,connected,_) -> GLM server; (_,disconnected,_) -> Apple speech; default -> Deepgram.
EXPECTED: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {}


def _row(tier: str, network: str, thermal: str, rule: str, chain: tuple[str, ...]) -> None:
    EXPECTED[(tier, network, thermal)] = (rule, chain)


# --- ultra --------------------------------------------------------------------------------
for net in ("connected", "constrained"):
    _row("ultra", net, "nominal", "ultra-on-device", ON_DEVICE_FIRST)  # seed: on-device
    # HOLE 2 fixed: the seed sends ultra+fair to Deepgram (its default case); ultra at fair
    # heat still runs on the device.
    _row("ultra", net, "fair", "ultra-on-device", ON_DEVICE_FIRST)
    _row("ultra", net, "serious", "ultra-hot-server", SERVER_FIRST)  # seed: GLM server
    # HOLE 4 fixed: the seed has no ultra+critical case and falls to Deepgram; critical is
    # treated like serious (the free GLM server first). HOLE 3: no on-device engine when hot.
    _row("ultra", net, "critical", "ultra-hot-server", SERVER_FIRST)
_row("ultra", "disconnected", "nominal", "offline-cool", (GL, OFF))  # seed: on-device
# HOLE 2 fixed: seed sends ultra+disconnected+fair to the offline engine; on-device GLM works.
_row("ultra", "disconnected", "fair", "offline-cool", (GL, OFF))
# HOLE 1 fixed: seed sends ultra+disconnected+serious to the GLM server with no network.
_row("ultra", "disconnected", "serious", "offline-hot", (OFF,))
_row("ultra", "disconnected", "critical", "offline-hot", (OFF,))  # seed: offline

# --- pro_max ------------------------------------------------------------------------------
for th in ("nominal", "fair"):
    _row("pro_max", "connected", th, "pro-max-server", SERVER_FIRST)  # seed: GLM server
for th in ("serious", "critical"):
    _row("pro_max", "connected", th, "pro-max-server-hot", SERVER_FIRST)  # seed: GLM server
for th in ("nominal", "fair"):
    _row("pro_max", "constrained", th, "cloud", DEEPGRAM_FIRST)  # seed: Deepgram
for th in ("serious", "critical"):
    _row("pro_max", "constrained", th, "cloud-hot", DEEPGRAM_FIRST)  # seed: Deepgram

# --- pro_standard and unsupported: no on-device GLM (tier too low) -------------------------
for tier in ("pro_standard", "unsupported"):
    for net in ("connected", "constrained"):
        for th in ("nominal", "fair"):
            _row(tier, net, th, "cloud", DEEPGRAM_FIRST)  # seed: Deepgram
        for th in ("serious", "critical"):
            _row(tier, net, th, "cloud-hot", DEEPGRAM_FIRST)  # seed: Deepgram

# --- disconnected, every other tier: the offline engine only (seed: Apple speech) ---------
for tier in ("pro_max", "pro_standard", "unsupported"):
    for th in ("nominal", "fair"):
        _row(tier, "disconnected", th, "offline-cool", (OFF,))
    for th in ("serious", "critical"):
        _row(tier, "disconnected", th, "offline-hot", (OFF,))


def test_expected_table_covers_all_48_combinations() -> None:
    assert len(EXPECTED) == 48
    assert set(EXPECTED) == {(t.value, n.value, th.value) for t, n, th in ALL_COMBOS}


@pytest.mark.parametrize(("tier", "network", "thermal"), sorted(EXPECTED))
def test_default_policy_table(tier: str, network: str, thermal: str) -> None:
    router = Router(default_registry())
    d = router.decide(Conditions(tier, network, thermal), environ=KEYS)
    rule, chain = EXPECTED[(tier, network, thermal)]
    assert d.rule == rule
    assert d.chain_ids == chain
    # the fixed holes, as invariants over the whole table
    if network == "disconnected":
        assert all(not ep.needs_network for ep in d.chain)  # HOLE 1
    if thermal in ("serious", "critical"):
        assert all(ep.location != "on_device" or ep.provider == "offline" for ep in d.chain)
    if tier == "ultra" and thermal in ("nominal", "fair"):
        assert d.chain_ids[0] == GL  # HOLE 2
    assert d.chain_ids[-1] == OFF  # the offline engine is always last


def test_default_policy_forbids_on_device_when_hot_even_if_endpoint_allows_it() -> None:
    reg = default_registry()
    hot_ok = STTEndpoint(
        id="hot-glm",
        provider="glm_local",
        location="on_device",
        needs_network=False,
        max_thermal="critical",
    )
    reg.register(hot_ok)
    router = Router(reg)
    for tier, net in itertools.product(DeviceTier, NetworkStatus):
        for th in (ThermalState.SERIOUS, ThermalState.CRITICAL):
            d = router.decide(Conditions(tier, net, th), environ=KEYS)
            assert "hot-glm" not in d.chain_ids
            assert d.verdict("hot-glm").reason == "not_in_policy"
    cool = router.decide(Conditions("ultra", "connected", "nominal"), environ=KEYS)
    assert cool.chain_ids[:2] == ("glm-local", "hot-glm")


def test_default_policy_round_trips_through_toml() -> None:
    p = default_policy()
    assert p.name == "default"
    assert len(p.rules) == 8
    again = Policy.from_dict(tomllib.loads(p.dumps()))
    assert again.rules == p.rules
    assert again.unlisted == p.unlisted
    assert tomllib.loads(DEFAULT_POLICY_TOML)["unlisted"] == "append"


# --- selectors ---------------------------------------------------------------------------


def _eps() -> list[STTEndpoint]:
    return [
        STTEndpoint(id="deepgram", provider="fake", cost_per_hour="0.1"),  # id wins over kind
        STTEndpoint(id="dg-2", provider="deepgram", cost_per_hour="0.3"),
        STTEndpoint(id="dg-1", provider="deepgram", cost_per_hour="0.2"),
        STTEndpoint(id="local", provider="glm_local", location="on_device", needs_network=False),
        STTEndpoint(id="cheap-slow", provider="fake", expected_latency_ms=900),
        STTEndpoint(id="cheap-fast", provider="fake", expected_latency_ms=100),
    ]


@pytest.mark.parametrize(
    ("selector", "ids"),
    [
        ("deepgram", ["deepgram"]),  # exact id first
        ("provider:deepgram", ["dg-1", "dg-2"]),  # cheapest first
        ("glm_local", ["local"]),  # plain provider kind
        ("on_device", ["local"]),  # plain location
        ("location:cloud", ["cheap-fast", "cheap-slow", "deepgram", "dg-1", "dg-2"]),
        ("*", ["cheap-fast", "local", "cheap-slow", "deepgram", "dg-1", "dg-2"]),
        ("nothing", []),
        ("provider:assemblyai", []),
    ],
)
def test_resolve_selector(selector: str, ids: list[str]) -> None:
    eps = _eps()
    assert [eps[i].id for i in resolve_selector(selector, eps)] == ids


def test_unlisted_exclude_and_append() -> None:
    from sttrouter.panel.registry import EndpointRegistry

    reg = EndpointRegistry(_eps())
    rules = (Rule("only", prefer=("dg-2",)),)
    d = Router(reg, Policy(rules, unlisted="exclude")).decide(Conditions())
    assert d.chain_ids == ("dg-2",)
    assert d.verdict("dg-1").reason == "not_in_policy"
    d = Router(reg, Policy(rules)).decide(Conditions())
    # the rest appended in tie-break order (cost, latency, reliability, registration)
    assert d.chain_ids == ("dg-2", "cheap-fast", "local", "cheap-slow", "deepgram", "dg-1")
    # no rule matches: everything is unlisted
    nothing = Policy((Rule("never", tiers=["ultra"], prefer=("*",)),), unlisted=Unlisted.EXCLUDE)
    d = Router(reg, nothing).decide(Conditions(tier="pro_max"))
    assert d.rule is None
    assert d.chain == ()


def test_rule_matching_and_to_dict() -> None:
    r = Rule("r", tiers="ultra", networks=["connected"], thermals=None, prefer="x")
    assert r.matches(DeviceTier.ULTRA, NetworkStatus.CONNECTED, ThermalState.CRITICAL)
    assert not r.matches(DeviceTier.PRO_MAX, NetworkStatus.CONNECTED, ThermalState.NOMINAL)
    assert r.to_dict() == {
        "name": "r",
        "tiers": ["ultra"],
        "networks": ["connected"],
        "prefer": ["x"],
    }
    p = Policy((r,))
    assert p.rule_for(DeviceTier.ULTRA, NetworkStatus.CONNECTED, ThermalState.FAIR) is r
    assert sum(v is r for v in p.table().values()) == 4


# --- loading errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("colour = 1\n", "colour", "unknown top-level key"),
        ("rule = 5\n", "rule", "[[rule]]"),
        ("unlisted = 'drop'\n", "unlisted", "append, exclude"),
        ("[[rule]]\nprefer = []\n", "rule[0].name", "needs a name"),
        ("[[rule]]\nname='a'\n[[rule]]\nname='a'\n", "rule 'a'.name", "duplicate"),
        ("[[rule]]\nname='a'\ncolour=1\n", "rule 'a'.colour", "unknown key"),
        ("[[rule]]\nname='a'\ntiers='ultra'\n", "rule 'a'.tiers", "list of strings"),
        ("[[rule]]\nname='a'\ntiers=['mega']\n", "rule 'a'.tiers", "ultra"),
        ("[[rule]]\nname='a'\nnetworks=['wifi']\n", "rule 'a'.networks", "connected"),
        ("[[rule]]\nname='a'\nthermals=['hot']\n", "rule 'a'.thermals", "serious"),
        ("[[rule]]\nname='a'\nprefer=['location:moon']\n", "rule 'a'.prefer", "location"),
        ("[[rule]]\nname='a'\nprefer=['provider:']\n", "rule 'a'.prefer", "empty"),
        ("rule = [5]\n", "rule[0]", "table"),
    ],
)
def test_bad_policy_files(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    assert info.value.source == str(path)
    assert info.value.field == field
    assert words in str(info.value)


def test_policy_load_names_it_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(default_policy().dumps().replace('name = "default"\n', ""))
    assert Policy.load(path).name == "mine.toml"
