"""``sttrouter serve``'s gateway over real sockets: the protocol, its limits, the HTTP endpoints,
and GLMServerSTTService in gateway and openai mode against it."""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sttrouter.audio import read_audio
from sttrouter.cli import build_parser
from sttrouter.cli.serve import build_backend, build_config
from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    RateLimited,
    StreamingFailed,
)
from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.server import GatewayConfig, GatewayServer
from sttrouter.providers.glm_server import GLMServerSTTService
from sttrouter.service import STTService, stream_transcribe
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    check_stt_service,
    synthetic_speech,
)
from sttrouter.wire import openai as wire

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((4, 3), gap_seconds=0.6, lead_seconds=0.2)
AUDIO_DIR = Path(__file__).resolve().parent.parent / "examples" / "audio"


class SlowFake(FakeSTTService):
    """A backend that takes audio only when the test lets it."""

    gate: asyncio.Event

    async def _send(self, pcm: bytes) -> None:
        await self.gate.wait()
        await super()._send(pcm)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[GatewayServer, AppServer]]:
    server = GatewayServer(lambda config: FakeSTTService(), GatewayConfig(max_sessions=4))
    async with AppServer(server.app) as app:
        yield server, app


def gateway_endpoint(url: str, **options: Any) -> STTEndpoint:
    key_env = options.pop("api_key_env", None)
    return STTEndpoint(
        id="gw",
        provider="glm_server",
        location=Location.SELF_HOSTED,
        connection=ConnectionConfig(
            base_url=url, api_key_env=key_env, options={"mode": "gateway", **options}
        ),
    )


async def recv(ws: ClientConnection) -> gw.ServerMessage:
    return gw.parse_server(await asyncio.wait_for(ws.recv(), 5))


async def send_speech(ws: ClientConnection, pcm: bytes, frame: float = 0.1) -> None:
    for chunk in SPEECH.chunks(frame) if pcm is SPEECH.pcm else _chunks(pcm, frame):
        await ws.send(chunk)


def _chunks(pcm: bytes, seconds: float) -> list[bytes]:
    size = int(seconds * 32000)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


async def finish(ws: ClientConnection, *, allow_errors: bool = False) -> list[gw.Transcript]:
    await ws.send(gw.serialize(gw.End()))
    out: list[gw.Transcript] = []
    async for raw in ws:
        msg = gw.parse_server(raw)
        if isinstance(msg, gw.ErrorMessage) and allow_errors:
            continue
        assert isinstance(msg, gw.Transcript), msg
        out.append(msg)
    assert ws.close_code == 1000
    return out


async def advance_when_waiting(clock: FakeClock, seconds: float) -> None:
    """Once something sleeps on the server's clock, advance it (no real time passes)."""

    for _ in range(100_000):  # a hang guard only: each turn yields to the server's tasks
        if clock.next_deadline is not None:
            break
        await asyncio.sleep(0)
    await clock.advance(seconds)


def text_of(results: list[Any]) -> str:
    """The joined text of the finals (gateway messages or STTResults)."""
    return " ".join(
        t
        for r in results
        if r.is_final and (t := getattr(r, "text", None) or getattr(r, "transcript", ""))
    )


# -- the protocol, end to end ------------------------------------------------------------------
async def test_raw_session_gets_partials_finals_and_pong(
    gateway: tuple[GatewayServer, AppServer],
) -> None:
    server, app = gateway
    async with connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Ping(7.0)))
        pong = await recv(ws)
        assert isinstance(pong, gw.Pong)
        assert pong.timestamp == 7.0
        await ws.send(gw.serialize(gw.Start()))
        await send_speech(ws, SPEECH.pcm)
        results = await finish(ws)
    finals = [r for r in results if r.is_final and r.text]
    assert any(not r.is_final for r in results)
    assert text_of(results) == SPEECH.text
    assert finals[0].timestamp_ms == 0
    assert finals[-1].is_end_of_utterance
    text = server.metrics.render()
    assert 'sttrouter_gateway_requests_total{kind="stream"} 1' in text
    assert "sttrouter_gateway_audio_seconds_total 2" in text
    assert "sttrouter_gateway_active_sessions 0" in text


async def test_interim_results_off_sends_finals_only(
    gateway: tuple[GatewayServer, AppServer],
) -> None:
    _, app = gateway
    async with connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Start(gw.StreamConfig(interim_results=False))))
        await send_speech(ws, SPEECH.pcm)
        results = await finish(ws)
    assert results
    assert all(r.is_final for r in results)


async def test_adapter_in_gateway_mode_conforms(gateway: tuple[GatewayServer, AppServer]) -> None:
    _, app = gateway
    ep = gateway_endpoint(app.ws_url, frame_seconds=0.05)
    results = await check_stt_service(lambda: GLMServerSTTService(ep), SPEECH.pcm)
    assert any(not r.is_final for r in results)
    assert text_of(results) == SPEECH.text
    await GLMServerSTTService(ep).probe()


async def test_adapter_in_openai_mode_through_the_gateway(
    gateway: tuple[GatewayServer, AppServer],
) -> None:
    _, app = gateway
    for sse in (False, True):
        ep = STTEndpoint(
            id="oa",
            provider="glm_server",
            connection=ConnectionConfig(
                base_url=app.http_url, options={"sse": sse, "vad": {"backend": "energy"}}
            ),
        )
        results = await check_stt_service(lambda ep=ep: GLMServerSTTService(ep), SPEECH.pcm)
        assert text_of(results) == SPEECH.text
        await GLMServerSTTService(ep).probe()


# -- bad input: the protocol's error, and the server keeps serving -------------------------
async def test_bad_input_gets_protocol_errors_while_another_session_runs() -> None:
    server = GatewayServer(
        lambda config: FakeSTTService(), GatewayConfig(max_sessions=3, token="tok")
    )
    auth = {"Authorization": "Bearer tok"}
    async with AppServer(server.app) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url, additional_headers=auth) as good:
            await good.send(gw.serialize(gw.Start()))
            await good.send(SPEECH.pcm[:3200])

            async with connect(url, additional_headers=auth) as bad:

                async def expect(payload: str | bytes, code: gw.ErrorCode) -> None:
                    await bad.send(payload)
                    msg = await recv(bad)
                    assert isinstance(msg, gw.ErrorMessage), msg
                    assert msg.code == code
                    assert msg.recoverable is code.recoverable

                await expect(b"\x00\x00" * 800, gw.ErrorCode.INVALID_MESSAGE)  # audio before start
                await expect("not json at all", gw.ErrorCode.INVALID_MESSAGE)
                await expect('{"type":"shout"}', gw.ErrorCode.INVALID_MESSAGE)
                await bad.send(gw.serialize(gw.Start()))
                await expect(gw.serialize(gw.Start()), gw.ErrorCode.INVALID_MESSAGE)
                await expect(b"\x00" * 3201, gw.ErrorCode.AUDIO_FORMAT_ERROR)  # odd length
                await expect(b"\x00\x00" * 16000, gw.ErrorCode.AUDIO_FORMAT_ERROR)  # 1 s frame
                await bad.send(SPEECH.pcm[:3200])  # still open and usable
                assert await finish(bad) is not None

            # a wrong token: the protocol's error, then a policy close
            async with connect(url, additional_headers={"Authorization": "Bearer nope"}) as ws:
                msg = await recv(ws)
                assert msg == gw.ErrorMessage.of(gw.ErrorCode.AUTHENTICATION_FAILED, msg.message)  # type: ignore[union-attr]
                assert msg.recoverable is False  # type: ignore[union-attr]
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008
            async with connect(url) as ws:  # no token at all
                msg = await recv(ws)
                assert isinstance(msg, gw.ErrorMessage)
                assert msg.code == gw.ErrorCode.AUTHENTICATION_FAILED

            # too many sessions
            async with (
                connect(url, additional_headers=auth),
                connect(url, additional_headers=auth),
                connect(url, additional_headers=auth) as third,
            ):
                msg = await recv(third)
                assert isinstance(msg, gw.ErrorMessage)
                assert msg.code == gw.ErrorCode.RATE_LIMIT_EXCEEDED
                assert msg.recoverable
                with pytest.raises(ConnectionClosed):
                    await third.recv()
                assert third.close_code == 1013

            # the first session never noticed
            for chunk in SPEECH.chunks(0.1)[1:]:
                await good.send(chunk)
            finals = [r for r in await finish(good) if r.is_final]
            assert " ".join(r.text for r in finals if r.text) == SPEECH.text
    text = server.metrics.render()
    assert 'sttrouter_gateway_errors_total{code="AUTHENTICATION_FAILED"} 2' in text
    assert 'sttrouter_gateway_errors_total{code="INVALID_MESSAGE"} 4' in text


async def test_buffer_overflow_when_the_engine_falls_behind() -> None:
    gate = asyncio.Event()

    def backend(config: gw.StreamConfig) -> STTService:
        svc = SlowFake()
        svc.gate = gate
        return svc

    clock = FakeClock()
    server = GatewayServer(
        backend, GatewayConfig(max_buffer_seconds=0.5, max_buffer_wait_seconds=0.05), clock=clock
    )
    async with AppServer(server.app) as app, connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Start()))
        for _ in range(8):
            await ws.send(bytes(3200))
        await advance_when_waiting(clock, 0.05)  # a frame waited its full time for room
        msg = await recv(ws)
        assert isinstance(msg, gw.ErrorMessage)
        assert msg.code == gw.ErrorCode.BUFFER_OVERFLOW
        assert msg.recoverable
        gate.set()
        await finish(ws, allow_errors=True)


async def test_a_fast_client_is_paced_not_dropped() -> None:
    """Audio sent faster than the engine takes it waits for room instead of being dropped."""
    waits = []

    class Slow(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            waits.append(clock.sleepers)  # a frame of the client is parked waiting for room
            for _ in range(5):
                await asyncio.sleep(0)
            await super()._send(pcm)

    clock = FakeClock()  # never advanced: a full buffer makes the socket wait, never drop
    server = GatewayServer(
        lambda config: Slow(), GatewayConfig(max_buffer_seconds=0.3), clock=clock
    )
    async with AppServer(server.app) as app:
        svc = GLMServerSTTService(gateway_endpoint(app.ws_url))
        speech = synthetic_speech((5,) * 6, gap_seconds=0.5)
        transcript = await svc.transcribe(speech.pcm)
        assert transcript.text == speech.text
    assert any(waits)  # the buffer did fill up
    assert "BUFFER_OVERFLOW" not in server.metrics.render()


async def test_adapter_fails_its_stream_on_buffer_overflow() -> None:
    gate = asyncio.Event()

    def backend(config: gw.StreamConfig) -> STTService:
        svc = SlowFake()
        svc.gate = gate
        return svc

    clock = FakeClock()
    server = GatewayServer(
        backend, GatewayConfig(max_buffer_seconds=0.3, max_buffer_wait_seconds=0.05), clock=clock
    )
    async with AppServer(server.app) as app:
        svc = GLMServerSTTService(gateway_endpoint(app.ws_url))
        results = await svc.start_streaming()
        for chunk in SPEECH.chunks(0.1)[:5]:  # more than the 0.3 s buffer while the engine waits
            await svc.send_audio(chunk)
        await advance_when_waiting(clock, 0.05)  # the waiting frame is dropped
        with pytest.raises(gw.AudioDropped, match="dropped"):
            async for _ in results:
                pass
        with pytest.raises(StreamingFailed):
            await svc.send_audio(SPEECH.chunks(0.1)[5])
        await svc.cancel_streaming()
        gate.set()


@pytest.mark.parametrize(
    ("fault", "code", "expected"),
    [
        (FaultPlan.fail_on_connect(), gw.ErrorCode.MODEL_UNAVAILABLE, StreamingFailed),
        (FaultPlan.rate_limited(), gw.ErrorCode.RATE_LIMIT_EXCEEDED, RateLimited),
    ],
)
async def test_backend_failure_is_reported(
    fault: FaultPlan, code: gw.ErrorCode, expected: type[Exception]
) -> None:
    server = GatewayServer(lambda config: FakeSTTService(faults=fault))
    async with AppServer(server.app) as app:
        async with connect(f"{app.ws_url}/v1/audio/stream") as ws:
            await ws.send(gw.serialize(gw.Start()))
            msg = await recv(ws)
            assert isinstance(msg, gw.ErrorMessage)
            assert msg.code == code
        svc = GLMServerSTTService(gateway_endpoint(app.ws_url))
        with pytest.raises(expected):
            await svc.transcribe(SPEECH.pcm)


async def test_backend_dying_mid_stream_is_model_unavailable() -> None:
    server = GatewayServer(lambda config: FakeSTTService(faults=FaultPlan.drop_after(0.5)))
    async with AppServer(server.app) as app, connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Start()))
        await send_speech(ws, SPEECH.pcm)
        msgs = []
        with pytest.raises(ConnectionClosed):
            while True:
                msgs.append(await recv(ws))
        errors = [m for m in msgs if isinstance(m, gw.ErrorMessage)]
        assert [e.code for e in errors] == [gw.ErrorCode.MODEL_UNAVAILABLE]
        assert not errors[0].recoverable
        assert ws.close_code == 1011


async def test_adapter_token_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    server = GatewayServer(lambda config: FakeSTTService(), GatewayConfig(token="s3cret"))
    async with AppServer(server.app) as app:
        monkeypatch.setenv("GW_TOKEN", "s3cret")
        ok = GLMServerSTTService(gateway_endpoint(app.ws_url, api_key_env="GW_TOKEN"))
        assert (await ok.transcribe(SPEECH.pcm)).text == SPEECH.text
        monkeypatch.setenv("GW_TOKEN", "wrong")
        bad = GLMServerSTTService(gateway_endpoint(app.ws_url, api_key_env="GW_TOKEN"))
        with pytest.raises(AuthenticationFailed):
            await bad.transcribe(SPEECH.pcm)


async def test_a_gateway_restart_fails_the_stream_and_a_routed_session_replays() -> None:
    """The adapter keeps no replay of its own: a drop fails its stream, and a RoutedSession
    with a backup gateway replays the audio no final covered, so nothing is lost."""
    from sttrouter.session import RoutedSession

    primary = AppServer(GatewayServer(lambda config: FakeSTTService()).app)
    await primary.start()
    backup_server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(backup_server.app) as backup:
        alone = GLMServerSTTService(gateway_endpoint(primary.ws_url))
        results = await alone.start_streaming()
        chain = [
            attrs.evolve(gateway_endpoint(primary.ws_url), id="primary"),
            attrs.evolve(gateway_endpoint(backup.ws_url), id="backup"),
        ]
        session = RoutedSession(chain)
        routed = await session.start_streaming()
        collected: list[Any] = []

        async def consume() -> None:
            async for r in routed:
                collected.append(r)

        task = asyncio.create_task(consume())
        chunks = SPEECH.chunks(0.1)
        for chunk in chunks[:12]:  # through the first utterance's final, into the second
            await session.send_audio(chunk)
            await alone.send_audio(chunk)
        await primary.stop()  # the primary gateway goes away mid-utterance (close 1012)
        with pytest.raises(StreamingFailed):
            async for _ in results:
                pass
        with pytest.raises(StreamingFailed):  # no reconnect: the stream stays failed
            await alone.send_audio(chunks[12])
        await alone.cancel_streaming()
        for chunk in chunks[12:]:
            await session.send_audio(chunk)
        await session.stop_streaming()
        await task
    assert text_of(collected) == SPEECH.text
    # the backup heard the replay of what no final covered, then the rest
    assert backup_server.metrics.audio_seconds > SPEECH.duration - 1.2


async def test_adapter_gives_up_when_the_gateway_is_gone() -> None:
    server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(server.app) as app:
        url = app.ws_url
    with pytest.warns(DeprecationWarning, match="RoutedSession with a backup endpoint"):
        svc = GLMServerSTTService(gateway_endpoint(url, reconnect_attempts=1))
    with pytest.raises(ConnectionFailed):
        await svc.start_streaming()
    with pytest.raises(ConnectionFailed):
        await svc.probe()


# -- the OpenAI-compatible endpoint and the HTTP routes -------------------------------------
async def post(
    client: httpx.AsyncClient, url: str, fields: dict[str, str], data: bytes
) -> httpx.Response:
    ctype, body = wire.encode_multipart(fields, {"file": wire.FormFile("a.wav", "audio/wav", data)})
    return await client.post(
        f"{url}/v1/audio/transcriptions", content=body, headers={"content-type": ctype}
    )


async def test_http_transcriptions_json_text_sse_and_errors() -> None:
    server = GatewayServer(
        lambda config: FakeSTTService(), GatewayConfig(token="t", max_upload_bytes=200_000)
    )
    wav = wire.wav_bytes(SPEECH.pcm)
    async with (
        AppServer(server.app) as app,
        httpx.AsyncClient(headers={"Authorization": "Bearer t"}) as client,
    ):
        url = app.http_url
        r = await post(client, url, {}, wav)
        assert r.json() == {"text": SPEECH.text, "usage": {"type": "duration", "seconds": 3}}
        r = await post(client, url, {"response_format": "text"}, wav)
        assert r.text == SPEECH.text
        r = await post(client, url, {"stream": "true"}, wav)
        decoder = wire.SSEDecoder()
        events = [e for d in decoder.feed(r.content) for e in wire.parse_stream_event(d)]
        assert wire.iter_text(iter(events)) == SPEECH.text
        assert [e.kind for e in events[-2:]] == ["done", "end"]
        import io

        import numpy as np
        import soundfile

        flac = io.BytesIO()
        soundfile.write(flac, np.frombuffer(SPEECH.pcm, dtype="<i2"), 16000, format="FLAC")
        assert (await post(client, url, {}, flac.getvalue())).json()["text"] == SPEECH.text
        bad = await post(client, url, {"response_format": "xml"}, wav)
        assert bad.status_code == 400
        assert "xml" in wire.parse_error(400, bad.content).message
        assert (await post(client, url, {}, b"garbage")).status_code == 400
        assert (await post(client, url, {}, wire.wav_bytes(b""))).status_code == 400
        big = await post(client, url, {}, bytes(300_000))
        assert big.status_code == 413
        no_file = await client.post(
            f"{url}/v1/audio/transcriptions",
            content=b"--x--\r\n",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert no_file.status_code == 400
        assert (await client.get(f"{url}/v1/models")).json()["data"][0]["id"] == "sttrouter"
        metrics = await client.get(f"{url}/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'sttrouter_gateway_requests_total{kind="transcription"}' in metrics.text
        assert 'sttrouter_gateway_errors_total{code="http_413"} 1' in metrics.text
        async with httpx.AsyncClient() as anon:
            assert (await post(anon, url, {}, wav)).status_code == 401
            assert (await anon.get(f"{url}/metrics")).status_code == 401
            assert (await anon.get(f"{url}/v1/models")).status_code == 401
            assert (await anon.get(f"{url}/health")).json() == {"status": "ok"}


async def test_http_backend_failures() -> None:
    plans = iter(
        [FaultPlan.fail_on_connect(), FaultPlan.rate_limited(), FaultPlan.fail_on_connect()]
    )
    server = GatewayServer(lambda config: FakeSTTService(faults=next(plans)))
    wav = wire.wav_bytes(SPEECH.pcm)
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        assert (await post(client, app.http_url, {}, wav)).status_code == 503
        assert (await post(client, app.http_url, {}, wav)).status_code == 429
        r = await post(client, app.http_url, {"stream": "true"}, wav)
        events = [e for d in wire.SSEDecoder().feed(r.content) for e in wire.parse_stream_event(d)]
        assert [e.kind for e in events] == ["error", "end"]


async def test_ready_probes_the_backend() -> None:
    down = FakeSTTService()
    down.down = True
    backends = iter([down, FakeSTTService()])
    clock = FakeClock()
    server = GatewayServer(lambda config: next(backends), clock=clock)  # 5 s cache
    async with AppServer(server.app) as app, httpx.AsyncClient() as client:
        r = await client.get(f"{app.http_url}/ready")
        assert r.status_code == 503
        assert r.json() == {
            "status": "not_ready",
            "reason": "ConnectionFailed: probe failed: engine is down",
        }
        await clock.advance(4.0)
        assert (await client.get(f"{app.http_url}/ready")).status_code == 503  # cached
        await clock.advance(2.0)
        assert (await client.get(f"{app.http_url}/ready")).status_code == 200


async def test_pong_server_time_runs_on_the_server_clock() -> None:
    clock = FakeClock()
    server = GatewayServer(lambda config: FakeSTTService(), clock=clock)
    async with AppServer(server.app) as app, connect(f"{app.ws_url}/v1/audio/stream") as ws:
        await ws.send(gw.serialize(gw.Ping(1.0)))
        first = await recv(ws)
        await clock.advance(2.5)
        await ws.send(gw.serialize(gw.Ping(2.0)))
        second = await recv(ws)
    assert isinstance(first, gw.Pong)
    assert isinstance(second, gw.Pong)
    assert second.server_time - first.server_time == pytest.approx(2.5)
    assert abs(first.server_time - server.server_time() + 2.5) < 1.0  # wall-clock seconds


# -- the offline engine behind the gateway, on a committed speech sample -------------------
SAMPLE = AUDIO_DIR / "water_16k.wav"


def _offline_ready() -> bool:
    try:
        import sttrouter.providers.offline  # noqa: F401
    except ImportError:
        return False
    return SAMPLE.is_file()


@pytest.mark.skipif(not _offline_ready(), reason="offline engine or speech samples not present")
async def test_offline_backend_transcribes_a_committed_sample_in_both_modes() -> None:
    data, fmt = read_audio(SAMPLE)
    reference = set(
        SAMPLE.with_suffix("").with_name("water.txt").read_text().lower().strip(".\n").split()
    )
    args = build_parser().parse_args(["serve", "--backend", "offline"])
    server = GatewayServer(build_backend(args), build_config(args, {}))
    async with AppServer(server.app) as app:
        for mode, url in (("gateway", app.ws_url), ("openai", app.http_url)):
            ep = STTEndpoint(
                id=mode,
                provider="glm_server",
                connection=ConnectionConfig(base_url=url, options={"mode": mode}),
            )
            collected: list[Any] = []
            transcript = await stream_transcribe(
                GLMServerSTTService(ep), data, fmt, on_result=collected.append
            )
            heard = set(transcript.text.split())
            assert len(heard & reference) >= len(reference) // 2, transcript.text
            assert any(r.is_final for r in collected)
            if mode == "gateway":
                assert any(not r.is_final for r in collected)  # the engine's partials


# -- the command line ------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_cli_config_reads_the_token_from_the_environment() -> None:
    cfg = build_config(parse("--max-sessions", "7"), {"STTROUTER_GATEWAY_TOKEN": "x"})
    assert (cfg.token, cfg.max_sessions) == ("x", 7)
    assert build_config(parse(), {}).token is None
    for bad in (
        ["--max-sessions", "0"],
        ["--max-frame-seconds", "0"],
        ["--max-buffer-seconds", "-1"],
    ):
        with pytest.raises(ConfigError):
            build_config(parse(*bad), {})


async def test_cli_backends() -> None:
    assert isinstance(build_backend(parse("--backend", "fake"))(gw.StreamConfig()), FakeSTTService)
    with pytest.raises(ConfigError, match="backend-url"):
        build_backend(parse("--backend", "openai"))
    make: Callable[[gw.StreamConfig], STTService] = build_backend(
        parse(
            "--backend",
            "openai",
            "--backend-url",
            "http://127.0.0.1:9",
            "--backend-model",
            "m",
            "--interim-interval",
            "1",
        )
    )
    svc = make(gw.StreamConfig(language="de"))
    assert isinstance(svc, GLMServerSTTService)
    assert svc.language == "de"
    assert svc.interim_interval == 1.0
    assert make(gw.StreamConfig()).language is None
    await make.aclose()  # type: ignore[attr-defined]


async def test_cli_openai_backend_closes_its_pool_on_shutdown() -> None:
    backend = build_backend(parse("--backend", "openai", "--backend-url", "http://127.0.0.1:9"))
    backend(gw.StreamConfig())
    server = GatewayServer(backend)
    async with AppServer(server.app):
        pass
    assert backend._client is None  # type: ignore[attr-defined]
    await server.aclose()  # idempotent


async def test_cli_serve_runs_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from sttrouter.cli import serve as serve_cli

    started: list[AppServer] = []
    up = asyncio.Event()
    real_start = AppServer.start

    async def spy(self: AppServer) -> None:
        await real_start(self)
        started.append(self)
        up.set()

    monkeypatch.setattr(AppServer, "start", spy)
    args = parse("--backend", "fake", "--port", "0", "--log-level", "warning")
    server = GatewayServer(build_backend(args), build_config(args, {}))
    task = asyncio.create_task(serve_cli._serve(server, args))
    await asyncio.wait_for(up.wait(), 10)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{started[0].http_url}/health")).status_code == 200
    await started[0].stop()
    await task


async def test_a_failed_connect_is_not_retried_by_the_adapter() -> None:
    server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(server.app) as app:
        url = app.ws_url
    clock = FakeClock()
    svc = GLMServerSTTService(gateway_endpoint(url), clock=clock)
    with pytest.raises(ConnectionFailed):
        await svc.start_streaming()  # at once: no backoff sleeps on the clock, no retries
    assert clock.now() == 0.0
    assert not svc.is_streaming


def test_cli_builds_the_in_process_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    import sttrouter.providers as providers

    made: list[STTEndpoint] = []

    def fake_create(endpoint: STTEndpoint, **kwargs: Any) -> STTService:
        made.append(endpoint)
        return FakeSTTService()

    monkeypatch.setattr(providers, "create_service", fake_create)
    build_backend(parse("--backend", "offline"))(gw.StreamConfig())
    make = build_backend(
        parse("--backend", "glm-local", "--backend-model", "/models/glm", "--interim-interval", "2")
    )
    make(gw.StreamConfig())
    offline, glm = made
    assert (offline.provider, offline.needs_network) == ("offline", False)
    assert glm.provider == "glm_local"
    assert dict(glm.connection.options) == {"model": "/models/glm", "interim_interval": 2.0}


async def test_messages_over_the_size_limit_close_only_that_session() -> None:
    server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(server.app, ws_max_size=64 * 1024) as app:
        url = f"{app.ws_url}/v1/audio/stream"
        async with connect(url) as other, connect(url) as ws:
            await other.send(gw.serialize(gw.Start()))
            await ws.send(gw.serialize(gw.Start()))
            await ws.send(bytes(100 * 1024))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009  # message too big, refused by the WebSocket layer
            await send_speech(other, SPEECH.pcm)
            assert text_of(await finish(other)) == SPEECH.text


def test_websocket_failures_map_to_typed_errors() -> None:
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.frames import Close
    from websockets.http11 import Response

    from sttrouter.errors import AudioFormatError, ConnectTimeout, EndpointMisconfigured
    from sttrouter.providers._gateway_client import translate_ws

    def closed(code: int) -> ConnectionClosed:
        return ConnectionClosed(Close(code, "bye"), None)

    def status(code: int) -> InvalidStatus:
        return InvalidStatus(Response(code, "x", Headers(), b'{"error":"nope"}'))

    assert isinstance(translate_ws(closed(1008)), AuthenticationFailed)
    assert isinstance(translate_ws(closed(1013)), RateLimited)
    assert isinstance(translate_ws(closed(1011)), StreamingFailed)
    assert isinstance(translate_ws(closed(1000)), StreamingFailed)  # closed before it ended
    assert isinstance(translate_ws(status(401)), AuthenticationFailed)
    assert isinstance(translate_ws(status(404)), EndpointMisconfigured)
    assert isinstance(translate_ws(InvalidHandshake("bad upgrade")), ConnectionFailed)
    assert isinstance(translate_ws(TimeoutError()), ConnectTimeout)
    assert isinstance(translate_ws(OSError("refused")), ConnectionFailed)
    assert isinstance(translate_ws(RuntimeError("odd")), StreamingFailed)
    assert isinstance(translate_ws(status(413)), AudioFormatError)


async def test_gateway_in_front_of_an_openai_compatible_server_with_silero_vad() -> None:
    """serve --backend openai: gateway → segmenter (Silero VAD on real speech) → fake vLLM."""
    from sttrouter.testing.openai_server import FakeOpenAITranscriptionServer

    data, fmt = read_audio(AUDIO_DIR / "long_16k.wav")  # several sentences with pauses
    async with FakeOpenAITranscriptionServer(
        transcriber=lambda pcm, rate: f"{len(pcm) / 2 / rate:.1f}s of speech"
    ) as vllm:
        args = parse("--backend", "openai", "--backend-url", vllm.url)
        server = GatewayServer(build_backend(args), build_config(args, {}))
        async with AppServer(server.app) as app:
            svc = GLMServerSTTService(gateway_endpoint(app.ws_url))
            transcript = await svc.transcribe(data, fmt)
    finals = transcript.results
    assert len(finals) >= 3  # one request per spoken sentence
    assert len(vllm.transcriptions) == len(finals)
    assert all(r.transcript.endswith("s of speech") for r in finals)
    for a, b in itertools.pairwise(finals):
        assert b.start >= a.end - 1e-6
    spoken = sum(r.audio_seconds for r in vllm.transcriptions)
    assert spoken < fmt.seconds(len(data))  # the pauses were not sent
