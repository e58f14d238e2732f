"""GLMServerSTTService in ``openai`` mode against fake vLLM, SGLang and Z.AI servers (sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    EndpointMisconfigured,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    StreamStalled,
)
from sttrouter.providers import create_service
from sttrouter.providers.glm_server import GLMServerSTTService, OpenAITranscriptionClient
from sttrouter.providers.segmenter import LOW_CONFIDENCE
from sttrouter.testing import check_stt_service, synthetic_speech
from sttrouter.testing.openai_server import (
    FakeOpenAITranscriptionServer,
    InjectedError,
    read_marks,
)

pytestmark = pytest.mark.anyio

VAD = {"backend": "energy", "energy_floor_seconds": 60.0, "min_silence_seconds": 0.3}
SPEECH = synthetic_speech((4, 3), gap_seconds=0.6, lead_seconds=0.3)


def endpoint(url: str, **options: Any) -> STTEndpoint:
    options.setdefault("vad", VAD)
    key_env = options.pop("api_key_env", None)
    return STTEndpoint(
        id="glm",
        provider="glm_server",
        location=Location.SELF_HOSTED,
        connection=ConnectionConfig(base_url=url, api_key_env=key_env, options=options),
    )


@pytest.fixture(params=["vllm", "sglang", "zai"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeOpenAITranscriptionServer]:
    async with FakeOpenAITranscriptionServer(flavor=request.param) as srv:
        yield srv


@pytest.mark.parametrize("sse", [False, True])
async def test_conformance_against_each_server(
    server: FakeOpenAITranscriptionServer, sse: bool
) -> None:
    ep = endpoint(server.url, sse=sse, flavor=server.flavor)
    results = await check_stt_service(lambda: create_service(ep), SPEECH.pcm)
    finals = [r for r in results if r.is_final]
    assert " ".join(r.transcript for r in finals) == SPEECH.text
    assert [round(r.start, 1) for r in finals] == [0.1, 1.1]  # 0.2 s padding
    form = server.transcriptions[0].fields
    assert form.get("stream") == ("true" if sse else None)
    if server.flavor == "zai":
        assert form["model"] == "glm-asr-2512"
        assert "max_completion_tokens" not in form
    else:
        assert form["temperature"] == "0.0"
        assert int(form["max_completion_tokens"]) >= 48


async def test_long_stream_is_cut_into_requests_of_at_most_30_seconds() -> None:
    async with FakeOpenAITranscriptionServer(flavor="zai") as srv:
        svc = GLMServerSTTService(endpoint(srv.url, flavor="zai", max_segment_seconds=60.0))
        assert svc.max_segment_seconds == 30.0  # Z.AI's limit wins
        # 35 s with no pause long enough to end the utterance (0.1 s gaps)
        speech = synthetic_speech((10,) * 32, gap_seconds=0.1)
        transcript = await svc.transcribe(speech.pcm)
        assert transcript.text == speech.text
        assert max(r.audio_seconds for r in srv.transcriptions) <= 30.0
        assert len(srv.transcriptions) == 2
        assert not transcript.results[0].is_end_of_utterance


async def test_short_clip_is_one_request_and_flac_works() -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        svc = GLMServerSTTService(endpoint(srv.url, upload_format="flac"))
        # the fake reads WAV only: a FLAC upload is refused as the wrong format, by the server
        with pytest.raises(EndpointMisconfigured, match="WAV"):
            await svc.transcribe(SPEECH.pcm)
        svc = GLMServerSTTService(endpoint(srv.url, model="glm-asr"))
        transcript = await svc.transcribe(SPEECH.pcm)
        assert transcript.text == SPEECH.text
        assert len(transcript.results) == 1
        assert srv.transcriptions[-1].fields["model"] == "glm-asr"
        assert svc.metrics.finals == 1


async def test_repetition_loop_is_retried_with_a_penalty() -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        svc = GLMServerSTTService(endpoint(srv.url))
        srv.loop_next(1)
        transcript = await svc.transcribe(SPEECH.pcm)
        assert transcript.text == SPEECH.text
        first, retry = srv.transcriptions
        assert "repetition_penalty" not in first.fields
        assert float(retry.fields["repetition_penalty"]) > 1.0


async def test_a_loop_that_persists_is_trimmed_and_marked_low_confidence() -> None:
    async with FakeOpenAITranscriptionServer(flavor="zai") as srv:  # no penalty knob on Z.AI
        svc = GLMServerSTTService(endpoint(srv.url, flavor="zai"))
        srv.loop_next(2)
        transcript = await svc.transcribe(SPEECH.pcm)
        assert transcript.text == SPEECH.text + " and then"
        assert transcript.results[0].confidence == LOW_CONFIDENCE


async def test_bearer_key_is_sent_and_a_wrong_one_is_permanent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeOpenAITranscriptionServer(token="right") as srv:
        monkeypatch.setenv("GLM_KEY", "right")
        ok = GLMServerSTTService(endpoint(srv.url, api_key_env="GLM_KEY"))
        await ok.probe()
        assert (await ok.transcribe(SPEECH.pcm)).text == SPEECH.text
        monkeypatch.setenv("GLM_KEY", "wrong")
        bad = GLMServerSTTService(endpoint(srv.url, api_key_env="GLM_KEY"))
        with pytest.raises(AuthenticationFailed, match="401"):
            await bad.transcribe(SPEECH.pcm)
        with pytest.raises(AuthenticationFailed):
            await bad.probe()


@pytest.mark.parametrize(
    ("injected", "expected"),
    [
        (InjectedError(500, "engine crashed", shape="object"), StreamingFailed),
        (InjectedError(503, "overloaded"), StreamingFailed),
        (InjectedError(429, "slow down", retry_after=2.5), RateLimited),
        (InjectedError(402, "no credit", shape="zai", code="1113"), QuotaExceeded),
        (InjectedError(404, "The model `x` does not exist."), EndpointMisconfigured),
        (InjectedError(400, "bad field"), EndpointMisconfigured),
        (InjectedError(413, "too big"), AudioFormatError),
    ],
)
async def test_http_errors_map_to_typed_errors(
    injected: InjectedError, expected: type[Exception]
) -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        srv.fail_next(injected)
        svc = GLMServerSTTService(endpoint(srv.url))
        with pytest.raises(expected, match=injected.message) as info:
            await svc.transcribe(SPEECH.pcm)
        assert info.value.endpoint_id == "glm"
        if isinstance(info.value, RateLimited):
            assert info.value.retry_after == 2.5


@pytest.mark.parametrize("flavor", ["vllm", "sglang"])
async def test_error_in_the_middle_of_an_sse_stream_fails_the_stream(flavor: str) -> None:
    async with FakeOpenAITranscriptionServer(flavor=flavor) as srv:  # type: ignore[arg-type]
        srv.fail_next(InjectedError(500, "decoder died", mid_stream=True))
        svc = GLMServerSTTService(endpoint(srv.url, sse=True))
        results = await svc.start_streaming()
        for chunk in SPEECH.chunks(0.1):
            await svc.send_audio(chunk)
        with pytest.raises(StreamingFailed, match="decoder died"):
            await svc.stop_streaming()
        with pytest.raises(StreamingFailed):
            async for _ in results:
                pass


async def test_sse_without_done_is_malformed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=b'data: {"type":"transcript.text.delta","delta":"x"}\n\n',
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        engine = OpenAITranscriptionClient("http://glm.test", sse=True, client=client)
        with pytest.raises(MalformedResponse, match="DONE"):
            await engine.transcribe_segment(SPEECH.pcm, 16000)


async def test_garbage_json_is_malformed_and_timeouts_are_stalls() -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"nope": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(garbage)) as client:
        engine = OpenAITranscriptionClient("http://glm.test", client=client, api_key="k")
        with pytest.raises(MalformedResponse, match="text"):
            await engine.transcribe_segment(SPEECH.pcm, 16000)
        assert client.headers["authorization"] == "Bearer k"

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        engine = OpenAITranscriptionClient("http://glm.test", client=client)
        with pytest.raises(StreamStalled):
            await engine.transcribe_segment(SPEECH.pcm, 16000)


async def test_dead_server_is_connection_failed() -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        url = srv.url
    svc = GLMServerSTTService(endpoint(url))
    with pytest.raises(ConnectionFailed):
        await svc.probe()
    with pytest.raises(ConnectionFailed):
        await svc.transcribe(SPEECH.pcm)


async def test_probe_uses_models_then_health_and_bills_nothing() -> None:
    async with FakeOpenAITranscriptionServer() as srv:
        svc = GLMServerSTTService(endpoint(srv.url))
        await svc.probe()
        assert [r.path for r in srv.requests] == ["/v1/models"]
        srv.healthy = False
        with pytest.raises(StreamingFailed, match="503"):
            await svc.probe()
        assert srv.transcriptions == []

    def no_models(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/paas/v4/models":
            return httpx.Response(404)
        assert request.url.path == "/health"
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(no_models)) as client:
        engine = OpenAITranscriptionClient("https://api.z.ai/api/paas/v4", client=client)
        await engine.probe()
        assert engine.api_root == "https://api.z.ai/api/paas/v4"


async def test_zai_url_is_recognised_and_over_long_clips_are_refused() -> None:
    ep = endpoint("https://api.z.ai/api/paas/v4")
    svc = GLMServerSTTService(ep)
    assert svc.flavor == "zai"
    engine = OpenAITranscriptionClient("https://api.z.ai/api/paas/v4", flavor="zai")
    assert engine.max_seconds == 30.0
    with pytest.raises(AudioFormatError, match="30 s"):
        await engine.transcribe_segment(bytes(31 * 32000), 16000)
    await engine.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "grpc"}, "mode"),
        ({"frame_seconds": 2.0}, "frame_seconds"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": "soon"}, "timeout"),
        ({"max_segment_seconds": 0.5}, "max_segment_seconds"),
        ({"interim_interval": 0}, "interim_interval"),
        ({"flavor": "whisper"}, "flavor"),
        ({"vad": "loud"}, "vad"),
        ({"vad": {"loudness": 3}}, "vad"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        GLMServerSTTService(endpoint("http://127.0.0.1:1", **kwargs))
    assert info.value.field == field


def test_base_url_is_required_and_client_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        GLMServerSTTService(STTEndpoint(id="x", provider="glm_server"))
    with pytest.raises(ConfigError, match="flavor"):
        OpenAITranscriptionClient("http://x", flavor="whisper")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="upload_format"):
        OpenAITranscriptionClient("http://x", upload_format="mp3")  # type: ignore[arg-type]


def test_read_marks_reads_synthetic_speech() -> None:
    assert read_marks(SPEECH.pcm) == SPEECH.text
    assert read_marks(b"") == ""


async def test_stream_options_reach_the_request_and_finalize_cuts_a_segment() -> None:
    from sttrouter.options import StreamOptions

    async with FakeOpenAITranscriptionServer() as srv:
        svc = GLMServerSTTService(endpoint(srv.url))
        options = StreamOptions(language="en-GB", prompt="A physics lesson.", keywords=("GLM",))
        results = await svc.start_streaming(options=options)
        first_end = SPEECH.utterances[0][1]
        split = round(first_end * 16000 * 2) // 2 * 2 - 3200  # inside the first utterance
        await svc.send_audio(SPEECH.pcm[:split])
        await svc.finalize()
        await svc.send_audio(SPEECH.pcm[split:])
        await svc.stop_streaming()
        finals = [r async for r in results if r.is_final and r.transcript]
        form = srv.transcriptions[0].fields
        assert (form["language"], form["prompt"]) == ("en", "A physics lesson. GLM")
        assert len(srv.transcriptions) == 3  # the first utterance was cut in two
        assert " ".join(r.transcript for r in finals) == SPEECH.text
        # the batch path records its latency like every engine's
        await svc.transcribe(SPEECH.pcm)
        assert svc.metrics.latency_count == len(finals) + 1
