"""The Pipecat plugin, driven through a real Pipecat pipeline (``pipecat.tests.utils.run_test``)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("pipecat")
# first through the plugin: it imports Pipecat's audio helpers without their audioop warning
pytest.importorskip("sttrouter.integrations.pipecat")

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test
from pipecat.utils.errors import ErrorCategory

from sttrouter import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    NoEndpointAvailable,
    StreamingFailed,
)
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.integrations.pipecat import RoutedSTTService, error_category
from sttrouter.panel import EndpointRegistry
from sttrouter.resilience import RetryPolicy
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

PARAMS = PipelineParams(audio_in_sample_rate=16000)


def make_context(
    faults: dict[str, FaultPlan] | None = None, **fake_kwargs: object
) -> RoutingContext:
    clock = FakeClock()  # never advanced: no deadline fires, nothing depends on speed
    registry = EndpointRegistry(
        [fake_endpoint("A", expected_latency_ms=5.0), fake_endpoint("B", expected_latency_ms=50.0)]
    )

    def factory(endpoint: STTEndpoint) -> FakeSTTService:
        plan = (faults or {}).get(endpoint.id)
        return FakeSTTService(endpoint, clock=clock, faults=plan, **fake_kwargs)  # type: ignore[arg-type]

    return RoutingContext(
        registry, clock=clock, service_factory=factory, retry=RetryPolicy(attempts=1)
    )


def audio_frames(pcm: bytes, user: str = "alice") -> list[Frame]:
    step = 640  # 20 ms of 16 kHz mono s16le
    return [
        UserAudioRawFrame(audio=pcm[i : i + step], sample_rate=16000, num_channels=1, user_id=user)
        for i in range(0, len(pcm), step)
    ]


async def run(
    service: RoutedSTTService, frames: Sequence[Frame]
) -> tuple[list[Frame], list[Frame]]:
    down, up = await run_test(service, frames_to_send=frames, pipeline_params=PARAMS)
    return list(down), list(up)


def final_words(frames: Sequence[Frame]) -> list[str]:
    return [w for f in frames if isinstance(f, TranscriptionFrame) for w in f.text.split()]


async def test_primary_dropped_mid_utterance_every_word_is_in_exactly_one_transcription() -> None:
    context = make_context({"A": FaultPlan.drop_after(1.3, stream=0)})
    service = RoutedSTTService(context, language="en", audio_passthrough=False)
    routes: list[RouteEvent] = []

    @service.event_handler("on_route_event")
    async def on_route(_svc: RoutedSTTService, event: RouteEvent) -> None:
        routes.append(event)

    speech = synthetic_speech((5, 5, 5))  # utterance 2 spans 1.0-1.5 s: A dies inside it

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning from Pipecat's error API
        down, up = await run(service, audio_frames(speech.pcm))

    assert final_words(down) == [w for w, _, _ in speech.words]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert {f.user_id for f in finals} == {"alice"}
    assert finals[-1].metadata["endpoint_id"] == "B"
    assert all(f.metadata["start"] < f.metadata["end"] for f in finals)
    assert str(finals[0].language) == "en"
    assert any(isinstance(f, InterimTranscriptionFrame) for f in down)
    assert not [f for f in up if isinstance(f, ErrorFrame)]  # a survived failure is no error
    assert [e.kind for e in routes][:3] == [
        RouteEventKind.SELECTED,
        RouteEventKind.FAILED,
        RouteEventKind.FAILOVER,
    ]


async def test_user_stopped_speaking_finalizes_the_utterance() -> None:
    context = make_context(endpoint_silence=10.0)  # the engine would never end-point
    service = RoutedSTTService(context, audio_passthrough=False)
    speech = synthetic_speech((4,), gap_seconds=0.02)
    frames = [
        VADUserStartedSpeakingFrame(),
        *audio_frames(speech.pcm),
        VADUserStoppedSpeakingFrame(),
    ]

    down, _ = await run(service, frames)

    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert final_words(finals) == [w for w, _, _ in speech.words]
    assert finals[0].finalized is True


async def test_no_endpoint_left_is_the_only_error_that_makes_the_service_unusable() -> None:
    context = make_context({"A": FaultPlan.drop_after(0.5), "B": FaultPlan.fail_on_connect()})
    service = RoutedSTTService(context, audio_passthrough=False)
    speech = synthetic_speech((5, 5))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, up = await run(service, audio_frames(speech.pcm))

    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1
    assert isinstance(errors[0].exception, NoEndpointAvailable)
    assert "not transcribed" in errors[0].error
    assert errors[0].category is ErrorCategory.CONNECTIVITY
    assert errors[0].fatal is False
    assert service.is_usable is False


async def test_a_transient_error_of_a_single_engine_is_not_fatal_and_reopens() -> None:
    built: list[FakeSTTService] = []

    def one_engine() -> FakeSTTService:
        plan = FaultPlan.drop_after(0.3) if not built else None  # only the first one breaks
        svc = FakeSTTService(fake_endpoint("solo"), faults=plan)
        built.append(svc)
        return svc

    service = RoutedSTTService(one_engine, audio_passthrough=False)
    _, up = await run(service, audio_frames(synthetic_speech((5,)).pcm))

    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert [type(e.exception) for e in errors] == [StreamingFailed]
    assert errors[0].category is ErrorCategory.CONNECTIVITY
    assert service.is_usable is True
    assert len(built) == 2  # the next audio opened a new stream


def test_error_categories() -> None:
    assert error_category(AuthenticationFailed("bad key")) is ErrorCategory.AUTHENTICATION
    assert error_category(AudioFormatError("odd bytes")) is ErrorCategory.APPLICATION
    assert error_category(NoEndpointAvailable("none left")) is ErrorCategory.CONNECTIVITY


async def test_the_example_pipeline_fails_over_to_the_offline_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("deepgram")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "offline-demo")
    root = Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location(
        "pipecat_pipeline", root / "examples/pipecat_pipeline.py"
    )
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    finals = await example.transcribe(root / "examples/audio/hello_16k.wav")

    assert "hello" in " ".join(finals)
