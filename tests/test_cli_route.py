"""The command line: ``sttrouter route``, ``sttrouter endpoints``, ``sttrouter simulate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sttrouter.cli import main
from sttrouter.panel.registry import default_registry

ROOT = Path(__file__).resolve().parent.parent
TRACE = str(ROOT / "examples" / "traces" / "tutoring_90min.toml")


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEEPGRAM_API_KEY", "ASSEMBLYAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_route_explains_the_seed_hole(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["route", "--tier", "ultra", "--thermal", "serious", "--network", "disconnected"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rule: offline-hot" in out
    lines = out.splitlines()
    assert lines[3].split()[:2] == ["1", "offline"]
    assert "glm-server" in out
    assert "needs_network" in out
    assert "too_hot" in out


def test_route_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["route", "--tier", "ultra", "--language", "zh", "--assume-keys", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["chain"] == ["glm-local", "glm-server", "deepgram"]
    assert data["language"] == "zh"
    reasons = {v["endpoint"]: v["reason"] for v in data["verdicts"]}
    assert reasons["offline"] == "language_unsupported"


def test_route_reports_missing_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["route", "--tier", "pro_standard", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["chain"] == ["glm-server", "offline"]
    monkeypatch.setenv("DEEPGRAM_API_KEY", "sk-SECRET")
    main(["route", "--tier", "pro_standard"])
    out = capsys.readouterr().out
    assert "sk-SECRET" not in out
    assert out.splitlines()[3].split()[:2] == ["1", "deepgram"]


def test_route_detects_the_device_tier(capsys: pytest.CaptureFixture[str]) -> None:
    main(["route", "--device", "iPhone17,2", "--ram-gb", "8", "--json"])
    assert json.loads(capsys.readouterr().out)["conditions"]["tier"] == "pro_max"
    main(["route", "--device", "iPhone18,2", "--tier", "pro_standard", "--json"])
    assert json.loads(capsys.readouterr().out)["conditions"]["tier"] == "pro_standard"
    main(["route", "--device", "iPhone99,9", "--json"])
    assert json.loads(capsys.readouterr().out)["conditions"]["tier"] == "unsupported"


def test_route_on_the_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sttrouter.cli.route as route_cli
    from sttrouter.panel.device import HostInfo

    monkeypatch.setattr(route_cli, "detect_host", lambda: HostInfo(ram_gb=64.0))
    main(["route", "--host", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["conditions"]["tier"] == "ultra"
    assert data["conditions"]["memory_gb"] == 64.0


def test_route_with_no_chain_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["route", "--network", "disconnected", "--language", "ko"])
    assert code == 3
    assert "no endpoint can serve" in capsys.readouterr().out


def test_route_with_config_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "endpoints.toml"
    cfg.write_text(
        '[[endpoint]]\nid = "a"\nprovider = "fake"\n\n'
        '[[endpoint]]\nid = "b"\nprovider = "fake"\ncost_per_hour = 1\n'
    )
    pol = tmp_path / "policy.toml"
    pol.write_text('[[rule]]\nname = "b-first"\nprefer = ["b"]\n')
    main(["route", "--config", str(cfg), "--policy", str(pol), "--json", "--batch"])
    data = json.loads(capsys.readouterr().out)
    assert data["chain"] == ["b", "a"]
    assert data["rule"] == "b-first"
    assert data["streaming"] is False


def test_route_bad_config_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "endpoints.toml"
    cfg.write_text('[[endpoint]]\nid = "a"\nprovider = "fake"\napi_key = "sk-123"\n')
    assert main(["route", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert str(cfg) in err
    assert "endpoint 'a'" in err
    assert "field 'api_key'" in err
    assert "sk-123" not in err


def test_endpoints_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoints", "list"]) == 0
    out = capsys.readouterr().out
    for ep in default_registry():
        assert ep.id in out
    assert "DEEPGRAM_API_KEY (not set)" in out
    assert "18 languages" in out


def test_endpoints_list_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "sk-SECRET")
    assert main(["endpoints", "list", str(ROOT / "examples" / "endpoints.toml"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "sk-SECRET" not in out
    assert [e["id"] for e in json.loads(out)] == [e.id for e in default_registry()]


def test_endpoints_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "examples" / "endpoints.toml"
    assert main(["endpoints", "check", str(good)]) == 0
    assert "5 endpoint(s), valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[endpoint]]\nid = "x"\nprovider = "fake"\nreliability_score = 2\n')
    assert main(["endpoints", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: endpoint 'x': field 'reliability_score'" in err


def test_simulate_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", TRACE]) == 0
    out = capsys.readouterr().out
    assert "90-minute tutoring session" in out
    assert "55:00 - 1:00:00" in out
    assert "[Wi-Fi drops]" in out
    assert "chain:  offline" in out
    assert "glm-server outage at 20:00 for 3:00" in out
    assert "not executed" in out


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", TRACE, "--json", "--assume-keys"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trace"]["duration"] == 5400
    assert data["faults_executed"] is False
    assert len(data["faults"]) == 2
    iv = data["intervals"]
    assert next((i["start"], i["end"]) for i in iv) == (0, 1500)
    assert iv[0]["decision"]["chain"][0] == "glm-local"
    assert iv[0]["faults"][0]["kind"] == "outage"
    assert iv[3]["notes"] == ["Wi-Fi drops"]
    assert iv[3]["decision"]["chain"] == ["offline"]


def test_simulate_unknown_fault_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.toml"
    trace.write_text('duration = 60\n[[fault]]\nendpoint = "ghost"\nkind = "outage"\n')
    assert main(["simulate", str(trace)]) == 1
    assert "endpoint 'ghost'" in capsys.readouterr().err


def test_simulate_without_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.toml"
    trace.write_text('duration = "1m"\n[initial]\nnetwork = "disconnected"\nthermal = "serious"\n')
    assert main(["simulate", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "fault:" not in out
    assert "declared" not in out
    assert "chain:  offline" in out


POOL_CONFIG = """
[[endpoint]]
id = "glm"
provider = "glm_server"
location = "self_hosted"
cost_per_hour = "0.05"
replicas = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]

[[endpoint]]
id = "offline"
provider = "offline"

[[budget]]
tenant = "*"
period = "day"
limit_usd = "5.00"
"""


def test_route_shows_replicas_and_their_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(POOL_CONFIG)
    code = main(["route", "--config", str(config), "--load", "glm#1=3", "--load", "glm#2=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "chosen (pool glm, weight 1, 1 streams)" in out
    assert out.index("glm#2") < out.index("glm#1")
    code = main(["route", "--config", str(config), "--load", "glm#1"])
    assert code == 1
    assert "ID=STREAMS" in capsys.readouterr().err


def test_route_for_a_tenant_over_its_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(POOL_CONFIG)
    code = main(["route", "--config", str(config), "--tenant", "acme", "--spent", "6", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["chain"] == ["offline"]
    assert {v["endpoint"]: v["reason"] for v in data["verdicts"]}["glm#1"] == "budget_exhausted"
    assert data["budget"]["free_only"] is True
    code = main(["route", "--config", str(config), "--tenant", "acme", "--spent", "1.25"])
    assert code == 0
    assert (
        "budget */day for acme: 1.25 of 5 US$ spent this day, 75% left" in capsys.readouterr().out
    )
    assert main(["route", "--tenant", "acme"]) == 1
    assert "needs [[budget]] tables" in capsys.readouterr().err
    assert main(["route", "--config", str(config), "--tenant", "a", "--spent", "x"]) == 1
    assert "must be numbers" in capsys.readouterr().err
