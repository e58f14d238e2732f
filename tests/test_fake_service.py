from __future__ import annotations

import itertools

import anyio
import pytest

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    STTError,
    UnsupportedOption,
)
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult
from sttrouter.testing import (
    FakeClock,
    FakeSTTService,
    FaultPlan,
    Utterance,
    check_stt_service,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio


async def test_conformance_marks() -> None:
    speech = synthetic_speech((3, 4))
    results = await check_stt_service(FakeSTTService, speech.pcm)
    finals = [r for r in results if r.is_final and r.transcript]
    assert " ".join(r.transcript for r in finals) == speech.text


async def test_conformance_script() -> None:
    speech = synthetic_speech((3,))
    await check_stt_service(
        lambda: FakeSTTService(script=[Utterance("hello there", end=0.2)]), speech.pcm
    )


async def run(service: FakeSTTService, pcm: bytes) -> list[STTResult]:
    out: list[STTResult] = []
    results = await service.start_streaming(ENGINE_FORMAT)
    chunks = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]
    for c in chunks:
        await service.send_audio(c)
    await service.stop_streaming()
    async for r in results:
        out.append(r)
    return out


async def test_finals_tile_timeline() -> None:
    speech = synthetic_speech((2, 3, 1), gap_seconds=0.4)
    out = await run(FakeSTTService(), speech.pcm)
    finals = [r for r in out if r.is_final]
    assert finals[0].start == 0
    for a, b in itertools.pairwise(finals):
        assert a.end == pytest.approx(b.start)
    assert finals[-1].end == pytest.approx(speech.duration)
    words = [w for r in finals for w in r.words]
    assert [(w.word, w.start, w.end) for w in words] == [
        (w, pytest.approx(s), pytest.approx(e)) for w, s, e in speech.words
    ]


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        (FaultPlan.fail_on_connect(), ConnectionFailed),
        (FaultPlan.auth_error(), AuthenticationFailed),
        (FaultPlan.rate_limited(), RateLimited),
        (FaultPlan.quota_exceeded(), QuotaExceeded),
    ],
)
async def test_connect_faults(plan: FaultPlan, error: type[STTError]) -> None:
    svc = FakeSTTService(faults=plan)
    with pytest.raises(error) as info:
        await svc.start_streaming()
    assert info.value.endpoint_id == "fake"
    assert not svc.is_streaming


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        (FaultPlan.drop_after(0.5), StreamingFailed),
        (FaultPlan.auth_error(after=0.5), AuthenticationFailed),
        (FaultPlan.rate_limited(after=0.5), RateLimited),
        (FaultPlan.quota_exceeded(after=0.5), QuotaExceeded),
        (FaultPlan.malformed_after(0.5), MalformedResponse),
    ],
)
async def test_midstream_faults(plan: FaultPlan, error: type[STTError]) -> None:
    speech = synthetic_speech((10,))
    svc = FakeSTTService(faults=plan)
    results = await svc.start_streaming()
    with pytest.raises(error):
        for c in speech.chunks(0.02):
            await svc.send_audio(c)
    seen: list[STTResult] = []
    with pytest.raises(error):
        async for r in results:
            seen.append(r)
    assert all(r.end <= 0.5 + 1e-9 for r in seen)
    with pytest.raises(error):
        await svc.stop_streaming()
    assert not svc.is_streaming


async def test_empty_finals_and_stall() -> None:
    speech = synthetic_speech((3, 3))
    out = await run(FakeSTTService(faults=FaultPlan.empty_finals_after(0.0)), speech.pcm)
    finals = [r for r in out if r.is_final]
    # two utterance finals plus the trailing silence flushed at stop, all empty
    assert [r.transcript for r in finals] == ["", "", ""]
    assert [r.is_end_of_utterance for r in finals] == [True, True, False]
    svc = FakeSTTService(faults=FaultPlan.stall_after(0.1))
    results = await svc.start_streaming()
    for c in speech.chunks():
        await svc.send_audio(c)
    await svc.cancel_streaming()
    assert [r async for r in results] == []


async def test_added_latency_on_fake_clock() -> None:
    clock = FakeClock()
    speech = synthetic_speech((2,), gap_seconds=0.4)
    svc = FakeSTTService(faults=FaultPlan.added_latency(0.25), clock=clock)
    results = await svc.start_streaming()
    for c in speech.chunks():
        await svc.send_audio(c)
    await clock.advance(0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc.stop_streaming)
        await clock.advance(0.3)  # the final flushed at stop is late too
    out = [r async for r in results]
    # interims, the utterance final, then the final of the trailing silence flushed at stop
    assert [r.transcript for r in out] == ["w1", "w1 w2", "w1 w2", ""]
    assert all(r.latency is not None and r.latency >= 0.25 for r in out)


async def test_fault_only_on_first_stream() -> None:
    speech = synthetic_speech((2,))
    svc = FakeSTTService(faults=FaultPlan.fail_on_connect(stream=0))
    with pytest.raises(ConnectionFailed):
        await svc.start_streaming()
    out = await run(svc, speech.pcm)
    assert [r.transcript for r in out if r.is_final] == ["w1 w2", ""]


async def stream_finalizing(
    service: FakeSTTService, pcm: bytes, cut: float, options: StreamOptions | None = None
) -> tuple[list[STTResult], list[STTResult]]:
    """Stream ``pcm`` with finalize() at ``cut`` s; the results before the cut's finalize
    returned (the fake emits at once) and all of them."""
    out: list[STTResult] = []
    results = await service.start_streaming(ENGINE_FORMAT, options)
    split = ENGINE_FORMAT.bytes_for(cut)
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async for r in results:
                out.append(r)

        tg.start_soon(consume)
        await service.finalize()  # nothing heard yet: nothing to finalise
        await service.send_audio(pcm[:split])
        await service.finalize()
        await anyio.wait_all_tasks_blocked()
        before = list(out)
        await service.send_audio(pcm[split:])
        await service.stop_streaming()
    return before, out


async def test_finalize_ends_the_utterance_with_the_words_heard() -> None:
    speech = synthetic_speech((4,), word_seconds=0.2, lead_seconds=0.2)
    service = FakeSTTService()
    # mid third word: two words done, the third still being spoken
    before, out = await stream_finalizing(service, speech.pcm, 0.2 + 0.4 + 0.1)
    forced = [r for r in before if r.is_final]
    assert [r.transcript for r in forced] == ["w1 w2"]
    assert forced[0].is_end_of_utterance
    finals = [r.transcript for r in out if r.is_final and r.transcript]
    assert finals == ["w1 w2", "w3 w4"]  # the word being spoken is not split
    assert service.finalize_calls == 2


async def test_finalize_of_a_script_and_when_nothing_is_heard() -> None:
    service = FakeSTTService(script=[Utterance("one two three", start=0.0, end=0.3)])
    before, out = await stream_finalizing(service, b"\0\0" * 3200, 0.15)
    assert [r.transcript for r in before if r.is_final] == ["one"]
    assert [r.transcript for r in out if r.is_final] == ["one"]  # the cut utterance is over
    await service.finalize()  # no stream: nothing happens
    assert service.finalize_calls == 2


async def test_options_are_recorded_and_unsupported_ones_refused() -> None:
    service = FakeSTTService(supported_options={"language"})
    with pytest.raises(UnsupportedOption, match="keywords"):
        await service.start_streaming(ENGINE_FORMAT, StreamOptions(keywords=("x",)))
    assert service.options_received == []  # refused before the engine
    options = StreamOptions(language="en", interim_results=False)
    speech = synthetic_speech((3,))
    out = await run_with(service, speech.pcm, options)
    assert service.options_received == [options]
    assert out
    assert all(r.is_final for r in out)
    with pytest.raises(ConfigError, match="unknown stream options"):
        FakeSTTService(supported_options={"temperature"})
    # the conformance kit sees the refusal too
    await check_stt_service(lambda: FakeSTTService(supported_options=()), speech.pcm)


async def run_with(service: FakeSTTService, pcm: bytes, options: StreamOptions) -> list[STTResult]:
    out: list[STTResult] = []
    results = await service.start_streaming(ENGINE_FORMAT, options)
    await service.send_audio(pcm)
    await service.stop_streaming()
    async for r in results:
        out.append(r)
    return out


async def test_batch_streams_finals_only_and_records_latency() -> None:
    speech = synthetic_speech((3, 2))
    service = FakeSTTService()
    transcript = await service.transcribe(speech.pcm)
    assert transcript.text == speech.text
    assert service.options_received[-1].interim_results is False
    assert service.metrics.latency_count == service.metrics.finals > 0
