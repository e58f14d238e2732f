"""The gateway's ``/v1/audio/transcriptions`` through the official ``openai`` SDK.

A real server on 127.0.0.1 port 0 in front of the fake engine (which decodes the synthetic
speech marks into words with times); the sync client runs in a worker thread so the event
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import httpx
import openai
import pytest

from sttrouter.gateway import protocol as gw
from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.server import GatewayConfig, GatewayServer
from sttrouter.service import STTService
from sttrouter.testing import FakeSTTService, synthetic_speech
from sttrouter.wire import openai as wire

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((3, 4), gap_seconds=0.5)
WAV = wire.wav_bytes(SPEECH.pcm)
TOKEN = "s3cret"


class Recording:
    """A backend that remembers the services it made."""

    def __init__(self, **fake: Any) -> None:
        self.fake = fake
        self.made: list[FakeSTTService] = []

    def __call__(self, config: gw.StreamConfig) -> STTService:
        svc = FakeSTTService(**self.fake)
        self.made.append(svc)
        return svc


@pytest.fixture
async def served() -> AsyncIterator[tuple[GatewayServer, str, Recording]]:
    backend = Recording()
    server = GatewayServer(backend, GatewayConfig(token=TOKEN, model="whisper-1"))
    async with AppServer(server.app) as app:
        yield server, f"{app.http_url}/v1", backend


def sync_client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0)


def async_client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base, api_key=TOKEN, max_retries=0)


def upload() -> tuple[str, bytes, str]:
    return ("speech.wav", WAV, "audio/wav")


async def test_sync_client_every_response_format(
    served: tuple[GatewayServer, str, Recording],
) -> None:
    _, base, _ = served
    client = sync_client(base)

    def create(**kw: Any) -> Any:
        return client.audio.transcriptions.create(model="whisper-1", file=upload(), **kw)

    try:
        plain = await anyio.to_thread.run_sync(lambda: create())
        assert plain.text == SPEECH.text
        text = await anyio.to_thread.run_sync(lambda: create(response_format="text"))
        assert text.strip() == SPEECH.text
        verbose = await anyio.to_thread.run_sync(
            lambda: create(response_format="verbose_json", timestamp_granularities=["word"])
        )
        assert verbose.text == SPEECH.text
        assert verbose.duration == pytest.approx(SPEECH.duration, abs=0.01)
        assert all(s.start < s.end for s in verbose.segments)
        assert " ".join(s.text for s in verbose.segments) == SPEECH.text
        assert [w.word for w in verbose.words] == SPEECH.text.split()
        assert all(a.end <= b.start + 1e-6 for a, b in itertools_pairwise(verbose.words))
        no_words = await anyio.to_thread.run_sync(lambda: create(response_format="verbose_json"))
        assert getattr(no_words, "words", None) is None
        srt = await anyio.to_thread.run_sync(lambda: create(response_format="srt"))
        assert srt.startswith("1\n00:00:00,")
        assert " --> " in srt
        assert len(verbose.segments) == srt.count(" --> ")
        vtt = await anyio.to_thread.run_sync(lambda: create(response_format="vtt"))
        assert vtt.startswith("WEBVTT\n\n00:00:00.")
        assert SPEECH.text.split()[0] in vtt
    finally:
        client.close()


def itertools_pairwise(items: Any) -> Any:
    items = list(items)
    return itertools.pairwise(items)


async def test_async_client_json_and_stream(served: tuple[GatewayServer, str, Recording]) -> None:
    _, base, backend = served
    async with async_client(base) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=upload(), language="en", prompt="Names: w1."
        )
        assert result.text == SPEECH.text
        assert backend.made[-1].options_received[-1].language == "en"
        assert backend.made[-1].options_received[-1].prompt == "Names: w1."
        stream = await client.audio.transcriptions.create(
            model="whisper-1", file=upload(), stream=True
        )
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done"
    assert set(kinds[:-1]) == {"transcript.text.delta"}
    assert "".join(e.delta for e in events[:-1]) == SPEECH.text
    done = events[-1]
    assert done.text == SPEECH.text
    assert done.usage is not None


async def test_sync_stream(served: tuple[GatewayServer, str, Recording]) -> None:
    _, base, _ = served
    client = sync_client(base)

    def run() -> list[Any]:
        stream = client.audio.transcriptions.create(
            model="whisper-1", file=upload(), stream=True, response_format="text"
        )
        return list(stream)

    try:
        events = await anyio.to_thread.run_sync(run)
    finally:
        client.close()
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == SPEECH.text


async def test_errors_are_openai_error_objects(
    served: tuple[GatewayServer, str, Recording],
) -> None:
    _server, base, _ = served
    async with async_client(base) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.audio.transcriptions.create(model="gpt-nope", file=upload())
        assert missing.value.code == "model_not_found"
        assert missing.value.param == "model"
        assert missing.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as fmt:
            await client.audio.transcriptions.create(
                model="whisper-1",
                file=upload(),
                response_format="mp3",  # type: ignore[arg-type]
            )
        assert fmt.value.param == "response_format"
        with pytest.raises(openai.BadRequestError) as stream_srt:
            await client.audio.transcriptions.create(
                model="whisper-1",
                file=upload(),
                stream=True,
                response_format="srt",  # type: ignore[call-overload]
            )
        assert stream_srt.value.param == "stream"
        with pytest.raises(openai.BadRequestError) as grain:
            await client.audio.transcriptions.create(
                model="whisper-1", file=upload(), timestamp_granularities=["word"]
            )
        assert grain.value.param == "timestamp_granularities[]"
        with pytest.raises(openai.BadRequestError) as lang:
            await client.audio.transcriptions.create(
                model="whisper-1", file=upload(), language="not a language"
            )
        assert lang.value.param == "language"
        with pytest.raises(openai.BadRequestError) as empty:
            await client.audio.transcriptions.create(
                model="whisper-1", file=("e.wav", b"", "audio/wav")
            )
        assert "empty file" in empty.value.message
        with pytest.raises(openai.BadRequestError) as junk:
            await client.audio.transcriptions.create(
                model="whisper-1", file=("x.mp3", b"\x01not audio" * 50, "audio/mpeg")
            )
        assert "BytesIO" not in junk.value.message
        assert "WAV, FLAC or OGG" in junk.value.message
        for error in (missing, fmt, lang, empty, junk):
            assert isinstance(error.value.code, str)
    async with openai.AsyncOpenAI(base_url=base, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as auth:
            await bad.audio.transcriptions.create(model="whisper-1", file=upload())
        assert auth.value.code == "invalid_api_key"
    async with httpx.AsyncClient() as raw:
        for r in (
            await raw.get(f"{base}/nowhere"),
            await raw.get(f"{base}/audio/transcriptions"),
        ):
            assert r.status_code in (404, 405)
            body = r.json()["error"]
            assert body["type"] == "invalid_request_error"
            assert isinstance(body["code"], str)


async def test_unsupported_options_are_refused_not_dropped() -> None:
    server = GatewayServer(Recording(supported_options=()), GatewayConfig(model="m"))
    async with AppServer(server.app) as app, async_client(f"{app.http_url}/v1") as client:
        with pytest.raises(openai.BadRequestError) as lang:
            await client.audio.transcriptions.create(model="m", file=upload(), language="fr")
        assert lang.value.param == "language"
        assert lang.value.code == "unsupported_option"
        with pytest.raises(openai.BadRequestError) as prompt:
            await client.audio.transcriptions.create(model="m", file=upload(), prompt="hello")
        assert prompt.value.param == "prompt"
        plain = await client.audio.transcriptions.create(model="m", file=upload())
        assert plain.text == SPEECH.text
        models = await client.models.list()
        assert [m.id for m in models.data] == ["m"]
        async with httpx.AsyncClient() as raw:  # a refused option is the request's fault
            assert (await raw.get(f"{app.http_url}/ready")).status_code == 200


async def test_a_blocked_engine_leaves_health_and_other_requests_served() -> None:
    """An engine blocked in its worker thread (until the test releases it) holds one
    request; /health answers, and the request over ``max_requests`` is refused at once with
    503 and Retry-After instead of queueing."""
    release = threading.Event()
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Blocking(FakeSTTService):
        async def _send(self, pcm: bytes) -> None:
            if not entered.is_set():
                loop.call_soon_threadsafe(entered.set)
                await anyio.to_thread.run_sync(release.wait)
            await super()._send(pcm)

    server = GatewayServer(lambda config: Blocking(), GatewayConfig(max_requests=1))
    async with AppServer(server.app) as app, async_client(f"{app.http_url}/v1") as client:
        first = asyncio.create_task(
            client.audio.transcriptions.create(model="sttrouter", file=upload())
        )
        await entered.wait()
        async with httpx.AsyncClient() as raw:
            assert (await raw.get(f"{app.http_url}/health")).json() == {"status": "ok"}
        with pytest.raises(openai.InternalServerError) as busy:
            await client.audio.transcriptions.create(model="sttrouter", file=upload())
        assert busy.value.status_code == 503
        assert busy.value.response.headers["retry-after"] == "1"
        assert busy.value.code == "server_busy"
        release.set()
        assert (await first).text == SPEECH.text


def test_upload_of_a_flac_file_decodes_in_a_thread() -> None:
    import numpy as np
    import soundfile

    from sttrouter.gateway.http import decode_upload

    flac = io.BytesIO()
    soundfile.write(flac, np.frombuffer(SPEECH.pcm, dtype="<i2"), 16000, format="FLAC")
    pcm, fmt = decode_upload(flac.getvalue())
    assert fmt.sample_rate == 16000
    assert fmt.seconds(len(pcm)) == pytest.approx(SPEECH.duration, abs=0.01)
    for bad in (b"", wire.wav_bytes(b"")):
        with pytest.raises(ValueError, match="empty file"):
            decode_upload(bad)
