"""The fake servers and the gateway's OpenAI endpoint, checked with the official ``openai`` SDK.

Skipped when the SDK is not installed (it is not a dependency of sttrouter; the check keeps the
fakes honest about the wire format the rest of the world speaks).
"""

from __future__ import annotations

import pytest

from sttrouter.gateway._runner import AppServer
from sttrouter.gateway.server import GatewayServer
from sttrouter.testing import FakeSTTService, synthetic_speech
from sttrouter.testing.openai_server import FakeOpenAITranscriptionServer, InjectedError
from sttrouter.wire import openai as wire

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.anyio

SPEECH = synthetic_speech((4, 3), gap_seconds=0.6)
WAV = wire.wav_bytes(SPEECH.pcm)


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "zai"])
async def test_sdk_transcribes_against_the_fakes(flavor: str) -> None:
    async with FakeOpenAITranscriptionServer(flavor=flavor) as srv:  # type: ignore[arg-type]
        async with openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="k") as client:
            result = await client.audio.transcriptions.create(
                model="glm-asr-2512", file=("a.wav", WAV, "audio/wav")
            )
            assert result.text == SPEECH.text
            text = await client.audio.transcriptions.create(
                model="glm-asr-2512", file=("a.wav", WAV, "audio/wav"), response_format="text"
            )
            assert str(text).strip() == SPEECH.text
            models = await client.models.list()
            assert [m.id for m in models.data] == [srv.model]
        form = srv.transcriptions[0].fields
        assert form["model"] == "glm-asr-2512"


async def test_sdk_streams_zai_events() -> None:
    """Z.AI's stream uses OpenAI's own event names, which the SDK types know."""
    async with FakeOpenAITranscriptionServer(flavor="zai") as srv:
        client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="k")
        async with client:
            stream = await client.audio.transcriptions.create(
                model="glm-asr-2512", file=("a.wav", WAV, "audio/wav"), stream=True
            )
            events = [event async for event in stream]
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == SPEECH.text


async def test_sdk_sees_injected_errors_with_their_messages() -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        srv.fail_next(InjectedError(429, "slow down please"))
        srv.fail_next(InjectedError(400, "bad audio", shape="object"))
        async with openai.AsyncOpenAI(
            base_url=f"{srv.url}/v1", api_key="k", max_retries=0
        ) as client:
            with pytest.raises(openai.RateLimitError, match="slow down please"):
                await client.audio.transcriptions.create(
                    model="m", file=("a.wav", WAV, "audio/wav")
                )
            with pytest.raises(openai.BadRequestError, match="bad audio"):
                await client.audio.transcriptions.create(
                    model="m", file=("a.wav", WAV, "audio/wav")
                )


async def test_sdk_against_the_gateway() -> None:
    server = GatewayServer(lambda config: FakeSTTService())
    async with AppServer(server.app) as app:
        client = openai.AsyncOpenAI(base_url=f"{app.http_url}/v1", api_key="k")
        async with client:
            result = await client.audio.transcriptions.create(
                model="sttrouter", file=("a.wav", WAV, "audio/wav")
            )
            assert result.text == SPEECH.text
            models = await client.models.list()
            assert models.data[0].id == "sttrouter"
