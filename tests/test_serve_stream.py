"""``/v1/audio/stream`` with a client written from the protocol text (raw JSON, no codec of
ours on the client side) against a real server on 127.0.0.1 port 0.

The protocol: binary PCM frames (16 kHz mono PCM16 unless ``start`` negotiates another
format), ``{"type":"start","config":{...}}``, ``{"type":"end"}``,
``{"type":"ping","timestamp":...}``; the server answers ``partial``/``final``, ``pong``
(``timestamp`` echoed, ``server_time``) and ``error`` (``code``, ``message``,
``recoverable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.server import GatewayConfig, GatewayServer
from sttrouter.service import STTService
from sttrouter.testing import FakeClock, FakeSTTService, synthetic_speech

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((3, 4), gap_seconds=0.5)


def start(**config: Any) -> str:
    return json.dumps({"type": "start", "config": config})


async def messages(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes."""
    out = []
    with pytest.raises(ConnectionClosed):
        while True:
            out.append(json.loads(await ws.recv()))
    return out


async def session(url: str, pcm: bytes, **config: Any) -> tuple[list[dict[str, Any]], int]:
    async with connect(url) as ws:
        await ws.send(start(**config))
        frame = 3200
        for i in range(0, len(pcm), frame):
            await ws.send(pcm[i : i + frame])
        await ws.send(json.dumps({"type": "end"}))
        got = await messages(ws)
        assert ws.close_code is not None
        return got, ws.close_code


def text(msgs: list[dict[str, Any]]) -> str:
    return " ".join(m["text"] for m in msgs if m["type"] == "final" and m["text"])


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, list[FakeSTTService]]]:
    made: list[FakeSTTService] = []

    def backend(config: gw.StreamConfig) -> STTService:
        made.append(FakeSTTService())
        return made[-1]

    server = GatewayServer(backend)
    async with AppServer(server.app) as app:
        yield f"{app.ws_url}/v1/audio/stream", made


async def test_a_plain_session_and_pong(served: tuple[str, list[FakeSTTService]]) -> None:
    url, _ = served
    got, code = await session(url, SPEECH.pcm, language="en", interim_results=True)
    assert code == 1000
    assert text(got) == SPEECH.text
    for m in got:
        assert set(m) == {
            "type", "text", "confidence", "timestamp_ms", "duration_ms",
            "is_end_of_utterance", "words",
        }  # fmt: skip
        assert isinstance(m["timestamp_ms"], int)
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping", "timestamp": 1234567}))
        pong = json.loads(await ws.recv())
        assert pong["timestamp"] == 1234567
        assert isinstance(pong["timestamp"], int)
        await ws.send(json.dumps({"type": "ping"}))
        pong = json.loads(await ws.recv())
        assert "timestamp" not in pong
        assert isinstance(pong["server_time"], float)


async def test_the_audio_format_is_negotiated_in_start(
    served: tuple[str, list[FakeSTTService]],
) -> None:
    url, made = served
    one_second = np.full(16000, 2003, dtype="<i2")
    stereo48 = np.repeat(one_second, 3).repeat(2)  # 48 kHz, two equal channels
    got, code = await session(url, stereo48.tobytes(), sample_rate=48000, channels=2)
    assert code == 1000
    assert not [m for m in got if m["type"] == "error"]
    assert abs(len(made[-1].received) - 32000) <= 64  # converted to 16 kHz mono PCM16
    as_float = (one_second / 32768).astype("<f4")
    got, code = await session(url, as_float.tobytes(), encoding="pcm_f32le")
    assert code == 1000
    assert abs(len(made[-1].received) - 32000) <= 64


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"sample_rate": 1000}, "AUDIO_FORMAT_ERROR"),
        ({"encoding": "opus"}, "AUDIO_FORMAT_ERROR"),
        ({"channels": 0}, "AUDIO_FORMAT_ERROR"),
        ({"language": "not a language"}, "INVALID_MESSAGE"),
    ],
)
async def test_a_refused_start_is_one_error_and_a_close(
    served: tuple[str, list[FakeSTTService]], config: dict[str, Any], code: str
) -> None:
    url, _ = served
    async with connect(url) as ws:
        await ws.send(start(**config))
        for _ in range(20):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(bytes(3200))
        got = await messages(ws)
    assert [m["code"] for m in got] == [code]
    assert ws.close_code in (1003, 1008)


async def test_options_the_engine_cannot_honour_are_refused() -> None:
    server = GatewayServer(lambda config: FakeSTTService(supported_options=()))
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        for config in ({"language": "fr"}, {"punctuate": False}):
            async with connect(url) as ws:
                await ws.send(start(**config))
                got = await messages(ws)
            assert [m["code"] for m in got] == ["INVALID_MESSAGE"]
            assert "cannot honour" in got[0]["message"]
        got, code = await session(url, SPEECH.pcm, punctuate=True, interim_results=False)
        assert code == 1000
        assert {m["type"] for m in got} == {"final"}


async def wait_sleeping(clock: FakeClock, n: int = 1) -> None:
    for _ in range(1000):
        if clock.sleepers >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("nothing waits on the clock")


async def test_start_and_idle_timeouts_and_max_duration_free_their_slots() -> None:
    clock = FakeClock()
    server = GatewayServer(
        lambda config: FakeSTTService(),
        GatewayConfig(
            max_sessions=1,
            start_timeout_seconds=10,
            idle_timeout_seconds=30,
            max_session_seconds=100,
        ),
        clock=clock,
    )
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url) as silent:  # never sends start
            await wait_sleeping(clock)
            await clock.advance(10)
            got = await messages(silent)
            assert [m["code"] for m in got] == ["INVALID_MESSAGE"]
            assert "no start message within 10 s" in got[0]["message"]
            assert silent.close_code == 1008
        async with connect(url) as idle:  # the slot is free again
            await idle.send(start())
            for chunk in SPEECH.chunks(0.1)[:10]:
                await idle.send(chunk)
            await wait_sleeping(clock)
            await clock.advance(29)
            await idle.send(json.dumps({"type": "ping", "timestamp": 1}))
            while json.loads(await idle.recv())["type"] != "pong":
                pass
            await clock.advance(30)
            got = await messages(idle)
            assert got
            assert got[-1]["type"] == "final"
            assert idle.close_code == 1000
            assert idle.close_reason == "idle for 30 s"
        async with connect(url) as long:
            await long.send(start())
            for _ in range(3):
                await wait_sleeping(clock)
                await clock.advance(25)
                await long.send(json.dumps({"type": "ping"}))
                assert json.loads(await long.recv())["type"] == "pong"
            await clock.advance(25)
            await messages(long)
            assert long.close_reason == "session longer than 100 s"
    assert server.active == 0


async def test_a_blocked_engine_leaves_health_and_a_second_session_served() -> None:
    """One session's engine blocks in its worker thread until the test releases it."""
    release = threading.Event()
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Blocking(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            if not entered.is_set():
                loop.call_soon_threadsafe(entered.set)
                await anyio.to_thread.run_sync(release.wait)
            await super()._send(pcm)

    kinds = iter([Blocking, FakeSTTService])
    server = GatewayServer(lambda config: next(kinds)(), GatewayConfig(engine_threads=4))
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url) as blocked:
            await blocked.send(start())
            await blocked.send(SPEECH.pcm[:3200])
            await entered.wait()
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{app.http_url}/health")
                assert health.json() == {"status": "ok"}
            got, code = await session(url, SPEECH.pcm)
            assert (text(got), code) == (SPEECH.text, 1000)
            await blocked.send(json.dumps({"type": "ping", "timestamp": 7}))
            assert json.loads(await blocked.recv())["timestamp"] == 7
            release.set()
            for chunk in SPEECH.chunks(0.1)[1:]:
                await blocked.send(chunk)
            await blocked.send(json.dumps({"type": "end"}))
            assert text(await messages(blocked)) == SPEECH.text


async def test_a_fast_client_is_slowed_not_dropped() -> None:
    """Frames sent as fast as the socket takes them, into a tiny buffer: every frame is
    transcribed (the clock never moves, so no frame can time out)."""

    class Slow(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            for _ in range(3):
                await asyncio.sleep(0)
            await super()._send(pcm)

    speech = synthetic_speech((5,) * 8, gap_seconds=0.4)
    server = GatewayServer(
        lambda config: Slow(), GatewayConfig(max_buffer_seconds=0.2), clock=FakeClock()
    )
    async with AppServer(server.app) as app:
        got, code = await session(f"{app.ws_url}/v1/audio/stream", speech.pcm)
    assert code == 1000
    assert not [m for m in got if m["type"] == "error"]
    assert text(got) == speech.text


async def test_json_404_and_405() -> None:
    server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        nowhere = await client.get(f"{app.http_url}/v2/nothing")
        assert nowhere.status_code == 404
        assert nowhere.json()["error"]["code"] == "not_found"
        wrong = await client.delete(f"{app.http_url}/health")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_finalize_cuts_the_utterance_and_the_session_goes_on(
    served: tuple[str, list[FakeSTTService]],
) -> None:
    url, made = served
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "finalize"}))  # before start: refused, recoverable
        refused = json.loads(await ws.recv())
        assert (refused["code"], refused["recoverable"]) == ("INVALID_MESSAGE", True)
        await ws.send(start(interim_results=False))
        chunks = SPEECH.chunks(0.1)
        for chunk in chunks[:2]:  # two words of the first utterance
            await ws.send(chunk)
        await ws.send(b"")  # an empty frame carries nothing
        await ws.send(json.dumps({"type": "finalize"}))
        cut = json.loads(await ws.recv())
        assert cut["type"] == "final"
        assert cut["text"] == SPEECH.text.split()[0]  # w2 is still being spoken
        for chunk in chunks[2:]:
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "end"}))
        rest = await messages(ws)
    assert " ".join([cut["text"], text(rest)]) == SPEECH.text
    assert made[-1].finalize_calls == 1
