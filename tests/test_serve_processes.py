"""Engines in worker processes: an engine that blocks its whole process (as pocketsphinx does
while it holds the GIL) leaves the gateway's loop, ``/health`` and other sessions served."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import multiprocessing
import socket
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.engine_processes import EngineProcesses
from sttrouter.gateway.server import GatewayServer
from sttrouter.service import STTService
from sttrouter.testing import FakeSTTService, synthetic_speech

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((3, 4), gap_seconds=0.5)


def fake_backend() -> Callable[[gw.StreamConfig], STTService]:
    return lambda config: FakeSTTService(supported_options=("language",))


def blocking_backend(entered: Any, release: Any) -> Callable[[gw.StreamConfig], STTService]:
    """The first stream's engine blocks its process (not just a thread) until released."""

    class Blocking(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            if not entered.is_set():
                entered.set()
                release.wait()  # synchronous: this worker's event loop stops too
            await super()._send(pcm)

    return lambda config: Blocking()


async def stream(url: str, pcm: bytes, **config: Any) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "config": config}))
        for chunk in SPEECH.chunks(0.1) if pcm is SPEECH.pcm else [pcm]:
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "end"}))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(json.loads(await ws.recv()))
    return got, ws.close_code


def finals(got: list[dict[str, Any]]) -> str:
    return " ".join(m["text"] for m in got if m["type"] == "final" and m["text"])


async def test_sessions_run_in_worker_processes() -> None:
    pool = EngineProcesses(fake_backend, processes=2)
    server = GatewayServer(pool)
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        got, code = await stream(url, SPEECH.pcm, language="en")
        assert (finals(got), code) == (SPEECH.text, 1000)
        refused, _ = await stream(url, SPEECH.pcm, punctuate=False)
        assert [m["code"] for m in refused] == ["INVALID_MESSAGE"]
        assert "punctuate" in refused[0]["message"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{app.http_url}/ready")).status_code == 200
            from sttrouter.wire import openai as wire

            ctype, body = wire.encode_multipart(
                {}, {"file": wire.FormFile("a.wav", "audio/wav", wire.wav_bytes(SPEECH.pcm))}
            )
            r = await client.post(
                f"{app.http_url}/v1/audio/transcriptions",
                content=body,
                headers={"content-type": ctype},
            )
            assert r.json()["text"] == SPEECH.text
    assert all(not w.sessions for w in pool.workers)


async def test_a_process_blocking_engine_leaves_the_gateway_served() -> None:
    ctx = multiprocessing.get_context("spawn")
    entered, release = ctx.Event(), ctx.Event()
    pool = EngineProcesses(functools.partial(blocking_backend, entered, release), processes=2)
    server = GatewayServer(pool)
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url) as blocked:
            await blocked.send(json.dumps({"type": "start", "config": {}}))
            await blocked.send(SPEECH.pcm[:3200])
            assert await anyio.to_thread.run_sync(entered.wait, 60)
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{app.http_url}/health")
                assert health.json() == {"status": "ok"}
            await blocked.send(json.dumps({"type": "ping", "timestamp": 3}))
            assert json.loads(await blocked.recv())["timestamp"] == 3
            got, code = await stream(url, SPEECH.pcm)  # the other worker serves it
            assert (finals(got), code) == (SPEECH.text, 1000)
            release.set()
            for chunk in SPEECH.chunks(0.1)[1:]:
                await blocked.send(chunk)
            await blocked.send(json.dumps({"type": "end"}))
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(json.loads(await blocked.recv()))
            assert finals(got) == SPEECH.text


async def test_a_dead_worker_fails_its_streams() -> None:
    pool = EngineProcesses(fake_backend, processes=1)
    server = GatewayServer(pool)
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "config": {}}))
            await ws.send(SPEECH.pcm[:3200])
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] in ("pong", "partial")
            pool.workers[0].process.kill()
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(json.loads(await ws.recv()))
            assert [m["code"] for m in got if m["type"] == "error"] == ["MODEL_UNAVAILABLE"]
        refused, _ = await stream(url, SPEECH.pcm)
        assert [m["code"] for m in refused] == ["MODEL_UNAVAILABLE"]


class _InProcess:
    """Stands in for a worker's process: the worker coroutine runs as a task of this loop
    (so the worker's side is covered and checked without a process)."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task

    def is_alive(self) -> bool:
        return not self.task.done()

    def join(self, timeout: float | None = None) -> None:
        pass

    def kill(self) -> None:
        self.task.cancel()


async def test_the_worker_protocol_in_process() -> None:
    from sttrouter.errors import StreamingFailed, UnsupportedOption
    from sttrouter.gateway import engine_processes as ep
    from sttrouter.options import StreamOptions
    from sttrouter.service import stream_transcribe

    ours, theirs = socket.socketpair()
    task = asyncio.create_task(ep._worker(theirs, fake_backend))
    pool = ep.EngineProcesses.__new__(ep.EngineProcesses)
    pool.ids = itertools.count(1)
    from sttrouter.endpoint import Location, STTEndpoint

    pool.endpoint = STTEndpoint(
        id="p", provider="offline", location=Location.ON_DEVICE, needs_network=False
    )
    pool.workers = [ep._Worker(_InProcess(task), ours)]
    transcript = await stream_transcribe(pool(gw.StreamConfig()), SPEECH.pcm, ENGINE_FORMAT)
    assert transcript.text == SPEECH.text
    await pool(gw.StreamConfig()).probe()
    with pytest.raises(UnsupportedOption):
        await pool(gw.StreamConfig()).start_streaming(options=StreamOptions(prompt="x"))
    svc = pool(gw.StreamConfig())
    results = await svc.start_streaming()
    await svc.send_audio(SPEECH.pcm[:3200])
    await svc.finalize()
    await svc.cancel_streaming()
    assert isinstance([r async for r in results], list)
    assert ep._error(ep._error_payload(ValueError("x"))).message.startswith("the engine failed")
    assert isinstance(ep._error(("failed", "boom")), StreamingFailed)
    await pool.aclose()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    theirs.close()
    with pytest.raises(StreamingFailed):
        pool.pick()
    with pytest.raises(ValueError, match="at least one"):
        ep.EngineProcesses(fake_backend, 0)
