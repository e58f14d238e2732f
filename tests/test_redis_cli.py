"""``sttrouter endpoints status``: the fleet view read from a real redis-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis_fixture import RedisServer

from sttrouter.cli import main
from sttrouter.state import RedisSettings, RedisState
from sttrouter.testing import fake_endpoint

REGISTRY = """\
[state]
url_env = "FLEET_REDIS_URL"
key_prefix = "fleet"

[[endpoint]]
id = "dg"
provider = "fake"
location = "on_device"
needs_network = false
max_concurrent_sessions = 4

[[endpoint]]
id = "local"
provider = "fake"
location = "on_device"
needs_network = false
"""


async def _some_fleet_state(url: str) -> None:
    replica = RedisState.from_url(url, settings=RedisSettings(key_prefix="fleet"))
    await replica.start()
    permit = await replica.admission.acquire(fake_endpoint("dg", max_concurrent_sessions=4))
    replica.breakers.breaker("local").trip("key rejected")
    replica.usage.add("dg", audio_seconds=12.5, sessions=1, cost=0.01)
    await replica.flush()
    # the replica stays up holding its lease while the command reads the fleet
    out = await asyncio.to_thread(main, ["endpoints", "status", "--json", _path])
    assert out == 0
    permit.release()
    await replica.aclose()


_path = ""


def test_endpoints_status_prints_the_fleet_view(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    global _path
    path = tmp_path / "endpoints.toml"
    path.write_text(REGISTRY)
    _path = str(path)
    monkeypatch.setenv("FLEET_REDIS_URL", redis_server.url)
    asyncio.run(_some_fleet_state(redis_server.url))
    data = json.loads(capsys.readouterr().out)
    assert data["store"]["ok"] is True
    assert data["endpoints"]["dg"]["leases_fleet"] == 1
    assert data["endpoints"]["dg"]["limit"] == 4
    assert data["endpoints"]["dg"]["usage"]["audio_seconds"] == 12.5
    assert data["endpoints"]["local"]["breaker"] == "open"
    assert data["endpoints"]["local"]["last_failure"]["permanent"] is True

    assert main(["endpoints", "status", str(path)]) == 0
    text = capsys.readouterr().out
    assert "ok" in text.splitlines()[0]
    assert "key rejected (unusable)" in text
    assert "0/4" in text  # the lease was given back

    redis_server.stop()
    assert main(["endpoints", "status", str(path)]) == 2
    assert "unreachable" in capsys.readouterr().out


def test_endpoints_status_without_a_state_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(REGISTRY.split("[[endpoint]]", 1)[1].join(["[[endpoint]]", ""]))
    assert main(["endpoints", "status", str(path)]) == 1
    assert "nothing is shared" in capsys.readouterr().out
