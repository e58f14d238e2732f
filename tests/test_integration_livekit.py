"""The LiveKit Agents plugin, driven through LiveKit's own STT/RecognizeStream machinery."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("livekit.agents")

from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt

from sttrouter import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import AuthenticationFailed, RateLimited, StreamingFailed
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.integrations.livekit import STT, api_error
from sttrouter.panel import EndpointRegistry
from sttrouter.resilience import RetryPolicy
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    SyntheticSpeech,
    Utterance,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

Kind = stt.SpeechEventType
NO_RETRY = APIConnectOptions(max_retry=0)


def make_context(
    faults: dict[str, FaultPlan] | None = None, **fake_kwargs: object
) -> tuple[RoutingContext, list[FakeSTTService]]:
    """A context over fake endpoints A (best) and B, with a fresh engine per stream."""
    clock = FakeClock()  # never advanced: no deadline fires, nothing depends on speed
    registry = EndpointRegistry(
        [fake_endpoint("A", expected_latency_ms=5.0), fake_endpoint("B", expected_latency_ms=50.0)]
    )
    built: list[FakeSTTService] = []

    def factory(endpoint: STTEndpoint) -> FakeSTTService:
        plan = (faults or {}).get(endpoint.id)
        svc = FakeSTTService(endpoint, clock=clock, faults=plan, **fake_kwargs)  # type: ignore[arg-type]
        built.append(svc)
        return svc

    context = RoutingContext(
        registry, clock=clock, service_factory=factory, retry=RetryPolicy(attempts=1)
    )
    return context, built


def frames(pcm: bytes, *, rate: int = 16000, channels: int = 1) -> list[rtc.AudioFrame]:
    """20 ms LiveKit frames of ``pcm`` (s16le, ``channels`` interleaved)."""
    step = rate // 50 * channels * 2
    out = []
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        out.append(
            rtc.AudioFrame(
                data=chunk,
                sample_rate=rate,
                num_channels=channels,
                samples_per_channel=len(chunk) // (2 * channels),
            )
        )
    return out


async def run_stream(
    plugin: STT, audio: Sequence[rtc.AudioFrame], *, flush_after: int | None = None
) -> list[stt.SpeechEvent]:
    stream = plugin.stream(conn_options=NO_RETRY)
    for i, frame in enumerate(audio):
        stream.push_frame(frame)
        if flush_after is not None and i == flush_after:
            stream.flush()
    stream.end_input()
    try:
        return [ev async for ev in stream]
    finally:
        await stream.aclose()


def final_words(events: Sequence[stt.SpeechEvent]) -> list[str]:
    return [
        w
        for ev in events
        if ev.type is Kind.FINAL_TRANSCRIPT
        for w in ev.alternatives[0].text.split()
    ]


def speech_words(speech: SyntheticSpeech) -> list[str]:
    return [w for w, _, _ in speech.words]


async def test_primary_dropped_mid_utterance_every_word_is_final_exactly_once() -> None:
    context, built = make_context({"A": FaultPlan.drop_after(1.3, stream=0)})
    plugin = STT(context)
    routes: list[RouteEvent] = []
    plugin.on("route_event", routes.append)
    errors: list[stt.STTError] = []
    plugin.on("error", errors.append)
    speech = synthetic_speech((5, 5, 5))  # utterance 2 spans 1.0-1.5 s: A dies inside it

    events = await run_stream(plugin, frames(speech.pcm))

    assert final_words(events) == speech_words(speech)
    finals = [ev.alternatives[0] for ev in events if ev.type is Kind.FINAL_TRANSCRIPT]
    served = [d.metadata["endpoint_id"] for d in finals]  # type: ignore[index]
    assert served[1:] == ["B", "B"]
    assert served[0] in ("A", "B")  # A's first final may lose the race
    # times are on the stream's timeline, across the failover
    word_end = {w: end for w, _, end in speech.words}
    for d in finals:
        assert d.end_time == pytest.approx(word_end[d.text.split()[-1]], abs=0.35)
    kinds = [ev.type for ev in events]
    assert kinds.count(Kind.START_OF_SPEECH) == kinds.count(Kind.END_OF_SPEECH) == 3
    assert Kind.INTERIM_TRANSCRIPT in kinds
    usage = sum(
        ev.recognition_usage.audio_duration
        for ev in events
        if ev.type is Kind.RECOGNITION_USAGE and ev.recognition_usage is not None
    )
    assert usage == pytest.approx(speech.duration)
    assert [e.kind for e in routes][:3] == [
        RouteEventKind.SELECTED,
        RouteEventKind.FAILED,
        RouteEventKind.FAILOVER,
    ]
    assert [(e.recoverable, type(e.error)) for e in errors] == [(True, APIConnectionError)]
    assert plugin.model == "B"
    assert plugin.provider == "sttrouter"
    assert [s.endpoint.id for s in built] == ["A", "B"]


async def test_usage_reaches_livekit_metrics_with_the_plugin_labels() -> None:
    context, _ = make_context()
    plugin = STT(context)
    metrics: list[object] = []
    plugin.on("metrics_collected", metrics.append)
    speech = synthetic_speech((3, 3))
    await run_stream(plugin, frames(speech.pcm))
    await __import__("asyncio").sleep(0)  # the metrics monitor runs in its own task
    assert metrics
    total = sum(m.audio_duration for m in metrics)  # type: ignore[attr-defined]
    assert total == pytest.approx(speech.duration)
    assert {m.metadata.model_provider for m in metrics} == {"sttrouter"}  # type: ignore[attr-defined]


async def test_frames_at_any_rate_and_channel_count_are_converted_once() -> None:
    script = [
        Utterance("hello there", start=0.2, end=0.8),
        Utterance("general kenobi", start=1.2, end=1.9),
    ]
    context, built = make_context(script=script)
    plugin = STT(context)
    mono = np.zeros(48000 * 2, dtype=np.int16)
    stereo = np.repeat(mono, 2).astype("<i2").tobytes()

    events = await run_stream(plugin, frames(stereo, rate=48000, channels=2))

    finals = [ev.alternatives[0] for ev in events if ev.type is Kind.FINAL_TRANSCRIPT]
    assert [(d.text, d.start_time, d.end_time) for d in finals] == [
        ("hello there", pytest.approx(0.2, abs=1e-3), pytest.approx(0.8, abs=1e-3)),
        ("general kenobi", pytest.approx(1.2, abs=1e-3), pytest.approx(1.9, abs=1e-3)),
    ]
    assert len(built[0].received) == 16000 * 2 * 2  # 2 s of 16 kHz mono s16le reached the engine


async def test_a_flush_asks_the_serving_engine_for_the_utterance_final() -> None:
    context, _ = make_context(endpoint_silence=10.0)  # the engine never end-points by itself
    plugin = STT(context, language="en")
    speech = synthetic_speech((4, 3), gap_seconds=0.1)
    audio = frames(speech.pcm)
    first_end = speech.utterances[0][1] + 0.1  # the flush comes after utterance 1 and its gap

    events = await run_stream(plugin, audio, flush_after=round(first_end / 0.02) - 1)

    finals = [ev.alternatives[0] for ev in events if ev.type is Kind.FINAL_TRANSCRIPT]
    assert [d.text for d in finals] == ["w1 w2 w3 w4", "w5 w6 w7"]
    assert {d.language for d in finals} == {"en"}
    assert [ev.type for ev in events].count(Kind.END_OF_SPEECH) == 2


async def test_no_endpoint_left_reaches_the_agent_as_api_connection_error_with_the_span() -> None:
    context, _ = make_context(
        {"A": FaultPlan.drop_after(0.5, stream=0), "B": FaultPlan.fail_on_connect()}
    )
    plugin = STT(context)
    errors: list[stt.STTError] = []
    plugin.on("error", errors.append)
    speech = synthetic_speech((5, 5))

    with pytest.raises(APIConnectionError) as caught:
        await run_stream(plugin, frames(speech.pcm))

    assert caught.value.retryable is False
    body = caught.value.body
    assert isinstance(body, dict)
    start, _end = body["uncovered"]
    assert start == pytest.approx(0.0, abs=0.6)
    assert "not transcribed" in str(caught.value)
    assert errors[-1].recoverable is False


async def test_a_single_engine_source_maps_auth_errors_to_a_401() -> None:
    def one_engine() -> FakeSTTService:
        return FakeSTTService(fake_endpoint("solo"), faults=FaultPlan.auth_error())

    plugin = STT(one_engine)
    with pytest.raises(APIStatusError) as caught:
        await run_stream(plugin, frames(synthetic_speech((2,)).pcm))
    assert caught.value.status_code == 401
    assert caught.value.retryable is False


def test_error_mapping_keeps_retryable_semantics() -> None:
    err = api_error(AuthenticationFailed("bad key", endpoint_id="A"))
    assert isinstance(err, APIStatusError)
    assert not err.retryable
    limited = api_error(RateLimited("slow down"))
    assert isinstance(limited, APIStatusError)
    assert limited.status_code == 429
    assert limited.retryable
    dropped = api_error(StreamingFailed("closed with 1011"))
    assert isinstance(dropped, APIConnectionError)
    assert dropped.retryable


async def test_batch_recognize_goes_through_the_router() -> None:
    context, _ = make_context({"A": FaultPlan.fail_on_connect()})
    plugin = STT(context, language="en")
    speech = synthetic_speech((3, 4))
    buffer = frames(speech.pcm)

    event = await plugin.recognize(buffer)

    assert event.type is Kind.FINAL_TRANSCRIPT
    data = event.alternatives[0]
    assert data.text.split() == speech_words(speech)
    assert data.metadata == {"endpoint_ids": ["B"]}
    assert speech.words[-1][2] <= data.end_time <= speech.duration


async def test_route_events_are_logged_on_the_livekit_plugin_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context, _ = make_context()
    caplog.set_level(logging.INFO, logger="livekit.plugins.sttrouter")
    await run_stream(STT(context), frames(synthetic_speech((2,)).pcm))
    records = [r for r in caplog.records if r.name == "livekit.plugins.sttrouter"]
    assert records
    assert records[0].getMessage().startswith("route selected A")
    assert records[0].kind == "selected"  # type: ignore[attr-defined]


def test_import_sttrouter_imports_no_framework() -> None:
    code = (
        "import sys, sttrouter, sttrouter.integrations; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pipecat', 'livekit')]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_example_agent_fails_over_to_the_offline_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("deepgram")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "offline-demo")
    root = Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location(
        "livekit_agent", root / "examples/livekit_agent.py"
    )
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    finals = await example.transcribe(root / "examples/audio/hello_16k.wav")

    assert "hello" in " ".join(finals)
