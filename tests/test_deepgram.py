"""DeepgramSTTService through the real deepgram-sdk against FakeDeepgramServer."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from sttrouter.audio import ENGINE_FORMAT, AudioFormat, read_audio
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
    STTError,
    UnsupportedOption,
)
from sttrouter.options import StreamOptions
from sttrouter.providers import create_service
from sttrouter.providers.deepgram import DeepgramSTTService, deepgram_endpoint
from sttrouter.results import STTResult
from sttrouter.service import iter_chunks, stream_transcribe
from sttrouter.testing import (
    FakeClock,
    FakeDeepgramServer,
    FaultPlan,
    ServerFault,
    check_stt_service,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

KEY = "dg-test-key"
# The fake is scripted, so only the audio's duration matters; synthetic speech has real
# speech energy where the script puts words.
SPEECH = synthetic_speech((4, 5), word_seconds=0.15, lead_seconds=0.3)
SAMPLE_SCRIPT = [
    ("Hello there, my friend.", *SPEECH.utterances[0]),
    ("How are you doing today?", *SPEECH.utterances[1]),
]


def sample_pcm() -> bytes:
    return SPEECH.pcm


AUDIO = Path(__file__).resolve().parents[1] / "examples" / "audio"
# Speech spans of the committed espeak clips (RMS over 20 ms windows above -40 dBFS).
HELLO_TEXT = (AUDIO / "hello.txt").read_text().strip()
HELLO_SCRIPT = [(HELLO_TEXT, 0.32, 4.52)]
FOX_TEXT = (AUDIO / "fox.txt").read_text().strip()
FOX_SCRIPT = [(FOX_TEXT, 0.3, 3.56)]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepgramServer]:
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY) as s:
        yield s


def service(server: FakeDeepgramServer, clock: Any = None, **options: Any) -> DeepgramSTTService:
    endpoint = deepgram_endpoint(base_url=server.base_url, options=options)
    return DeepgramSTTService(endpoint, clock=clock)


async def stream(svc: DeepgramSTTService, pcm: bytes, chunk: float = 0.02) -> list[STTResult]:
    out: list[STTResult] = []
    await stream_transcribe(svc, pcm, ENGINE_FORMAT, chunk_seconds=chunk, on_result=out.append)
    return out


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until the server (in this event loop) has observed something."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - polling state another task mutates
            await anyio.sleep(0.01)


async def test_streams_interims_then_finals_with_word_times(server: FakeDeepgramServer) -> None:
    svc = service(server, utterance_end_ms=1000, vad_events=True)
    out = await stream(svc, sample_pcm())
    finals = [r for r in out if r.is_final and r.transcript]
    assert [r.transcript for r in finals] == [u[0] for u in SAMPLE_SCRIPT]
    assert all(r.is_end_of_utterance for r in finals)
    # interims grow word by word before each final
    interims = [r.transcript for r in out if not r.is_final and r.transcript]
    assert interims[:3] == ["Hello", "Hello there,", "Hello there, my"]
    words = [w for r in finals for w in r.words]
    expected = [w for utt in server.script for w in utt.words]
    assert [(w.word, w.start, w.end) for w in words] == [
        (e.text, pytest.approx(e.start), pytest.approx(e.end)) for e in expected
    ]
    assert all(r.endpoint_id == "deepgram" for r in out)
    assert any(not r.is_final and not r.transcript for r in out)  # SpeechStarted
    session = server.sessions[0]
    assert session.query["model"] == "nova-3"
    assert session.query["interim_results"] == "true"
    assert session.query["utterance_end_ms"] == "1000"
    assert session.query["vad_events"] == "true"
    assert session.query["endpointing"] == "300"
    assert session.query["sample_rate"] == "16000"
    assert session.controls[-2:] == ["Finalize", "CloseStream"]
    assert session.close_code == 1000
    assert session.audio_bytes == len(sample_pcm())
    assert svc.request_id


async def test_options_reach_the_server(server: FakeDeepgramServer) -> None:
    svc = service(
        server,
        model="nova-2",
        language="de",
        punctuate=False,
        smart_format=True,
        endpointing=False,
        interim_results=False,
    )
    out = await stream(svc, sample_pcm())
    q = server.sessions[0].query
    assert (q["model"], q["language"], q["punctuate"], q["smart_format"], q["endpointing"]) == (
        "nova-2",
        "de",
        "false",
        "true",
        "false",
    )
    assert q["interim_results"] == "false"
    assert all(r.is_final for r in out)
    assert all(r.language == "de" for r in out)
    # endpointing off: no speech_final, so nothing ends an utterance without UtteranceEnd
    assert not any(r.is_end_of_utterance for r in out)


async def test_utterance_end_closes_an_open_utterance(server: FakeDeepgramServer) -> None:
    svc = service(server, endpointing=False, utterance_end_ms=300)
    out = await stream(svc, sample_pcm())
    ends = [r for r in out if r.is_end_of_utterance]
    assert ends
    assert all(r.is_final and r.transcript == "" and r.duration == 0 for r in ends)
    assert ends[0].start == pytest.approx(server.script[0].end)


async def test_finalize_flushes_words_heard_so_far(server: FakeDeepgramServer) -> None:
    utt = server.script[0]
    cut = (utt.words[0].end + utt.words[1].end) / 2  # mid second word
    out = await stream(service(server), sample_pcm()[: ENGINE_FORMAT.bytes_for(cut)])
    finals = [r for r in out if r.is_final]
    assert [r.transcript for r in finals] == [utt.words[0].text]
    assert not finals[0].is_end_of_utterance


async def test_conformance(server: FakeDeepgramServer) -> None:
    await check_stt_service(lambda: service(server), sample_pcm())


async def test_conformance_resampled_input(server: FakeDeepgramServer) -> None:
    import numpy as np
    import soxr

    pcm = np.frombuffer(sample_pcm(), dtype="<i2").astype(np.float32) / 32768
    pcm48 = soxr.resample(pcm, 16000, 48000).astype("<f4").tobytes()
    fmt = AudioFormat(48000, 1, "pcm_f32le")
    out = await check_stt_service(lambda: service(server), pcm48, fmt)
    assert any(r.transcript for r in out if r.is_final)


async def test_batch_prerecorded(server: FakeDeepgramServer) -> None:
    svc = service(server, smart_format=True)
    transcript = await svc.transcribe(sample_pcm(), ENGINE_FORMAT)
    assert transcript.text == " ".join(u[0] for u in SAMPLE_SCRIPT)
    expected = [w for utt in server.script for w in utt.words]
    assert [(w.word, w.start, w.end) for w in transcript.words] == [
        (e.text, pytest.approx(e.start), pytest.approx(e.end)) for e in expected
    ]
    req = server.requests[-1]
    assert (req.method, req.path, req.query["model"], req.query["smart_format"]) == (
        "POST",
        "/v1/listen",
        "nova-3",
        "true",
    )
    assert svc.metrics.audio_seconds == pytest.approx(ENGINE_FORMAT.seconds(len(sample_pcm())))
    assert svc.metrics.cost > 0


async def test_probe_bills_nothing(server: FakeDeepgramServer) -> None:
    await service(server).probe()
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/projects")]
    assert not server.sessions


async def test_probe_path_for_self_hosted(
    server: FakeDeepgramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service(server, probe_path="v1/projects").probe()
    assert [(r.method, r.path, r.status) for r in server.requests] == [("GET", "/v1/projects", 200)]
    with pytest.raises(EndpointMisconfigured, match="404"):
        await service(server, probe_path="/no/such/route").probe()
    monkeypatch.setenv("DEEPGRAM_API_KEY", "wrong")
    with pytest.raises(AuthenticationFailed):
        await service(server, probe_path="/v1/projects").probe()


async def test_probe_and_batch_with_a_wrong_key(
    server: FakeDeepgramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "wrong")
    svc = service(server)
    with pytest.raises(AuthenticationFailed) as info:
        await svc.probe()
    assert "wrong" not in str(info.value)
    assert "DEEPGRAM_API_KEY" in str(info.value)
    with pytest.raises(AuthenticationFailed):
        await svc.transcribe(sample_pcm(), ENGINE_FORMAT)
    with pytest.raises(AuthenticationFailed) as info2:
        await svc.start_streaming()
    assert "wrong" not in str(info2.value)
    assert not svc.is_streaming


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (ServerFault(http_status=400, reason="failed to process audio"), AudioFormatError),
        (ServerFault(http_status=400, reason="unknown model"), EndpointMisconfigured),
        (ServerFault(http_status=402, reason="no credit"), QuotaExceeded),
        (ServerFault(http_status=429, reason="slow down"), RateLimited),
        (ServerFault(http_status=503, reason="busy"), ConnectionFailed),
    ],
)
async def test_batch_errors(fault: ServerFault, error: type[STTError]) -> None:
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=[fault]) as srv:
        svc = service(srv)
        with pytest.raises(error):
            await svc.transcribe(sample_pcm(), ENGINE_FORMAT)
        assert svc.metrics.errors == 1


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (FaultPlan.auth_error(), AuthenticationFailed),
        (FaultPlan.quota_exceeded(), QuotaExceeded),
        (FaultPlan.rate_limited(), RateLimited),
        (FaultPlan.fail_on_connect(), ConnectionFailed),
        ([ServerFault(http_status=500, reason="boom")], ConnectionFailed),
        ([ServerFault(http_status=400, reason="bad model")], EndpointMisconfigured),
    ],
)
async def test_handshake_faults(faults: Any, error: type[STTError]) -> None:
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        svc = service(srv)
        with pytest.raises(error) as info:
            await svc.start_streaming()
        assert info.value.endpoint_id == "deepgram"
        assert not svc.is_streaming
        assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (FaultPlan.drop_after(0.5), StreamingFailed),
        (FaultPlan.stall_after(0.5) | FaultPlan.drop_after(0.6), StreamingFailed),
        (FaultPlan.auth_error(after=0.5), AuthenticationFailed),
        (FaultPlan.quota_exceeded(after=0.5), QuotaExceeded),
        (FaultPlan.rate_limited(after=0.5), RateLimited),
        (FaultPlan.malformed_after(0.5), MalformedResponse),
        ([ServerFault(after=0.5, close_code=1002, reason="DATA-0000")], AudioFormatError),
        ([ServerFault(after=0.5, close_code=1011, reason="internal")], StreamingFailed),
        ([ServerFault(after=0.5, close_code=1000, in_band=False)], StreamingFailed),
    ],
)
async def test_mid_stream_faults(faults: Any, error: type[STTError]) -> None:
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        svc = service(srv)
        with pytest.raises(error) as info:
            await stream(svc, sample_pcm())
        assert info.value.endpoint_id == "deepgram"
        assert not svc.is_streaming


async def test_in_band_error_fails_the_stream() -> None:
    fault = ServerFault(after=0.3, close_code=1011, reason="Insufficient balance on project")
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=[fault]) as srv:
        with pytest.raises(QuotaExceeded):
            await stream(service(srv), sample_pcm())


async def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    svc = DeepgramSTTService(deepgram_endpoint(base_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(ConnectionFailed):
        await svc.start_streaming()
    with pytest.raises(ConnectionFailed):
        await svc.probe()


async def test_missing_key_is_a_config_error(
    server: FakeDeepgramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    with pytest.raises(EndpointMisconfigured, match="DEEPGRAM_API_KEY"):
        await service(server).start_streaming()


async def test_keepalive_during_silence(server: FakeDeepgramServer) -> None:
    clock = FakeClock()
    svc = service(server, clock)
    results = await svc.start_streaming()
    await svc.send_audio(sample_pcm()[:3200])
    await clock.advance(4.9)
    await clock.advance(0.2)
    await eventually(lambda: "KeepAlive" in server.sessions[0].controls)
    await clock.advance(5.0)
    await eventually(lambda: server.sessions[0].controls.count("KeepAlive") == 2)
    await svc.send_audio(sample_pcm()[:3200])
    await clock.advance(4.0)  # audio went out 4 s ago: no KeepAlive yet
    await svc.stop_streaming()
    assert server.sessions[0].controls == ["KeepAlive", "KeepAlive", "Finalize", "CloseStream"]
    assert [r async for r in results] == []


async def test_unknown_messages_are_skipped() -> None:
    # a newer server's message type reaches the adapter through the real SDK and is skipped
    faults = [ServerFault(after=0.2, text='{"type": "FancyNewEvent", "x": 1}')]
    async with FakeDeepgramServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        svc = service(srv)
        out = await stream(svc, sample_pcm())
        await svc._handle(None)  # what the SDK's iterator yields for unknown types
        await svc._handle(b"\x00")
    assert [r.transcript for r in out if r.is_final] == [u[0] for u in SAMPLE_SCRIPT]


async def test_factory_and_config_errors(server: FakeDeepgramServer) -> None:
    ep = deepgram_endpoint(base_url=server.base_url)
    assert isinstance(create_service(ep), DeepgramSTTService)
    assert ep.cost_per_hour == Decimal("0.258")
    assert deepgram_endpoint(cost_per_hour="0.5").cost_per_hour == Decimal("0.5")
    with pytest.raises(ConfigError):
        service(server, endpointing="soon")
    with pytest.raises(ConfigError):
        service(server, keepalive_seconds=0)
    assert KEY not in repr(service(server))


async def test_committed_sample_through_the_sdk() -> None:
    pcm, fmt = read_audio(AUDIO / "hello_16k.wav")
    async with FakeDeepgramServer(HELLO_SCRIPT, api_key=KEY) as srv:
        out = await stream(service(srv), pcm)
        await check_stt_service(lambda: service(srv), pcm, fmt)
        batch = await service(srv).transcribe(AUDIO / "hello_16k.wav")
    finals = [r for r in out if r.is_final and r.transcript]
    assert [r.transcript for r in finals] == [HELLO_TEXT]
    expected = [w for utt in srv.script for w in utt.words]
    assert len(expected) == len(HELLO_TEXT.split())
    for got in (finals[0].words, batch.words):
        assert [(w.word, w.start, w.end) for w in got] == [
            (e.text, pytest.approx(e.start), pytest.approx(e.end)) for e in expected
        ]
    interims = [r.transcript for r in out if not r.is_final and r.transcript]
    assert interims == [" ".join(HELLO_TEXT.split()[:n]) for n in range(1, len(expected))]
    assert batch.text == HELLO_TEXT


async def test_committed_48k_stereo_sample_is_converted() -> None:
    pcm, fmt = read_audio(AUDIO / "fox_48k_stereo.wav")
    assert (fmt.sample_rate, fmt.channels) == (48000, 2)
    async with FakeDeepgramServer(FOX_SCRIPT, api_key=KEY) as srv:
        out = await check_stt_service(lambda: service(srv), pcm, fmt)
        q = srv.sessions[0].query
    assert [r.transcript for r in out if r.is_final and r.transcript] == [FOX_TEXT]
    assert (q["sample_rate"], q["encoding"]) == ("16000", "linear16")
    # what reached the server is the clip at 16 kHz mono (soxr keeps the length)
    assert ENGINE_FORMAT.seconds(srv.sessions[0].audio_bytes) == pytest.approx(
        fmt.seconds(len(pcm)), abs=0.01
    )


async def test_cancel_mid_stream_ends_cleanly(server: FakeDeepgramServer) -> None:
    svc = service(server)
    results = await svc.start_streaming()
    for i in range(0, 32000, 640):
        await svc.send_audio(sample_pcm()[i : i + 640])
    await svc.cancel_streaming()
    seen = [r async for r in results]  # ends, and without an error
    assert all(r.endpoint_id == svc.endpoint.id for r in seen)
    assert not svc.is_streaming
    again = await stream(svc, sample_pcm())  # the service is reusable
    assert any(r.is_final and r.transcript for r in again)


# -- stream options, finalize() and the batch path's metrics ------------------------------------
async def stream_with_finalize(
    svc: Any, pcm: bytes, cut: float, options: StreamOptions | None = None
) -> tuple[list[STTResult], int]:
    """Send audio up to ``cut`` s, finalize(), wait for a final, send the rest, stop.

    Returns the results and how many had arrived when the forced final came."""
    out: list[STTResult] = []
    got = anyio.Event()
    results = await svc.start_streaming(ENGINE_FORMAT, options)

    async def consume() -> None:
        async for r in results:
            out.append(r)
            if r.is_final and r.transcript:
                got.set()

    split = ENGINE_FORMAT.bytes_for(cut)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for chunk in iter_chunks(pcm[:split], ENGINE_FORMAT, 0.02):
            await svc.send_audio(chunk)
        await svc.finalize()
        with anyio.fail_after(5):
            await got.wait()
        at = len(out)
        for chunk in iter_chunks(pcm[split:], ENGINE_FORMAT, 0.02):
            await svc.send_audio(chunk)
        await svc.stop_streaming()
    return out, at


async def test_stream_options_reach_the_wire(server: FakeDeepgramServer) -> None:
    svc = service(server, language="en")
    options = StreamOptions(
        language="de", keywords=("Kubernetes", "GLM-ASR"), punctuate=False, interim_results=False
    )
    out: list[STTResult] = []
    results = await svc.start_streaming(ENGINE_FORMAT, options)
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async for r in results:
                out.append(r)

        tg.start_soon(consume)
        for chunk in iter_chunks(sample_pcm(), ENGINE_FORMAT, 0.02):
            await svc.send_audio(chunk)
        await svc.stop_streaming()
    session = server.sessions[0]
    assert session.query_lists["keyterm"] == ["Kubernetes", "GLM-ASR"]
    q = session.query
    assert (q["language"], q["punctuate"], q["interim_results"]) == ("de", "false", "false")
    assert out
    assert all(r.is_final for r in out)
    assert all(r.language == "de" for r in out if r.transcript)
    # unpunctuated: the plain words, as Deepgram sends them without punctuate
    assert out[0].transcript == "hello there my friend"
    # the next stream is back to the endpoint's options
    await stream(svc, sample_pcm()[: ENGINE_FORMAT.bytes_for(0.5)])
    assert "keyterm" not in server.sessions[1].query
    assert server.sessions[1].query["language"] == "en"


async def test_prompt_is_refused_at_start(server: FakeDeepgramServer) -> None:
    svc = service(server)
    with pytest.raises(UnsupportedOption, match="prompt"):
        await svc.start_streaming(ENGINE_FORMAT, StreamOptions(prompt="a lesson"))
    assert not svc.is_streaming
    assert server.sessions == []  # refused before connecting


async def test_finalize_sends_finalize_and_the_stream_goes_on(server: FakeDeepgramServer) -> None:
    utt = server.script[0]
    cut = (utt.words[1].end + utt.words[2].end) / 2  # two words heard
    svc = service(server)
    await svc.finalize()  # no stream: nothing happens
    out, at = await stream_with_finalize(svc, sample_pcm(), cut)
    forced = [r for r in out[:at] if r.is_final]
    assert [r.transcript for r in forced] == ["Hello there,"]
    finals = [r.transcript for r in out if r.is_final and r.transcript]
    assert finals[-1] == SAMPLE_SCRIPT[1][0]  # the next utterance still arrives
    assert server.sessions[0].controls.count("Finalize") == 2  # ours, then stop's


async def test_batch_records_latency_and_counts_errors(server: FakeDeepgramServer) -> None:
    clock = FakeClock()
    svc = service(server, clock=clock)
    await svc.transcribe(sample_pcm(), ENGINE_FORMAT)
    assert svc.metrics.latency_count == 1
    assert svc.metrics.finals == 1
    async with FakeDeepgramServer(faults=[ServerFault(http_status=500)], api_key=KEY) as bad:
        failing = service(bad)
        with pytest.raises(ConnectionFailed, match="HTTP 500"):  # translated once
            await failing.transcribe(sample_pcm(), ENGINE_FORMAT)
        assert failing.metrics.errors == 1
