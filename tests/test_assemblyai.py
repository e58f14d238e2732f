"""AssemblyAISTTService through the real assemblyai SDK against FakeAssemblyAIServer."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.audio import ENGINE_FORMAT, read_audio
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
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
from sttrouter.providers.assemblyai import AssemblyAISTTService, assemblyai_endpoint
from sttrouter.results import STTResult
from sttrouter.service import iter_chunks, stream_transcribe
from sttrouter.testing import (
    FakeAssemblyAIServer,
    FakeClock,
    FaultPlan,
    ServerFault,
    check_stt_service,
    synthetic_speech,
)

pytestmark = [
    pytest.mark.anyio,
    # assemblyai 1.8 reads ConnectionClosed.code/.reason when a socket closes with an error,
    # which websockets >= 13.1 deprecates; under -W error the SDK's read task would die on
    # the warning instead of reporting the close. Nothing else is silenced.
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]

KEY = "aai-test-key"
# The fake is scripted, so only the audio's duration matters.
SPEECH = synthetic_speech((4, 5), word_seconds=0.15, lead_seconds=0.3)
SAMPLE_SCRIPT = [
    ("Hello there, my friend.", *SPEECH.utterances[0]),
    ("How are you doing today?", *SPEECH.utterances[1]),
]

AUDIO = Path(__file__).resolve().parents[1] / "examples" / "audio"
# Speech spans of the committed espeak clips (RMS over 20 ms windows above -40 dBFS).
HELLO_TEXT = (AUDIO / "hello.txt").read_text().strip()
HELLO_SCRIPT = [(HELLO_TEXT, 0.32, 4.52)]
FOX_TEXT = (AUDIO / "fox.txt").read_text().strip()
FOX_SCRIPT = [(FOX_TEXT, 0.3, 3.56)]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", KEY)


@pytest.fixture
async def server() -> AsyncIterator[FakeAssemblyAIServer]:
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY) as s:
        yield s


def service(
    server: FakeAssemblyAIServer, clock: Any = None, **options: Any
) -> AssemblyAISTTService:
    options.setdefault("poll_interval", 0.01)
    endpoint = assemblyai_endpoint(base_url=server.base_url, options=options)
    return AssemblyAISTTService(endpoint, clock=clock)


async def stream(svc: AssemblyAISTTService, pcm: bytes, chunk: float = 0.02) -> list[STTResult]:
    out: list[STTResult] = []
    await stream_transcribe(svc, pcm, ENGINE_FORMAT, chunk_seconds=chunk, on_result=out.append)
    return out


async def test_streams_partials_then_formatted_finals(server: FakeAssemblyAIServer) -> None:
    svc = service(server)
    out = await stream(svc, SPEECH.pcm)
    finals = [r for r in out if r.is_final]
    assert [r.transcript for r in finals] == [u[0] for u in SAMPLE_SCRIPT]
    assert all(r.is_end_of_utterance for r in finals)
    interims = [r.transcript for r in out if not r.is_final]
    assert interims[:3] == ["hello", "hello there", "hello there my"]
    assert "hello there my friend" in interims  # the unformatted end of turn
    words = [w for r in finals for w in r.words]
    expected = [w for utt in server.script for w in utt.words]
    assert [(w.word, w.start, w.end) for w in words] == [
        (e.text, pytest.approx(e.start, abs=1e-3), pytest.approx(e.end, abs=1e-3)) for e in expected
    ]
    assert all(r.language == "en" for r in finals)
    session = server.sessions[0]
    assert session.query["sample_rate"] == "16000"
    assert session.query["encoding"] == "pcm_s16le"
    assert session.query["format_turns"] == "True"
    assert session.controls == ["ForceEndpoint", "Terminate"]
    assert session.close_code == 1000
    assert svc.session_id


@pytest.mark.parametrize("chunk", [0.01, 0.02, 0.07, 1.7])
async def test_any_chunk_size_is_recut_to_50_1000_ms(
    server: FakeAssemblyAIServer, chunk: float
) -> None:
    out = await stream(service(server), SPEECH.pcm, chunk=chunk)
    assert [r.transcript for r in out if r.is_final] == [u[0] for u in SAMPLE_SCRIPT]
    sizes = server.sessions[0].chunk_sizes
    assert all(1600 <= s <= 32000 for s in sizes), sizes
    # every sample arrived, plus at most the padding of the last message
    assert len(SPEECH.pcm) <= server.sessions[0].audio_bytes < len(SPEECH.pcm) + 1600


async def test_unformatted_mode_and_options(server: FakeAssemblyAIServer) -> None:
    svc = service(
        server,
        format_turns=False,
        speech_model="universal-streaming-english",
        end_of_turn_confidence_threshold=0.7,
        keyterms_prompt=["Kubernetes"],
        chunk_ms=50,
    )
    out = await stream(svc, SPEECH.pcm)
    finals = [r.transcript for r in out if r.is_final]
    assert finals == ["hello there my friend", "how are you doing today"]
    q = server.sessions[0].query
    assert q["format_turns"] == "False"
    assert q["speech_model"] == "universal-streaming-english"
    assert q["keyterms_prompt"] == '["Kubernetes"]'
    assert set(server.sessions[0].chunk_sizes[:-1]) == {1600}


async def test_force_endpoint_flushes_the_open_turn(server: FakeAssemblyAIServer) -> None:
    utt = server.script[0]
    cut = (utt.words[1].end + utt.words[2].end) / 2
    out = await stream(service(server), SPEECH.pcm[: ENGINE_FORMAT.bytes_for(cut)])
    assert [r.transcript for r in out if r.is_final] == ["Hello there,"]


async def test_conformance(server: FakeAssemblyAIServer) -> None:
    await check_stt_service(lambda: service(server), SPEECH.pcm)


async def test_batch_upload_transcript_poll(server: FakeAssemblyAIServer) -> None:
    svc = service(server)
    transcript = await svc.transcribe(SPEECH.pcm, ENGINE_FORMAT)
    assert transcript.text == " ".join(u[0] for u in SAMPLE_SCRIPT)
    expected = [w for utt in server.script for w in utt.words]
    assert [(w.word, w.start, w.end) for w in transcript.words] == [
        (e.text, pytest.approx(e.start, abs=1e-3), pytest.approx(e.end, abs=1e-3)) for e in expected
    ]
    calls = [
        (r.method, r.path.rsplit("/", 1)[0] if r.path.count("/") > 2 else r.path)
        for r in server.requests
    ]
    assert calls == [
        ("POST", "/v2/upload"),
        ("POST", "/v2/transcript"),
        ("GET", "/v2/transcript"),
        ("GET", "/v2/transcript"),
    ]
    assert svc.metrics.cost > 0


async def test_batch_polls_on_the_injected_clock() -> None:
    clock = FakeClock()
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, polls_until_done=3) as srv:
        svc = service(srv, clock, poll_interval=3.0)
        async with anyio.create_task_group() as tg:
            done: list[str] = []

            async def run() -> None:
                done.append((await svc.transcribe(SPEECH.pcm, ENGINE_FORMAT)).text)

            tg.start_soon(run)
            for _ in range(4):
                # two sleepers: the batch deadline and the poll interval
                await eventually(lambda: clock.sleepers == 2)
                await clock.advance(3.0)
        assert done == [" ".join(u[0] for u in SAMPLE_SCRIPT)]
        assert len([r for r in srv.requests if r.method == "GET"]) == 4


async def test_batch_error_status() -> None:
    async with FakeAssemblyAIServer(
        script=SAMPLE_SCRIPT, api_key=KEY, batch_error="Transcoding failed: no audio"
    ) as srv:
        with pytest.raises(AudioFormatError):
            await service(srv).transcribe(SPEECH.pcm, ENGINE_FORMAT)
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, batch_error="boom") as srv:
        with pytest.raises(StreamingFailed):
            await service(srv).transcribe(SPEECH.pcm, ENGINE_FORMAT)


async def test_probe_bills_nothing(server: FakeAssemblyAIServer) -> None:
    await service(server).probe()
    assert [(r.method, r.path, r.query) for r in server.requests] == [
        ("GET", "/v2/transcript", {"limit": "1"})
    ]
    assert not server.sessions


async def test_wrong_key_everywhere(
    server: FakeAssemblyAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "wrong-key")
    svc = service(server)
    with pytest.raises(AuthenticationFailed) as info:
        await svc.start_streaming()  # 1008 arrives after the upgrade, before Begin
    assert "wrong-key" not in str(info.value)
    assert not svc.is_streaming
    with pytest.raises(AuthenticationFailed) as info2:
        await svc.probe()
    assert "ASSEMBLYAI_API_KEY" in str(info2.value)
    with pytest.raises(AuthenticationFailed):
        await svc.transcribe(SPEECH.pcm, ENGINE_FORMAT)


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (FaultPlan.auth_error(), AuthenticationFailed),
        (FaultPlan.quota_exceeded(), QuotaExceeded),
        (FaultPlan.rate_limited(), RateLimited),
        (FaultPlan.fail_on_connect(), ConnectionFailed),
        ([ServerFault(http_status=401, reason="Unauthorized")], AuthenticationFailed),
        ([ServerFault(http_status=402, reason="Payment required")], QuotaExceeded),
        ([ServerFault(http_status=429, reason="Too many")], RateLimited),
        ([ServerFault(http_status=404, reason="no such route")], EndpointMisconfigured),
    ],
)
async def test_connect_faults(faults: Any, error: type[STTError]) -> None:
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        svc = service(srv)
        with pytest.raises(error) as info:
            await svc.start_streaming()
        assert info.value.endpoint_id == "assemblyai"
        assert KEY not in str(info.value)
        assert not svc.is_streaming


@pytest.mark.parametrize(
    ("faults", "error", "detail"),
    [
        (FaultPlan.drop_after(0.5), StreamingFailed, "closed with 3005"),
        (FaultPlan.auth_error(after=0.5), AuthenticationFailed, "closed with 1008"),
        (FaultPlan.quota_exceeded(after=0.5), QuotaExceeded, "Insufficient account balance"),
        (FaultPlan.rate_limited(after=0.5), RateLimited, "closed with 3009"),
        (
            [ServerFault(after=0.5, close_code=3007, reason="Input duration violation")],
            AudioFormatError,
            "closed with 3007",
        ),
        (
            [ServerFault(after=0.5, close_code=3008, reason="Session expired")],
            StreamingFailed,
            "3008",
        ),
        ([ServerFault(after=0.5, close_code=1000, in_band=False)], StreamingFailed, "Termination"),
    ],
)
async def test_mid_stream_faults(faults: Any, error: type[STTError], detail: str) -> None:
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        svc = service(srv, finish_timeout=2)
        with pytest.raises(error, match=detail) as info:
            await stream(svc, SPEECH.pcm)
        assert info.value.endpoint_id == "assemblyai"
        assert not svc.is_streaming


async def test_malformed_frames_are_skipped_by_the_sdk() -> None:
    # assemblyai 1.8 logs and skips a frame that is not JSON; the stream carries on.
    async with FakeAssemblyAIServer(
        script=SAMPLE_SCRIPT, api_key=KEY, faults=FaultPlan.malformed_after(0.5)
    ) as srv:
        out = await stream(service(srv), SPEECH.pcm)
    assert [r.transcript for r in out if r.is_final] == [u[0] for u in SAMPLE_SCRIPT]


async def test_unknown_messages_and_empty_finals() -> None:
    faults = [
        ServerFault(after=0.2, text='{"type": "Unheard-Of", "total_audio_received_ms": 200}'),
        ServerFault(after=1.0, empty=True),
    ]
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        out = await stream(service(srv), SPEECH.pcm)
    finals = [r for r in out if r.is_final]
    assert [r.transcript for r in finals] == [SAMPLE_SCRIPT[0][0], ""]
    assert finals[1].start == pytest.approx(SPEECH.utterances[0][1])  # after the last final


async def test_schema_broken_message_is_malformed() -> None:
    # valid JSON, known type, wrong shape: the SDK's read task dies on a ValidationError
    faults = [ServerFault(after=0.3, text='{"type": "Turn", "turn_order": "first"}')]
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, faults=faults) as srv:
        with pytest.raises(MalformedResponse):
            await stream(service(srv), SPEECH.pcm)


async def test_no_begin_is_a_connect_timeout() -> None:
    clock = FakeClock()
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY, send_begin=False) as srv:
        svc = service(srv, clock, begin_timeout=5)
        async with anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def start() -> None:
                try:
                    await svc.start_streaming()
                except STTError as exc:
                    failures.append(exc)

            tg.start_soon(start)
            await eventually(lambda: clock.sleepers > 0)
            await clock.advance(5.0)
        assert len(failures) == 1
        assert isinstance(failures[0], ConnectTimeout)
        assert not svc.is_streaming


async def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    svc = AssemblyAISTTService(assemblyai_endpoint(base_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(ConnectionFailed):
        await svc.start_streaming()
    with pytest.raises(ConnectionFailed):
        await svc.probe()


async def test_missing_key(server: FakeAssemblyAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASSEMBLYAI_API_KEY")
    with pytest.raises(EndpointMisconfigured, match="ASSEMBLYAI_API_KEY"):
        await service(server).start_streaming()


async def test_factory_and_config(server: FakeAssemblyAIServer) -> None:
    ep = assemblyai_endpoint(base_url=server.base_url)
    assert isinstance(create_service(ep), AssemblyAISTTService)
    assert ep.cost_per_hour == Decimal("0.37")
    assert assemblyai_endpoint(cost_per_hour=1).cost_per_hour == Decimal(1)
    with pytest.raises(ConfigError):
        service(server, chunk_ms=20)
    with pytest.raises(ConfigError):
        service(server, begin_timeout="soon")
    with pytest.raises(ConfigError):
        service(server, format_turns="sometimes")
    assert not service(server, format_turns="false").format_turns
    assert KEY not in repr(service(server))


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until another task in this event loop made ``condition`` true."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - polling state another task mutates
            await anyio.sleep(0.01)


async def test_committed_sample_through_the_sdk() -> None:
    pcm, fmt = read_audio(AUDIO / "hello_16k.wav")
    async with FakeAssemblyAIServer(HELLO_SCRIPT, api_key=KEY) as srv:
        out = await stream(service(srv), pcm)
        await check_stt_service(lambda: service(srv), pcm, fmt)
        batch = await service(srv).transcribe(AUDIO / "hello_16k.wav")
    finals = [r for r in out if r.is_final and r.transcript]
    assert [r.transcript for r in finals] == [HELLO_TEXT]
    expected = [w for utt in srv.script for w in utt.words]
    assert len(expected) == len(HELLO_TEXT.split())
    for got in (finals[0].words, batch.words):
        assert [(w.word, w.start, w.end) for w in got] == [
            (e.text, pytest.approx(e.start, abs=1e-3), pytest.approx(e.end, abs=1e-3))
            for e in expected
        ]
    partials = [r.transcript for r in out if not r.is_final and r.transcript]
    plain = [w.plain for w in expected]
    assert partials == [" ".join(plain[:n]) for n in range(1, len(expected) + 1)]
    assert batch.text == HELLO_TEXT


async def test_committed_48k_stereo_sample_is_converted() -> None:
    pcm, fmt = read_audio(AUDIO / "fox_48k_stereo.wav")
    assert (fmt.sample_rate, fmt.channels) == (48000, 2)
    async with FakeAssemblyAIServer(FOX_SCRIPT, api_key=KEY) as srv:
        out = await check_stt_service(lambda: service(srv), pcm, fmt)
        q = srv.sessions[0].query
    assert [r.transcript for r in out if r.is_final and r.transcript] == [FOX_TEXT]
    assert (q["sample_rate"], q["encoding"]) == ("16000", "pcm_s16le")
    # what reached the server is the clip at 16 kHz mono (soxr keeps the length)
    # (plus at most the 50 ms padding of the last message)
    assert ENGINE_FORMAT.seconds(srv.sessions[0].audio_bytes) == pytest.approx(
        fmt.seconds(len(pcm)), abs=0.06
    )


async def test_cancel_mid_stream_ends_cleanly(server: FakeAssemblyAIServer) -> None:
    svc = service(server)
    results = await svc.start_streaming()
    for i in range(0, 32000, 640):
        await svc.send_audio(SPEECH.pcm[i : i + 640])
    await svc.cancel_streaming()
    seen = [r async for r in results]  # ends, and without an error
    assert all(r.endpoint_id == svc.endpoint.id for r in seen)
    assert not svc.is_streaming
    again = await stream(svc, SPEECH.pcm)  # the service is reusable
    assert any(r.is_final and r.transcript for r in again)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(1, 40_000), min_size=1, max_size=12))
async def test_chunking_never_changes_what_is_heard(sizes: list[int]) -> None:
    """Whatever sizes the caller sends (whole samples), every message is 50–1000 ms and the
    finals, word times and audio received are the same."""
    async with FakeAssemblyAIServer(script=SAMPLE_SCRIPT, api_key=KEY) as srv:
        svc = service(srv)
        results = await svc.start_streaming()
        pos, i = 0, 0
        while pos < len(SPEECH.pcm):
            n = 2 * sizes[i % len(sizes)]
            await svc.send_audio(SPEECH.pcm[pos : pos + n])
            pos, i = pos + n, i + 1
        await svc.stop_streaming()
        out = [r async for r in results]
    assert [r.transcript for r in out if r.is_final] == [u[0] for u in SAMPLE_SCRIPT]
    record = srv.sessions[0]
    assert all(1600 <= n <= 32000 for n in record.chunk_sizes)
    assert len(SPEECH.pcm) <= record.audio_bytes < len(SPEECH.pcm) + 1600


# -- stream options, finalize() and the batch path's metrics ------------------------------------
async def run_stream(
    svc: AssemblyAISTTService,
    pcm: bytes,
    *,
    options: StreamOptions | None = None,
    finalize_at: float | None = None,
) -> tuple[list[STTResult], int]:
    """Stream ``pcm``; with ``finalize_at``, call finalize() there and wait for its final.

    Returns the results and how many had arrived when the forced final came."""
    out: list[STTResult] = []
    got = anyio.Event()
    at = 0
    results = await svc.start_streaming(ENGINE_FORMAT, options)

    async def consume() -> None:
        async for r in results:
            out.append(r)
            if r.is_final and r.transcript:
                got.set()

    split = len(pcm) if finalize_at is None else ENGINE_FORMAT.bytes_for(finalize_at)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for chunk in iter_chunks(pcm[:split], ENGINE_FORMAT, 0.02):
            await svc.send_audio(chunk)
        if finalize_at is not None:
            await svc.finalize()
            with anyio.fail_after(5):
                await got.wait()
            at = len(out)
        for chunk in iter_chunks(pcm[split:], ENGINE_FORMAT, 0.02):
            await svc.send_audio(chunk)
        await svc.stop_streaming()
    return out, at


async def test_stream_options_reach_the_wire(server: FakeAssemblyAIServer) -> None:
    svc = service(server)
    options = StreamOptions(language="en-US", keywords=("Kubernetes",), punctuate=False)
    out, _ = await run_stream(svc, SPEECH.pcm, options=options)
    q = server.sessions[0].query
    assert json.loads(q["keyterms_prompt"]) == ["Kubernetes"]
    assert json.loads(q["language_codes"]) == ["en"]
    assert q["format_turns"].lower() == "false"
    finals = [r.transcript for r in out if r.is_final]
    assert finals == ["hello there my friend", "how are you doing today"]  # unformatted
    with pytest.raises(UnsupportedOption, match="prompt"):
        await svc.start_streaming(ENGINE_FORMAT, StreamOptions(prompt="a lesson"))
    assert len(server.sessions) == 1  # refused before connecting


async def test_finalize_forces_the_turn_and_the_stream_goes_on(
    server: FakeAssemblyAIServer,
) -> None:
    utt = server.script[0]
    cut = (utt.words[1].end + utt.words[2].end) / 2  # two words heard
    svc = service(server)
    out, at = await run_stream(svc, SPEECH.pcm, finalize_at=cut)
    forced = [r for r in out[:at] if r.is_final]
    assert [r.transcript for r in forced] == ["Hello there,"]
    assert forced[0].is_end_of_utterance
    finals = [r.transcript for r in out if r.is_final and r.transcript]
    assert finals[-1] == SAMPLE_SCRIPT[1][0]
    controls = server.sessions[0].controls
    assert controls.count("ForceEndpoint") == 2  # ours, then stop's
    # every audio message stayed a whole 50..1000 ms message (none padded with silence)
    assert server.sessions[0].audio_bytes == len(SPEECH.pcm)


async def test_batch_records_latency_and_counts_errors(server: FakeAssemblyAIServer) -> None:
    svc = service(server)
    await svc.transcribe(SPEECH.pcm, ENGINE_FORMAT)
    assert svc.metrics.latency_count == 1
    assert svc.metrics.finals == 1
    async with FakeAssemblyAIServer(api_key=KEY, batch_error="Transcoding failed") as bad:
        failing = service(bad)
        with pytest.raises(AudioFormatError):
            await failing.transcribe(SPEECH.pcm, ENGINE_FORMAT)
        assert failing.metrics.errors == 1
        assert failing.metrics.latency_count == 0
