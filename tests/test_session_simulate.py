"""``sttrouter simulate --faults``: a real routed session along a trace, on a virtual clock."""

from __future__ import annotations

import json

import pytest

from sttrouter.cli import main
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.panel.router import Router
from sttrouter.simulate import Trace
from sttrouter.simulate_faults import SpeechPattern, format_report, simulate_faults
from sttrouter.testing import fake_endpoint

pytestmark = pytest.mark.anyio


def router() -> Router:
    return Router(
        EndpointRegistry(
            [
                fake_endpoint("primary", cost_per_hour="0.10"),
                fake_endpoint("backup", cost_per_hour="0.36"),
            ]
        )
    )


def trace(faults: str, duration: str = "2m") -> Trace:
    return Trace.loads(
        f"""
name = "test"
duration = "{duration}"
[initial]
tier = "ultra"
{faults}
"""
    )


async def test_outage_fails_over_and_switches_back_without_losing_words() -> None:
    t = trace('[[fault]]\nendpoint = "primary"\nkind = "outage"\nat = "20s"\nduration = "10s"')
    sim = await simulate_faults(t, router())
    assert sim.failovers == 1
    assert sim.switch_backs == 1  # 30 s after the failure, at an utterance boundary
    assert sim.words == 240
    assert sim.words_once == sim.words
    assert sim.words_duplicated == 0
    assert sim.uncovered == ()
    ids = {e.endpoint_id: e for e in sim.endpoints}
    assert ids["primary"].failures == 1
    assert ids["backup"].audio_seconds > 0
    assert ids["backup"].replayed_seconds > 0
    assert sim.cost == ids["primary"].cost + ids["backup"].cost
    kinds = [e.kind.value for e in sim.events]
    assert kinds[:3] == ["selected", "failed", "failover"]
    assert 19.9 < sim.events[1].audio_time < 21  # event times are trace times
    text = format_report(sim)
    assert "failovers 1, switch-backs 1" in text
    assert "240/240 (100.00%)" in text


async def test_every_endpoint_down_reports_the_uncovered_audio() -> None:
    t = trace(
        '[[fault]]\nendpoint = "primary"\nkind = "outage"\nat = "30s"\nduration = "20s"\n'
        '[[fault]]\nendpoint = "backup"\nkind = "outage"\nat = "30s"\nduration = "20s"'
    )
    sim = await simulate_faults(t, router())
    assert len(sim.uncovered) == 1
    start, end = sim.uncovered[0]
    assert 28.0 <= start <= 30.0  # from the last final before the outage
    # reconnect attempts during the outage open both breakers (5 failures); they let a trial
    # through after their 30 s cool-down, so recovery comes up to 30 s after the outage ends
    assert 50.0 <= end <= 63.0
    assert sim.words_duplicated == 0
    assert sim.words_missing > 0
    assert sim.words_once + sim.words_missing == sim.words
    assert sim.time_without_transcription >= end - start
    assert sim.longest_without_transcription >= end - start - 1e-9


async def test_stall_and_latency() -> None:
    t = trace(
        '[[fault]]\nendpoint = "primary"\nkind = "stall"\nat = "10s"\nduration = "5s"\n'
        '[[fault]]\nendpoint = "backup"\nkind = "latency"\nat = "0s"\nseconds = 2.5'
    )
    sim = await simulate_faults(t, router(), speech=SpeechPattern(words=4, period=2.5))
    assert sim.failovers >= 1
    assert "StreamStalled" in next(e.reason for e in sim.events if e.kind.value == "failed")
    assert sim.words_once == sim.words
    # the stall (5 s to detect) and the backup's 2.5 s latency both delayed finals
    assert sim.time_without_transcription > 3.0
    assert sim.to_dict()["coverage"] == 1.0


async def test_network_loss_takes_cloud_endpoints_down() -> None:
    cloud = fake_endpoint("cloud", needs_network=True, location="cloud")
    r = Router(EndpointRegistry([cloud]))
    t = Trace.loads(
        'name = "n"\nduration = "40s"\n[initial]\ntier = "ultra"\n'
        '[[change]]\nat = "10s"\nnetwork = "disconnected"\n'
        '[[change]]\nat = "20s"\nnetwork = "connected"\n'
    )
    sim = await simulate_faults(t, r)
    assert len(sim.uncovered) == 1
    assert 8.0 <= sim.uncovered[0][0] <= 10.0
    assert 20.0 <= sim.uncovered[0][1] <= 20.6  # reconnecting takes a retry delay
    assert sim.words_duplicated == 0


def test_speech_pattern() -> None:
    p = SpeechPattern(words=2, word_seconds=0.5, period=2.0)
    assert p.word_at(0.2) == 1
    assert p.word_at(0.7) == 2
    assert p.word_at(1.5) is None
    assert p.word_at(2.1) == 3
    assert p.word_span(3) == (2.0, 2.5)
    assert p.utterance_end(4) == 3.0
    assert p.words_until(2.6) == 3
    assert len(p.pcm(0.0, 1.0)) == 32000


SHORT = """
name = "two minutes on cellular"
duration = "2m"
language = "zh"
[initial]
tier = "pro_max"
network = "constrained"
[[fault]]
endpoint = "deepgram"
kind = "stall"
at = "30s"
duration = "1m"
"""


@pytest.fixture
def short_trace(tmp_path: pytest.TempPathFactory) -> str:
    path = tmp_path / "short.toml"  # type: ignore[operator]
    path.write_text(SHORT)
    return str(path)


def test_cli_faults_text(capsys: pytest.CaptureFixture[str], short_trace: str) -> None:
    assert main(["simulate", short_trace, "--assume-keys", "--faults"]) == 0
    out = capsys.readouterr().out
    assert "faults executed" in out
    assert "words transcribed exactly once" in out
    assert "StreamStalled" in out
    assert "(executed below)" in out
    assert "not executed here" not in out


def test_cli_faults_json(capsys: pytest.CaptureFixture[str], short_trace: str) -> None:
    assert main(["simulate", short_trace, "--assume-keys", "--faults", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["faults_executed"] is True
    sim = data["simulation"]
    assert sim["failovers"] >= 1
    assert sim["words_duplicated"] == 0
    assert {e["endpoint_id"] for e in sim["endpoints"]} >= {"deepgram"}
