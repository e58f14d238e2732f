"""Traces: parsing (times, conditions, faults), validation errors, intervals and the decision
timeline over the two example traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttrouter.errors import ConfigError
from sttrouter.panel.device import Conditions, DeviceTier, NetworkStatus, ThermalState
from sttrouter.panel.registry import EndpointRegistry, default_registry
from sttrouter.panel.router import Router
from sttrouter.simulate import (
    ConditionChange,
    FaultSpec,
    FaultType,
    Trace,
    decision_timeline,
    format_time,
    parse_duration,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "traces"
KEYS = {"DEEPGRAM_API_KEY": "k", "ASSEMBLYAI_API_KEY": "k"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("40m", 2400.0),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("1:30:00", 5400.0),
        ("14:30", 870.0),
        (" 5 m ", 300.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "40x", "m", "1h and 3m", -1, "", True, None, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, field="change[0].at", source="t.toml")
    assert info.value.field == "change[0].at"
    assert info.value.source == "t.toml"


@given(st.floats(0, 10 * 3600, allow_nan=False).map(lambda x: round(x, 3)))
def test_format_time_parses_back(seconds: float) -> None:
    assert parse_duration(format_time(seconds)) == pytest.approx(seconds, abs=1e-6)


def test_format_time_examples() -> None:
    assert format_time(5400) == "1:30:00"
    assert format_time(75.5) == "1:15.5"
    assert format_time(0) == "0:00"


def test_tutoring_trace_parses() -> None:
    t = Trace.load(EXAMPLES / "tutoring_90min.toml")
    assert t.duration == 5400
    assert t.language == "en"
    assert t.streaming
    assert t.initial == Conditions("ultra", "connected", "nominal")
    assert [c.at for c in t.changes] == [1500, 2400, 3300, 3600, 4200]
    assert t.changes[2] == ConditionChange(
        at=3300, network=NetworkStatus.DISCONNECTED, note="Wi-Fi drops"
    )
    assert t.faults == (
        FaultSpec("glm-server", FaultType.OUTAGE, 1200, 180),
        FaultSpec("glm-server", FaultType.LATENCY, 4500, 300, 1.5),
    )
    assert t.conditions_at(3400) == Conditions("ultra", "disconnected", "serious")
    assert t.conditions_at(0).thermal is ThermalState.NOMINAL
    assert t.faults_during(0, 1500) == (t.faults[0],)
    assert t.faults_during(1500, 2400) == ()


def test_tutoring_timeline() -> None:
    t = Trace.load(EXAMPLES / "tutoring_90min.toml")
    router = Router(default_registry())
    timeline = decision_timeline(t, router, environ=KEYS)
    spans = [(s, e) for s, e, _ in timeline]
    assert spans == [
        (0, 1500),
        (1500, 2400),
        (2400, 3300),
        (3300, 3600),
        (3600, 4200),
        (4200, 5400),
    ]
    chains = [d.chain_ids for _, _, d in timeline]
    on_device = ("glm-local", "glm-server", "deepgram", "assemblyai", "offline")
    server = ("glm-server", "deepgram", "assemblyai", "offline")
    assert chains == [on_device, on_device, server, ("offline",), server, server]
    # the Wi-Fi drop while hot: only the offline engine, every network endpoint explained
    wifi = timeline[3][2]
    assert wifi.verdict("glm-server").reason == "needs_network"
    assert wifi.verdict("glm-local").reason == "too_hot"


def test_commute_trace_timeline() -> None:
    t = Trace.load(EXAMPLES / "commute_pro_max.toml")
    assert t.initial.tier is DeviceTier.PRO_MAX
    assert t.language == "zh"
    timeline = decision_timeline(t, Router(default_registry()), environ=KEYS)
    assert [d.rule for _, _, d in timeline] == [
        "pro-max-server",
        "cloud",
        "offline-cool",
        "cloud",
        "cloud-hot",
        "pro-max-server",
    ]
    # in the tunnel nothing can transcribe Mandarin: the decision says so, it does not guess
    tunnel = timeline[2][2]
    assert tunnel.chain == ()
    assert tunnel.verdict("offline").reason == "language_unsupported"
    assert timeline[-1][2].conditions.thermal is ThermalState.FAIR  # two changes at once


def test_check_endpoints() -> None:
    t = Trace.from_dict(
        {"duration": 60, "fault": [{"endpoint": "ghost", "kind": "stall", "at": 1}]},
        source="t.toml",
    )
    with pytest.raises(ConfigError) as info:
        t.check_endpoints(default_registry())
    assert info.value.endpoint == "ghost"
    assert info.value.field == "fault[0].endpoint"
    Trace.load(EXAMPLES / "tutoring_90min.toml").check_endpoints(default_registry())


def test_minimal_trace_and_intervals() -> None:
    t = Trace.loads('duration = "10s"\n', source="mini")
    assert t.initial == Conditions()
    assert t.name == "mini"
    assert t.intervals() == [(0.0, 10.0, Conditions(), ())]
    t = Trace.from_dict(
        {
            "duration": 10,
            "initial": {"tier": "ultra", "memory_gb": 4},
            "change": [
                {"at": 0, "thermal": "fair", "note": "warm start"},
                {"at": 10, "network": "disconnected"},
                {"at": 5, "tier": "pro_max", "memory_gb": 2},
            ],
            "streaming": False,
        }
    )
    assert not t.streaming
    iv = t.intervals()
    assert [(s, e) for s, e, _, _ in iv] == [(0, 5), (5, 10)]
    assert iv[0][2] == Conditions("ultra", thermal="fair", memory_gb=4)
    assert iv[0][3] == ("warm start",)
    assert iv[1][2] == Conditions("pro_max", thermal="fair", memory_gb=2)
    fault = FaultSpec("x", FaultType.STALL, 2)
    assert fault.end(10) == 10
    assert "until the end" in fault.describe(10)
    assert fault.to_dict()["duration"] is None


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("name = 'x'\n", "duration", "needs a session duration"),
        ("duration = 0\n", "duration", "longer than 0"),
        ("duration = 'soon'\n", "duration", "not a duration"),
        ("duration = 60\ncolour = 1\n", "colour", "unknown key"),
        ("duration = 60\nlanguage = 5\n", "language", "string"),
        ("duration = 60\nstreaming = 'yes'\n", "streaming", "true or false"),
        ("duration = 60\ninitial = 5\n", "initial", "table"),
        ("duration = 60\n[initial]\ntier = 'mega'\n", "initial.tier", "ultra"),
        ("duration = 60\n[initial]\nwifi = true\n", "initial.wifi", "unknown key"),
        ("duration = 60\n[initial]\ndevice = 5\n", "initial.device", "string"),
        ("duration = 60\n[initial]\nmemory_gb = -1\n", "initial.memory_gb", ">= 0"),
        ("duration = 60\nchange = 5\n", "change", "[[change]]"),
        ("duration = 60\n[[change]]\nthermal = 'fair'\n", "change[0].at", "needs at"),
        ("duration = 60\n[[change]]\nat = '2m'\n", "change[0].at", "after the session ends"),
        ("duration = 60\n[[change]]\nat = 1\nthermal = 'hot'\n", "change[0].thermal", "serious"),
        ("duration = 60\n[[change]]\nat = 1\nnote = 3\n", "change[0].note", "string"),
        ("duration = 60\n[[change]]\nat = 1\nwhen = 3\n", "change[0].when", "unknown key"),
        ("duration = 60\n[[fault]]\nkind = 'outage'\n", "fault[0].endpoint", "endpoint id"),
        ("duration = 60\n[[fault]]\nendpoint = 'a'\n", "fault[0].kind", "outage, stall"),
        ("duration = 60\n[[fault]]\nendpoint = 'a'\nkind = 'fire'\n", "fault[0].kind", "stall"),
        (
            "duration = 60\n[[fault]]\nendpoint = 'a'\nkind = 'outage'\nat = 60\n",
            "fault[0].at",
            "not before the session ends",
        ),
        (
            "duration = 60\n[[fault]]\nendpoint = 'a'\nkind = 'outage'\nduration = 0\n",
            "fault[0].duration",
            "longer than 0",
        ),
        (
            "duration = 60\n[[fault]]\nendpoint = 'a'\nkind = 'latency'\n",
            "fault[0].seconds",
            "needs seconds",
        ),
        (
            "duration = 60\n[[fault]]\nendpoint = 'a'\nkind = 'outage'\nseconds = 3\n",
            "fault[0].seconds",
            "takes no seconds",
        ),
    ],
)
def test_bad_traces(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "trace.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Trace.load(path)
    assert info.value.source == str(path)
    assert info.value.field == field
    assert words in str(info.value)


def test_not_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        Trace.loads("duration = ", source="x")


# -- the command's exit status ---------------------------------------------------------------

TUNNEL = """
name = "a tunnel with no engine for Mandarin"
duration = "40s"
language = "zh"
[initial]
tier = "pro_max"
[[change]]
at = "10s"
network = "disconnected"
note = "tunnel"
[[change]]
at = "20s"
network = "connected"
"""


@pytest.mark.parametrize("json_out", [False, True])
def test_simulate_faults_exits_1_with_a_summary_when_words_are_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], json_out: bool
) -> None:
    from sttrouter.cli import main

    path = tmp_path / "tunnel.toml"
    path.write_text(TUNNEL)
    argv = ["simulate", str(path), "--faults"] + (["--json"] if json_out else [])
    assert main(argv) == 1
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith("sttrouter: simulate: ")
    assert "words were not transcribed" in line
    assert "s of audio got no final" in line
    if json_out:
        assert json.loads(out)["simulation"]["words_missing"] > 0
    else:
        assert "faults executed" in out
    # without --faults nothing is executed, so nothing can be lost
    assert main(["simulate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def _pool_router() -> Router:
    from sttrouter.testing import fake_endpoint

    registry = EndpointRegistry()
    registry.register_pool(
        fake_endpoint("glm", cost_per_hour="0.05"), ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    )
    registry.register(fake_endpoint("backup", cost_per_hour="0.36"))
    return Router(registry)


def _pool_trace(endpoint: str) -> Trace:
    return Trace.loads(
        f'name = "pool"\nduration = "1m"\n[initial]\ntier = "ultra"\n'
        f'[[fault]]\nendpoint = "{endpoint}"\nkind = "outage"\nat = "20s"\n'
    )


@pytest.mark.anyio
async def test_a_replica_outage_moves_the_stream_to_a_sibling() -> None:
    from sttrouter.simulate_faults import simulate_faults

    router = _pool_router()
    trace = _pool_trace("glm#1")
    trace.check_endpoints(router.registry)
    sim = await simulate_faults(trace, router)
    assert sim.words_once == sim.words
    assert sim.uncovered == ()
    moves = [
        (e.previous_endpoint_id, e.endpoint_id) for e in sim.events if e.kind.value == "failover"
    ]
    assert moves == [("glm#1", "glm#2")]
    assert "backup" not in {e.endpoint_id for e in sim.endpoints if e.audio_seconds}


@pytest.mark.anyio
async def test_a_pool_outage_takes_every_replica_down() -> None:
    from sttrouter.simulate_faults import simulate_faults

    router = _pool_router()
    trace = _pool_trace("glm")
    trace.check_endpoints(router.registry)  # a pool's id is a valid fault target
    sim = await simulate_faults(trace, router)
    assert sim.words_once == sim.words
    served = {e.endpoint_id for e in sim.endpoints if e.audio_seconds}
    assert "backup" in served
    with pytest.raises(ConfigError, match="not registered"):
        _pool_trace("gl").check_endpoints(router.registry)
