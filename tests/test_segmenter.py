"""The segmenter: batch engine → streaming service, plus the shared decoding guards."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.errors import ConfigError, StreamingFailed
from sttrouter.providers._decoding import (
    find_repetition,
    is_repetitive,
    text_units,
    token_budget,
    trim_repetition,
)
from sttrouter.providers.segmenter import (
    LOW_CONFIDENCE,
    SegmentedSTTService,
    SegmentResult,
    quietest_cut,
)
from sttrouter.providers.vad import VADConfig
from sttrouter.results import WordTimestamp
from sttrouter.service import stream_transcribe
from sttrouter.testing import check_stt_service, fake_endpoint, mark_word, synthetic_speech

pytestmark = pytest.mark.anyio

ENERGY = VADConfig(
    backend="energy", pad_seconds=0.05, min_silence_seconds=0.3, energy_floor_seconds=60.0
)


class MarkEngine:
    """A batch engine that reads synthetic-speech marks back as words ``w<n>``."""

    def __init__(self) -> None:
        self.calls: list[float] = []  # durations of the segments it was given
        self.gates: dict[int, asyncio.Event] = {}
        self.fail_on: int | None = None
        self.low_confidence = False

    async def transcribe_segment(self, pcm: bytes, sample_rate: int) -> SegmentResult:
        index = len(self.calls)
        self.calls.append(len(pcm) / 2 / sample_rate)
        if index in self.gates:
            await self.gates[index].wait()
        if self.fail_on == index:
            raise StreamingFailed("engine crashed (test)")
        samples = np.frombuffer(pcm, dtype="<i2")
        words: list[WordTimestamp] = []
        prev, start = 0, 0
        for i, v in enumerate([*samples.tolist(), 0]):
            if v != prev:
                if prev > 0 and i - start > 160:
                    words.append(
                        WordTimestamp(mark_word(prev), start / sample_rate, i / sample_rate)
                    )
                prev, start = v, i
        return SegmentResult(
            " ".join(w.word for w in words),
            confidence=0.9,
            words=tuple(words),
            low_confidence=self.low_confidence,
        )


def service(engine: object, **kw: object) -> SegmentedSTTService:
    kw.setdefault("vad", ENERGY)
    return SegmentedSTTService(fake_endpoint("seg"), engine, **kw)  # type: ignore[arg-type]


# -- the contract and the timeline -----------------------------------------------------------
async def test_conformance() -> None:
    speech = synthetic_speech((4, 3), gap_seconds=0.6, lead_seconds=0.2)
    await check_stt_service(lambda: service(MarkEngine()), speech.pcm)


async def test_one_final_per_utterance_at_the_right_times() -> None:
    speech = synthetic_speech((5, 3, 4), gap_seconds=0.6, lead_seconds=0.5)
    engine = MarkEngine()
    transcript = await service(engine).transcribe(speech.pcm)
    assert transcript.text == speech.text
    assert len(transcript.results) == 3
    for result, (start, end) in zip(transcript.results, speech.utterances, strict=True):
        assert result.is_final
        assert result.is_end_of_utterance
        assert result.start == pytest.approx(start - 0.05, abs=0.04)
        assert result.end == pytest.approx(end + 0.05, abs=0.04)
        assert result.confidence == 0.9
    # word times are on the stream timeline
    truth = {w: (s, e) for w, s, e in speech.words}
    for w in transcript.words:
        assert w.start == pytest.approx(truth[w.word][0], abs=0.002)
        assert w.end == pytest.approx(truth[w.word][1], abs=0.002)
    assert len(engine.calls) == 3


async def test_finals_stay_in_order_when_a_later_segment_decodes_first() -> None:
    speech = synthetic_speech((3, 3, 3), gap_seconds=0.6)
    engine = MarkEngine()
    engine.gates[0] = asyncio.Event()
    svc = service(engine, max_concurrency=3)
    results = await svc.start_streaming()
    for chunk in speech.chunks(0.1):
        await svc.send_audio(chunk)
    await asyncio.sleep(0.01)
    assert len(engine.calls) == 3  # all three decodes ran concurrently
    engine.gates[0].set()
    last = await svc.stop_streaming()
    got = [r.transcript async for r in results]
    assert got == ["w1 w2 w3", "w4 w5 w6", "w7 w8 w9"]
    assert last is not None
    assert last.transcript == "w7 w8 w9"


async def test_bounded_concurrency_and_back_pressure() -> None:
    speech = synthetic_speech((1,) * 6, gap_seconds=0.6, word_seconds=0.3)
    engine = MarkEngine()
    engine.gates[0] = asyncio.Event()
    svc = service(engine, max_concurrency=1)
    svc_results = await svc.start_streaming()
    seg = svc._segmenter
    assert seg is not None
    seg._queue = asyncio.Queue(2)  # tiny queue: sending must wait for decoding
    sender = asyncio.create_task(_send_all(svc, speech.chunks(0.1)))
    await asyncio.sleep(0.02)
    assert len(engine.calls) == 1  # one slot: the others wait
    assert not sender.done()  # the queue is full: send_audio waits
    engine.gates[0].set()
    await sender
    await svc.stop_streaming()
    assert len([r async for r in svc_results]) == 6


async def _send_all(svc: SegmentedSTTService, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await svc.send_audio(chunk)


# -- long utterances -------------------------------------------------------------------------
async def test_long_utterance_is_cut_at_its_quietest_point() -> None:
    rate = 16000
    loud = np.full(int(2.6 * rate), 3000, dtype=np.int16)
    loud[int(1.7 * rate) : int(1.75 * rate)] = 300  # a quiet dip (not silence)
    pcm = np.concatenate([loud, np.zeros(rate, dtype=np.int16)]).astype("<i2").tobytes()
    engine = MarkEngine()
    transcript = await service(engine, max_segment_seconds=2.0).transcribe(pcm)
    assert max(engine.calls) <= 2.0
    first, second = transcript.results
    assert not first.is_end_of_utterance
    assert second.is_end_of_utterance
    assert first.end == pytest.approx(1.725, abs=0.03)
    assert second.start == pytest.approx(first.end)


def test_quietest_cut_edges() -> None:
    pcm = np.full(100, 5, dtype="<i2").tobytes()
    assert quietest_cut(pcm, 0, 100) == 100  # shorter than a window: cut at the end
    wave = np.full(32000, 1000, dtype=np.int16)
    wave[20000:21600] = 0
    assert quietest_cut(wave.tobytes(), 16000, 32000) == pytest.approx(20800, abs=160)


# -- interims --------------------------------------------------------------------------------
async def test_interims_re_decode_the_growing_segment() -> None:
    speech = synthetic_speech((12,), gap_seconds=0.6)
    engine = MarkEngine()
    svc = service(engine, interim_interval=0.3)
    results = await svc.start_streaming()
    collected = []

    async def consume() -> None:
        async for r in results:
            collected.append(r)

    task = asyncio.create_task(consume())
    for chunk in speech.chunks(0.1):
        await svc.send_audio(chunk)
        await asyncio.sleep(0)
    await svc.stop_streaming()
    await task
    interims = [r for r in collected if not r.is_final]
    assert len(interims) >= 2
    assert all(speech.text.startswith(r.transcript) for r in interims)
    lengths = [len(r.transcript) for r in interims]
    assert lengths == sorted(lengths)
    assert collected[-1].is_final
    assert collected[-1].transcript == speech.text


async def test_interim_failures_are_ignored_the_final_reports() -> None:
    speech = synthetic_speech((10,), gap_seconds=0.6)

    calls = 0

    async def flaky(pcm: bytes, rate: int) -> SegmentResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StreamingFailed("interim went wrong")
        return SegmentResult("ok")

    transcript = await service(flaky, interim_interval=0.3).transcribe(speech.pcm)
    assert transcript.text == "ok"


# -- failures and flags ----------------------------------------------------------------------
async def test_engine_error_fails_the_stream() -> None:
    speech = synthetic_speech((3, 3), gap_seconds=0.6)
    engine = MarkEngine()
    engine.fail_on = 1
    with pytest.raises(StreamingFailed, match="engine crashed") as info:
        await service(engine).transcribe(speech.pcm)
    assert info.value.endpoint_id == "seg"


async def test_low_confidence_is_capped() -> None:
    engine = MarkEngine()
    engine.low_confidence = True
    transcript = await service(engine).transcribe(synthetic_speech((3,)).pcm)
    assert transcript.results[0].confidence == LOW_CONFIDENCE


async def test_silence_only_gives_no_result_and_cancel_stops_decodes() -> None:
    engine = MarkEngine()
    svc = service(engine)
    results = await svc.start_streaming()
    await svc.send_audio(bytes(32000))
    assert await svc.stop_streaming() is None
    assert [r async for r in results] == []
    engine.gates[0] = asyncio.Event()
    await svc.start_streaming()
    for chunk in synthetic_speech((3,)).chunks(0.1):
        await svc.send_audio(chunk)
    await asyncio.sleep(0.01)
    await svc.cancel_streaming()
    assert not svc.is_streaming


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_segment_seconds": 0.5},
        {"max_concurrency": 0},
        {"interim_interval": 0.0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        service(MarkEngine(), **kwargs)


def test_a_non_engine_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a batch engine"):
        service(42)


async def test_stream_transcribe_with_a_plain_callable_and_any_input_rate() -> None:
    async def engine(pcm: bytes, rate: int) -> SegmentResult:
        return SegmentResult(f"{len(pcm) // 2 / rate:.1f}s", language="en")

    speech = synthetic_speech((5,), gap_seconds=0.6)
    transcript = await stream_transcribe(service(engine), speech.pcm, speech.format)
    assert transcript.language == "en"
    assert transcript.text == "0.6s"


# -- decoding guards -------------------------------------------------------------------------
def test_token_budget_scales_with_duration() -> None:
    assert token_budget(0.5) == 48
    assert token_budget(30.0) == 300
    assert token_budget(10_000.0) == 8192
    assert token_budget(2.0, tokens_per_second=15, minimum=10) == 30
    with pytest.raises(ValueError, match="non-negative"):
        token_budget(-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        token_budget(math.nan)


@pytest.mark.parametrize(
    "text",
    [
        "hello " + "and then " * 8,
        "the the the the the the the the the the the the the",
        "我们" * 10,
        "okay so " + "we can see that it is " * 4 + "we can",
    ],
)
def test_loops_are_detected(text: str) -> None:
    assert is_repetitive(text)


@pytest.mark.parametrize(
    "text",
    [
        "no no no I said",
        "very very good",
        "the quick brown fox jumps over the lazy dog",
        "我还能再搞一个，就算是非常小的声音也能识别准确",
        "",
    ],
)
def test_normal_text_is_not_a_loop(text: str) -> None:
    assert not is_repetitive(text)


def test_trim_keeps_the_first_occurrence() -> None:
    assert trim_repetition("okay so " + "we can see " * 6 + "we") == "okay so we can see"
    assert trim_repetition("hi " + "la " * 14 + "bye") == "hi la bye"
    assert trim_repetition("我们" * 10) == "我们"
    assert trim_repetition("plain text") == "plain text"


def test_token_ids_work_too() -> None:
    assert is_repetitive([1, 2, 3] + [7, 8, 9] * 5)
    rep = find_repetition([5, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 9])
    assert rep is not None
    assert (rep.start, rep.period, rep.repeats) == (1, 2, 6)
    assert rep.end == 13
    assert text_units("a b") == ["a", "b"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), unique=True, max_size=60))
def test_distinct_tokens_never_look_like_a_loop(tokens: list[int]) -> None:
    assert find_repetition(tokens) is None


@settings(max_examples=50, deadline=None)
@given(
    prefix=st.lists(st.integers(100, 200), max_size=5),
    unit=st.lists(st.integers(0, 99), min_size=1, max_size=6, unique=True),
    repeats=st.integers(12, 20),
)
def test_any_long_loop_is_found(prefix: list[int], unit: list[int], repeats: int) -> None:
    rep = find_repetition(prefix + unit * repeats)
    assert rep is not None
    assert rep.period == len(unit)


@settings(max_examples=25, deadline=None)
@given(
    utterances=st.lists(st.integers(3, 12), min_size=1, max_size=4),
    gap=st.floats(0.4, 1.0),
    chunk_ms=st.integers(5, 400),
    max_segment=st.one_of(st.just(30.0), st.floats(1.0, 2.5)),
)
async def test_finals_are_ordered_disjoint_bounded_and_cover_every_word(
    utterances: list[int], gap: float, chunk_ms: int, max_segment: float
) -> None:
    speech = synthetic_speech(utterances, gap_seconds=gap, lead_seconds=0.2)
    engine = MarkEngine()
    svc = service(engine, max_segment_seconds=max_segment, max_concurrency=2)
    transcript = await stream_transcribe(
        svc, speech.pcm, speech.format, chunk_seconds=chunk_ms / 1000
    )
    finals = transcript.results
    for a, b in itertools.pairwise(finals):
        assert b.start >= a.end - 1e-9  # in order, no overlap
    assert all(r.duration <= max_segment + 1e-9 for r in finals)
    assert max(engine.calls) <= max_segment + 1e-9
    heard = transcript.text.split()
    truth = [w for w, _, _ in speech.words]
    if max_segment == 30.0:
        assert heard == truth  # every word exactly once
    else:
        # a forced cut may split one word into two halves, each heard: never lose one
        assert set(heard) == set(truth)
        assert len(heard) <= len(truth) + len(finals)


async def test_finalize_cuts_the_open_segment_and_speech_goes_on() -> None:
    speech = synthetic_speech((4,), gap_seconds=0.6, lead_seconds=0.2)
    engine = MarkEngine()
    svc = service(engine)
    results = await svc.start_streaming()
    await svc.finalize()  # nothing open: nothing to cut
    split = ENGINE_FORMAT.bytes_for(0.55)  # inside the fourth word
    await svc.send_audio(speech.pcm[:split])
    await svc.finalize()
    await svc.send_audio(speech.pcm[split:])
    await svc.stop_streaming()
    finals = [r async for r in results if r.is_final]
    assert len(engine.calls) == 2  # the cut segment, then the rest of the utterance
    assert finals[0].end == pytest.approx(0.55)
    assert finals[0].is_end_of_utterance
    words = speech.text.split()
    assert finals[0].transcript == " ".join(words)  # the fourth word began before the cut
    assert finals[1].start == pytest.approx(0.55)
    assert finals[1].transcript == words[-1]  # and ends after it
