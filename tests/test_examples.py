"""Every example in examples/ runs, with bounded input."""

from __future__ import annotations

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
