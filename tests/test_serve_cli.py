"""``sttrouter serve``: a routed gateway from a registry, worker processes, operability."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sttrouter.cli import build_parser, main
from sttrouter.cli.serve import bind, build_backend, build_config, build_server
from sttrouter.errors import ConfigError
from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.testing import synthetic_speech
from sttrouter.wire import openai as wire

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((3, 4), gap_seconds=0.5)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


REGISTRY = textwrap.dedent(
    """
    [[endpoint]]
    id = "first"
    provider = "fake"
    location = "on_device"
    needs_network = false

    [[endpoint]]
    id = "second"
    provider = "fake"
    location = "on_device"
    needs_network = false
    """
)


async def test_config_routes_every_session_and_names_models(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    args = parse("--config", str(path), "--port", "0")
    server = build_server(args, build_config(args, {}))
    assert list(server.models) == ["sttrouter", "first", "second"]
    wav = wire.wav_bytes(SPEECH.pcm)
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        for model in ("sttrouter", "second"):
            ctype, body = wire.encode_multipart(
                {"model": model}, {"file": wire.FormFile("a.wav", "audio/wav", wav)}
            )
            r = await client.post(
                f"{app.http_url}/v1/audio/transcriptions",
                content=body,
                headers={"content-type": ctype},
            )
            assert r.json()["text"] == SPEECH.text
        async with connect(f"{app.ws_url}/v1/audio/stream") as ws:
            await ws.send(gw.serialize(gw.Start()))
            for chunk in SPEECH.chunks(0.1):
                await ws.send(chunk)
            await ws.send(gw.serialize(gw.End()))
            finals = []
            with pytest.raises(ConnectionClosed):
                while True:
                    msg = gw.parse_server(await ws.recv())
                    if isinstance(msg, gw.Transcript) and msg.is_final and msg.text:
                        finals.append(msg.text)
            assert " ".join(finals) == SPEECH.text
        models = (await client.get(f"{app.http_url}/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["sttrouter", "first", "second"]


def test_a_busy_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match="already in use"):
            bind("127.0.0.1", port)
        code = main(["serve", "--backend", "fake", "--port", str(port), "--log-level", "error"])
    finally:
        taken.close()
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"port {port} on 127.0.0.1 is already in use" in err
    with pytest.raises(ConfigError, match="cannot listen"):
        bind("203.0.113.1", 0)  # not an address of this host


def test_allow_insecure_for_a_private_http_backend() -> None:
    url = "http://10.1.2.3:8000"
    with pytest.raises(ConfigError, match="allow_insecure"):
        build_backend(parse("--backend", "openai", "--backend-url", url))
    build_backend(parse("--backend", "openai", "--backend-url", url, "--allow-insecure"))


def test_flags_are_checked() -> None:
    cfg = build_config(
        parse(
            "--start-timeout", "3", "--idle-timeout", "4", "--max-session-seconds", "5",
            "--max-requests", "6", "--engine-threads", "7",
        ),
        {},
    )  # fmt: skip
    assert (cfg.start_timeout_seconds, cfg.idle_timeout_seconds, cfg.max_session_seconds) == (
        3,
        4,
        5,
    )
    assert (cfg.max_requests, cfg.engine_threads) == (6, 7)
    for bad in (
        ["--start-timeout", "0"],
        ["--workers", "0"],
        ["--max-requests", "0"],
        ["--engine-threads", "0"],
    ):
        with pytest.raises(ConfigError):
            build_config(parse(*bad), {})


async def test_the_fake_backend_keeps_no_audio() -> None:
    make = build_backend(parse("--backend", "fake"))
    svc = make(gw.StreamConfig())
    results = await svc.start_streaming()
    noise = (SPEECH.pcm[:3200] * 10)[:3200]
    for _ in range(50):
        await svc.send_audio(noise)
    assert len(svc.received) == 0  # type: ignore[attr-defined]
    await svc.stop_streaming()
    assert [r async for r in results]


def test_workers_share_the_socket_and_stop_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STTROUTER_GATEWAY_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sttrouter",
            "serve",
            "--backend",
            "fake",
            "--port",
            "0",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        pids, url = set(), ""
        while len(pids) < 2:
            line = proc.stderr.readline()
            assert line, "the server exited early"
            if "sttrouter gateway on" in line:
                url = line.split("sttrouter gateway on ")[1].split(" ")[0]
                pids.add(line.split("pid ")[1].split(")")[0])
        for _ in range(4):
            assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200, json.dumps(ready.json())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert code == 0


async def test_engine_processes_flag() -> None:
    from sttrouter.cli.serve import engine_processes
    from sttrouter.gateway.engine_processes import EngineProcesses

    assert engine_processes(parse("--backend", "offline")) == (os.cpu_count() or 1)
    assert engine_processes(parse("--backend", "fake")) == 0
    with pytest.raises(ConfigError):
        engine_processes(parse("--engine-processes", "-1"))
    args = parse("--backend", "fake", "--engine-processes", "1")
    server = build_server(args, build_config(args, {}))
    assert isinstance(server.backend, EngineProcesses)
    async with AppServer(server.app) as app, connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Start()))
        for chunk in SPEECH.chunks(0.1):
            await ws.send(chunk)
        await ws.send(gw.serialize(gw.End()))
        texts = []
        with pytest.raises(ConnectionClosed):
            while True:
                msg = gw.parse_server(await ws.recv())
                if isinstance(msg, gw.Transcript) and msg.is_final and msg.text:
                    texts.append(msg.text)
        assert " ".join(texts) == SPEECH.text
