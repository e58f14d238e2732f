"""Every example in examples/ runs, with bounded input."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- decision_service.py ---------------------------------------------------------------------------


@pytest.fixture
def decision_app() -> object:
    from sttrouter.panel import Router, default_registry

    mod = load_example("decision_service")
    # every API key "set" so the cloud endpoints are eligible, whatever this machine's env holds
    environ = {"DEEPGRAM_API_KEY": "x", "ASSEMBLYAI_API_KEY": "x"}
    return mod.create_app(Router(default_registry()), environ=environ)


async def _post(app: object, body: object | bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if isinstance(body, bytes):
            return await client.post("/decide", content=body)
        return await client.post("/decide", json=body)


async def test_decision_service_hot_ultra_offline(decision_app: object) -> None:
    # the seed's hole: an ultra phone at serious heat was sent to the server even when offline
    r = await _post(
        decision_app, {"tier": "ultra", "network": "disconnected", "thermal": "serious"}
    )
    assert r.status_code == 200
    data = r.json()
    assert data["conditions"]["tier"] == "ultra"
    assert data["chain"] == ["offline"]
    reasons = {v["endpoint"]: v["reason"] for v in data["verdicts"]}
    assert reasons["glm-server"] == "needs_network"
    assert reasons["glm-local"] == "too_hot"
    assert all(v["detail"] for v in data["verdicts"] if v["reason"])


async def test_decision_service_detects_tier_from_device(decision_app: object) -> None:
    r = await _post(decision_app, {"device": "iPhone18,2", "ram_gb": 12, "language": "en"})
    assert r.status_code == 200
    data = r.json()
    assert data["conditions"]["tier"] == "ultra"
    assert data["language"] == "en"
    assert data["chain"][0] == "glm-local"
    assert data["chain"][-1] == "offline"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tier": "galaxy"}, "tier"),
        ({"thermal": "warm"}, "thermal"),
        ({"network": 3}, "network"),
        ({"memory_gb": -1}, "memory_gb"),
        ({"ram_gb": "lots"}, "ram_gb"),
        ({"tier": "ultra", "device": "iPhone18,2"}, "device"),
        ({"device": 42}, "device"),
        ({"language": ["en"]}, "language"),
        ({"streaming": "yes"}, "streaming"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_decision_service_rejects_bad_fields(
    decision_app: object, body: dict[str, object], field: str
) -> None:
    r = await _post(decision_app, body)
    assert r.status_code == 400
    assert r.json()["field"] == field


async def test_decision_service_rejects_bad_bodies(decision_app: object) -> None:
    r = await _post(decision_app, b"{nope")
    assert r.status_code == 400
    assert "not JSON" in r.json()["error"]
    r = await _post(decision_app, [1, 2])
    assert r.status_code == 400
    r = await _post(decision_app, b"")  # an empty body means all defaults
    assert r.status_code == 200
    assert r.json()["conditions"]["tier"] == "pro_max"


async def test_decision_service_healthz(decision_app: object) -> None:
    transport = httpx.ASGITransport(app=decision_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/healthz")
    assert r.json()["ok"] is True
    assert "offline" in r.json()["endpoints"]


def test_decision_service_runs_on_a_real_socket() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "decision_service.py"), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:  # uvicorn logs the bound address
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port is not None, "the service did not start"
        r = httpx.post(
            f"http://127.0.0.1:{port}/decide",
            json={"tier": "pro_standard", "network": "disconnected"},
            timeout=10,
        )
        assert r.status_code == 200
        assert r.json()["chain"] == ["offline"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


# -- test_fallback_chain.py --------------------------------------------------------------------


def test_fallback_chain_example_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES / "test_fallback_chain.py"), "-q",
         "-p", "no:cacheprovider"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b5 passed\b", proc.stdout), proc.stdout


# -- relay_server.py ---------------------------------------------------------------------------


async def _play(port: int, hello: object, pcm: bytes) -> tuple[list[dict[str, object]], int | None]:
    """Play ``pcm`` to the relay on ``port`` as an app would; return what came back."""
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(f"ws://127.0.0.1:{port}") as ws:
        messages = []
        try:
            await ws.send(hello if isinstance(hello, str) else json.dumps(hello))
            for i in range(0, len(pcm), 3200):  # 100 ms frames
                await ws.send(pcm[i : i + 3200])
            await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # the relay hung up early (bad hello, failed session): read why
        with contextlib.suppress(ConnectionClosed):
            while True:
                messages.append(json.loads(await ws.recv()))
        return messages, ws.close_code


async def _relay_session(
    context: object, hello: object, pcm: bytes
) -> tuple[list[dict[str, object]], int | None]:
    """Run the relay on 127.0.0.1:0 with ``context`` and play one connection to it."""
    relay = load_example("relay_server")
    server = await relay.start(context)
    try:
        return await _play(server.sockets[0].getsockname()[1], hello, pcm)
    finally:
        server.close()
        await server.wait_closed()


def _fake_context(faults: dict[str, object]) -> object:
    from sttrouter import RoutingContext
    from sttrouter.panel import EndpointRegistry
    from sttrouter.testing import FakeSTTService, fake_endpoint

    registry = EndpointRegistry([fake_endpoint("primary"), fake_endpoint("backup")])
    return RoutingContext(
        registry,
        service_factory=lambda ep: FakeSTTService(ep, faults=faults.get(ep.id)),  # type: ignore[arg-type]
    )


async def test_relay_streams_through_a_failover() -> None:
    from sttrouter.testing import FaultPlan, synthetic_speech

    speech = synthetic_speech((5, 5, 5))
    make = _fake_context({"primary": FaultPlan.drop_after(1.4)})
    hello = {"tier": "pro_max", "network": "connected", "thermal": "nominal", "language": "en"}
    messages, code = await _relay_session(make, hello, speech.pcm)
    assert code == 1000
    assert messages[0] == {"type": "ready", "chain": ["primary", "backup"]}
    finals = [m for m in messages if m["type"] == "final"]
    words = [w for m in finals for w in str(m["text"]).split()]
    assert words == [w for w, _, _ in speech.words]  # every word once, across the failover
    routes = [m for m in messages if m["type"] == "route"]
    assert [r["kind"] for r in routes][:1] == ["selected"]
    failover = next(r for r in routes if r["kind"] == "failover")
    assert (failover["previous_endpoint"], failover["endpoint"]) == ("primary", "backup")
    assert finals[-1]["endpoint"] == "backup"


async def test_relay_connections_share_what_the_context_learns() -> None:
    """One context per process: the engine that rejected the first connection's key is left
    out of the second connection's chain, which goes straight to the backup."""
    from sttrouter.testing import FaultPlan, synthetic_speech

    speech = synthetic_speech((5, 5))
    context = _fake_context({"primary": FaultPlan.auth_error()})
    relay = load_example("relay_server")
    server = await relay.start(context)
    port = server.sockets[0].getsockname()[1]
    hello = {"tier": "pro_max", "language": "en"}
    try:
        first, code = await _play(port, hello, speech.pcm)
        assert code == 1000
        assert first[0] == {"type": "ready", "chain": ["primary", "backup"]}
        assert [m["kind"] for m in first if m["type"] == "route"][:2] == ["failed", "selected"]
        second, code = await _play(port, hello, speech.pcm)
        assert code == 1000
        assert second[0] == {"type": "ready", "chain": ["backup"]}
        assert [m["kind"] for m in second if m["type"] == "route"] == ["selected"]
        words = [w for m in second if m["type"] == "final" for w in str(m["text"]).split()]
        assert words == [w for w, _, _ in speech.words]
    finally:
        server.close()
        await server.wait_closed()


async def test_relay_rejects_a_bad_hello() -> None:
    messages, code = await _relay_session(_fake_context({}), "this is not json", b"")
    assert code == 1008
    assert messages[0]["type"] == "error"
    messages, code = await _relay_session(_fake_context({}), {"tier": "galaxy"}, b"")
    assert code == 1008
    assert "bad hello" in str(messages[0]["message"])


async def test_relay_reports_when_every_engine_fails() -> None:
    from sttrouter.testing import FaultPlan, synthetic_speech

    make = _fake_context(
        {"primary": FaultPlan.drop_after(0.7), "backup": FaultPlan.fail_on_connect()}
    )
    messages, code = await _relay_session(make, {"tier": "pro_max"}, synthetic_speech((5, 5)).pcm)
    assert code == 1011
    error = next(m for m in messages if m["type"] == "error")
    assert "not transcribed" in str(error["message"])


def test_relay_server_main_with_the_offline_engine() -> None:
    """The script itself, with the built-in registry: a disconnected phone gets the offline
    engine, and real speech comes back as text."""
    pytest.importorskip("pocketsphinx")
    import json

    from websockets.sync.client import connect

    from sttrouter.audio import read_audio

    pcm, fmt = read_audio(EXAMPLES / "audio" / "water_16k.wav")
    assert (fmt.sample_rate, fmt.channels) == (16_000, 1)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "relay_server.py"), "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        with connect(f"ws://127.0.0.1:{m.group(1)}") as ws:
            ws.send(json.dumps({"tier": "pro_standard", "network": "disconnected"}))
            assert json.loads(ws.recv()) == {"type": "ready", "chain": ["offline"]}
            for i in range(0, len(pcm), 3200):
                ws.send(pcm[i : i + 3200])
            ws.send(json.dumps({"type": "end"}))
            messages = [json.loads(x) for x in ws]
        text = " ".join(str(x["text"]) for x in messages if x["type"] == "final")
        assert "water" in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- simulate_tutoring.py ----------------------------------------------------------------------


def test_simulate_tutoring_script_runs_the_90_minute_trace_scaled() -> None:
    import json

    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "simulate_tutoring.py"), "--scale", "0.1", "--json"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["trace"].startswith("90-minute tutoring session")
    assert result["audio_seconds"] >= 540  # 90 minutes x 0.1
    assert result["words_in_finals"] == result["words_spoken"]
    assert result["duplicates"] == 0
    assert result["in_order"]
    kinds = [(m["kind"], m["from"], m["to"]) for m in result["moves"]]
    assert kinds[0] == ("selected", None, "glm-local")  # a cool ultra phone: on device
    assert ("rerouted", "glm-local", "glm-server") in kinds  # it heats up: to the server
    assert ("failover", "glm-server", "offline") in kinds  # the Wi-Fi drops: offline engine
    assert ("rerouted", "offline", "glm-server") in kinds  # Wi-Fi back
    assert result["failovers"] >= 1


async def test_simulate_commute_reports_what_no_engine_could_serve() -> None:
    from sttrouter.panel import Router, default_registry
    from sttrouter.simulate import Trace

    sim = load_example("simulate_tutoring")
    trace = sim.scaled(Trace.load(EXAMPLES / "traces" / "commute_pro_max.toml"), 0.2)
    result = await sim.simulate(trace, Router(default_registry()))
    # in the tunnel the phone is offline and the offline engine has no Mandarin: the session
    # says which audio it could not transcribe, and nothing else is lost or repeated
    assert result["not_transcribed"]
    assert result["words_not_transcribed"] > 0
    assert result["words_lost_silently"] == 0
    assert result["duplicates"] == 0
    assert result["in_order"]
    kinds = {m["kind"] for m in result["moves"]}
    assert {"failed", "failover"} <= kinds  # the Deepgram stall is detected and failed over
    assert "not transcribed" in sim.report(result)
