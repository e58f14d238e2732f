"""Operability of the gateway: readiness with a reason, the access log, JSON for crashes."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from websockets.asyncio.client import connect

from sttrouter.errors import ConfigError
from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.server import GatewayConfig, GatewayServer
from sttrouter.service import STTService
from sttrouter.testing import FakeSTTService, synthetic_speech
from sttrouter.wire import openai as wire

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((3,), gap_seconds=0.3)


async def post(client: httpx.AsyncClient, url: str) -> httpx.Response:
    ctype, body = wire.encode_multipart(
        {}, {"file": wire.FormFile("a.wav", "audio/wav", wire.wav_bytes(SPEECH.pcm))}
    )
    return await client.post(
        f"{url}/v1/audio/transcriptions", content=body, headers={"content-type": ctype}
    )


async def test_ready_says_why_a_misconfigured_backend_cannot_serve() -> None:
    """Like glm-local without its model: the probe passes, every stream fails with a
    ConfigError; /ready turns 503 with that message until the backend works again."""
    broken = [True]

    class NoModel(FakeSTTService):
        async def _open(self) -> None:
            if broken[0]:
                raise ConfigError("the GLM-ASR model is not in the cache; download it first")
            await super()._open()

    server = GatewayServer(lambda config: NoModel(), GatewayConfig(ready_cache_seconds=0))
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        assert (await client.get(f"{app.http_url}/ready")).status_code == 200
        failed = await post(client, app.http_url)
        assert failed.status_code == 503
        assert "model is not in the cache" in failed.json()["error"]["message"]
        ready = await client.get(f"{app.http_url}/ready")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "not_ready",
            "reason": "the GLM-ASR model is not in the cache; download it first",
        }
        async with connect(f"{app.ws_url}/v1/audio/stream") as ws:  # a stream fails the same
            await ws.send(gw.serialize(gw.Start()))
            msg = gw.parse_server(await ws.recv())
            assert isinstance(msg, gw.ErrorMessage)
            assert msg.code == gw.ErrorCode.INTERNAL_ERROR
            assert "model is not in the cache" in msg.message
        broken[0] = False
        assert (await post(client, app.http_url)).json()["text"] == SPEECH.text
        assert (await client.get(f"{app.http_url}/ready")).status_code == 200


async def test_access_log_has_no_query_audio_or_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sttrouter.gateway.access")
    server = GatewayServer(lambda config: FakeSTTService(), GatewayConfig(token="tok"))
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        await client.get(f"{app.http_url}/health?token=tok")
        r = await client.post(
            f"{app.http_url}/v1/audio/transcriptions",
            headers={"Authorization": "Bearer tok"},
            content=b"",
        )
        assert r.status_code == 400
        async with connect(f"{app.ws_url}/v1/audio/stream?token=tok") as ws:
            await ws.send(gw.serialize(gw.End()))
            await ws.wait_closed()
    records = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "sttrouter.gateway.access"
    ]
    assert [(r["kind"], r["path"], r["status"]) for r in records] == [
        ("http", "/health", 200),
        ("http", "/v1/audio/transcriptions", 400),
        ("websocket", "/v1/audio/stream", 1000),
    ]
    text = caplog.text
    assert "tok" not in text
    assert SPEECH.text not in text


async def test_a_crash_is_a_json_500() -> None:
    def backend(config: gw.StreamConfig) -> STTService:
        raise RuntimeError("bug")

    server = GatewayServer(backend)
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        r = await post(client, app.http_url)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "bug" not in r.text
