"""The built-in offline engine (PocketSphinx), on the committed espeak-ng clips.

Accuracy bounds are what this engine really reaches on these clips (see docs/offline.md),
with some headroom; they guard against regressions such as a broken second pass or wrong
resampling, not against pocketsphinx's known weakness.
"""

from __future__ import annotations

import itertools
import json
import sys
from decimal import Decimal
from pathlib import Path

import anyio
import jiwer
import pytest
import soundfile

from sttrouter.audio import ENGINE_FORMAT, AudioFormat, read_audio
from sttrouter.endpoint import Location, Provider
from sttrouter.errors import ConfigError, EndpointMisconfigured, MissingDependency, StreamingFailed
from sttrouter.providers import create_service
from sttrouter.providers.offline import (
    DECODERS,
    OfflineOptions,
    OfflineSTTService,
    Recognizer,
    offline_endpoint,
)
from sttrouter.results import STTResult, Transcript
from sttrouter.service import iter_chunks, stream_transcribe
from sttrouter.testing import check_stt_service

pytestmark = pytest.mark.anyio

AUDIO = Path(__file__).parent.parent / "examples" / "audio"
_norm = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
)


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(_norm(reference), _norm(hypothesis)))


def reference(name: str) -> str:
    return (AUDIO / f"{name}.txt").read_text().replace("\n", " ").strip()


def clip(name: str) -> tuple[bytes, AudioFormat]:
    return read_audio(AUDIO / name)


async def stream_results(
    service: OfflineSTTService, data: bytes, fmt: AudioFormat, chunk_seconds: float = 0.02
) -> list[STTResult]:
    results: list[STTResult] = []
    await stream_transcribe(
        service, data, fmt, chunk_seconds=chunk_seconds, on_result=results.append
    )
    return results


_cache: dict[str, object] = {}


async def transcribed(name: str) -> Transcript:
    """``OfflineSTTService().transcribe`` of a committed clip, decoded once per test run."""
    if name not in _cache:
        _cache[name] = await OfflineSTTService().transcribe(AUDIO / name)
    result = _cache[name]
    assert isinstance(result, Transcript)
    return result


async def long_stream() -> list[STTResult]:
    """Every result of streaming the long clip in 20 ms chunks, with interims (cached)."""
    if "long-stream" not in _cache:
        data, fmt = clip("long_16k.wav")
        _cache["long-stream"] = await stream_results(OfflineSTTService(), data, fmt)
    results = _cache["long-stream"]
    assert isinstance(results, list)
    return results


def test_manifest_lists_every_clip_with_its_text() -> None:
    lines = [json.loads(line) for line in (AUDIO / "manifest.jsonl").read_text().splitlines()]
    assert {entry["audio"] for entry in lines} == {p.name for p in AUDIO.glob("*.wav")}
    for entry in lines:
        name = entry["audio"].split("_")[0]
        assert _norm(entry["text"]) == _norm(reference(name))
        data, fmt = clip(entry["audio"])
        assert 3.0 <= fmt.seconds(len(data)) <= 20.0


def test_offline_endpoint_describes_the_builtin_engine() -> None:
    ep = offline_endpoint(vad_mode=2)
    assert ep.id == "offline"
    assert ep.provider == Provider.OFFLINE
    assert ep.location is Location.ON_DEVICE
    assert not ep.needs_network
    assert ep.cost_per_hour == Decimal(0)
    assert ep.supported_languages == frozenset({"en"})
    assert ep.connection.options == {"vad_mode": 2}
    service = create_service(offline_endpoint("ps"))
    assert isinstance(service, OfflineSTTService)
    assert service.cost_per_hour == 0
    assert service.endpoint.id == "ps"
    assert OfflineSTTService().endpoint.id == "offline"


async def test_conformance() -> None:
    data, fmt = clip("water_16k.wav")
    results = await check_stt_service(lambda: OfflineSTTService(offline_endpoint()), data, fmt)
    assert any(not r.is_final for r in results)
    assert wer(reference("water"), Transcript.from_results(results).text) <= 0.2


async def test_long_clip_yields_one_final_per_sentence_in_order() -> None:
    data, fmt = clip("long_16k.wav")
    results = await long_stream()
    finals = [r for r in results if r.is_final]
    sentences = reference("long")
    assert len(finals) >= 2  # four sentences with 0.8 s pauses: four finals here
    assert all(r.is_end_of_utterance for r in finals)
    for before, after in itertools.pairwise(finals):
        assert before.end <= after.start + 1e-9  # increasing, not overlapping
    for r in finals:
        assert r.language == "en"
        assert r.endpoint_id == "offline"
        assert r.words
        assert r.transcript == " ".join(w.word for w in r.words)
        assert 0.0 < (r.confidence or 0.0) <= 1.0
        for w in r.words:
            assert r.start - 1e-9 <= w.start <= w.end <= r.end + 1e-9
            assert w.confidence is None or 0.0 <= w.confidence <= 1.0
        starts = [w.start for w in r.words]
        assert starts == sorted(starts)
        assert not any(w.word.startswith(("<", "[")) or "(" in w.word for w in r.words)
    assert finals[-1].end <= fmt.seconds(len(data)) + 1e-9
    assert wer(sentences, " ".join(r.transcript for r in finals)) <= 0.2
    # interims of each utterance arrive before its final
    seen_final = 0
    interims_before: list[int] = [0] * len(finals)
    for r in results:
        if r.is_final:
            seen_final += 1
        else:
            assert r.start >= (finals[seen_final - 1].end - 1e-9 if seen_final else 0.0)
            interims_before[seen_final] += 1
    assert all(n > 0 for n in interims_before)


@pytest.mark.parametrize("name", ["fox", "water"])
async def test_48k_stereo_twin_transcribes_as_well_as_16k_mono(name: str) -> None:
    mono = await transcribed(f"{name}_16k.wav")
    stereo = await transcribed(f"{name}_48k_stereo.wav")
    mono_wer = wer(reference(name), mono.text)
    stereo_wer = wer(reference(name), stereo.text)
    assert abs(mono_wer - stereo_wer) <= 0.15
    assert max(mono_wer, stereo_wer) <= 0.4  # observed: fox 0.22-0.33, water 0.0


async def test_float_wav_decodes_like_its_int16_twin(tmp_path: Path) -> None:
    samples, rate = soundfile.read(AUDIO / "water_48k_stereo.wav", dtype="float32")
    float_wav = tmp_path / "twin_f32.wav"
    soundfile.write(float_wav, samples, rate, subtype="FLOAT")
    floats = await OfflineSTTService().transcribe(float_wav)
    assert floats.text == (await transcribed("water_48k_stereo.wav")).text


async def test_finals_do_not_depend_on_chunking_or_interims_or_decoder_reuse() -> None:
    streamed = [r for r in await long_stream() if r.is_final]  # 20 ms chunks, interims
    batch = await transcribed("long_16k.wav")  # 1 s chunks, no live pass, pooled decoder
    assert [(r.transcript, r.start, r.duration) for r in batch.results] == [
        (r.transcript, r.start, r.duration) for r in streamed
    ]
    data, fmt = clip("water_16k.wav")
    odd = await stream_results(OfflineSTTService(interim_results=False), data, fmt, 0.137)
    assert all(r.is_final for r in odd)
    expected = await transcribed("water_16k.wav")
    assert [r.transcript for r in odd] == [r.transcript for r in expected.results]


async def test_long_utterances_are_cut_at_max_utterance_seconds() -> None:
    data, fmt = clip("hello_16k.wav")  # about 4.7 s of speech without a pause
    service = OfflineSTTService(max_utterance_seconds=1.5, interim_results=False)
    finals = [r for r in await stream_results(service, data, fmt, 0.1) if r.is_final]
    assert len(finals) >= 3
    assert [r.is_end_of_utterance for r in finals[:-1]] == [False] * (len(finals) - 1)
    assert finals[-1].is_end_of_utterance
    for before, after in itertools.pairwise(finals):
        assert after.start == pytest.approx(before.end)  # a cut leaves no gap
        assert before.duration <= 1.5 + 0.2 + 1e-9  # plus the lead-in


async def test_silence_gives_no_results() -> None:
    silence = bytes(ENGINE_FORMAT.bytes_for(2.0))
    service = OfflineSTTService()
    results = await stream_results(service, silence, ENGINE_FORMAT)
    assert results == []
    transcript = await service.transcribe(silence, ENGINE_FORMAT)
    assert transcript.text == ""


async def test_stop_in_the_middle_of_speech_finishes_the_utterance() -> None:
    data, fmt = clip("hello_16k.wav")
    half = data[: fmt.bytes_for(2.5)]
    service = OfflineSTTService()
    results = await service.start_streaming(fmt)
    for chunk in iter_chunks(half, fmt, 0.02):
        await service.send_audio(chunk)
    last = await service.stop_streaming()
    collected = [r async for r in results]
    assert last is not None
    assert last.is_final
    assert last.is_end_of_utterance
    assert last.end == pytest.approx(2.5)
    assert "my name is" in last.transcript
    assert collected[-1] == last


async def test_cancel_mid_stream_then_the_next_stream_is_unaffected() -> None:
    data, fmt = clip("water_16k.wav")
    service = OfflineSTTService()
    expected = (await transcribed("water_16k.wav")).text
    results = await service.start_streaming(fmt)
    for chunk in iter_chunks(data[: fmt.bytes_for(2.0)], fmt, 0.02):
        await service.send_audio(chunk)
    await service.cancel_streaming()
    assert [r async for r in results if r.is_final] == []
    assert (await service.transcribe(data, fmt)).text == expected


async def test_concurrent_streams_decode_independently() -> None:
    fox, fmt = clip("fox_16k.wav")
    water, _ = clip("water_16k.wav")
    out: dict[str, str] = {}

    async def run(name: str, data: bytes) -> None:
        service = OfflineSTTService(offline_endpoint(name), interim_results=False)
        results = await stream_results(service, data, fmt, 0.05)
        out[name] = Transcript.from_results(results).text

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "fox", fox)
        tg.start_soon(run, "water", water)
    assert wer(reference("fox"), out["fox"]) <= 0.4
    assert wer(reference("water"), out["water"]) <= 0.2


async def test_jsgf_grammar_option(tmp_path: Path) -> None:
    grammar = tmp_path / "commands.jsgf"
    grammar.write_text(
        "#JSGF V1.0;\ngrammar commands;\n"
        "public <command> = the quick brown fox jumps over the lazy dog"
        " | please drink a glass of water every morning | turn the lights off;\n"
    )
    service = OfflineSTTService(offline_endpoint(jsgf=str(grammar)))
    transcript = await service.transcribe(AUDIO / "fox_16k.wav")
    assert transcript.text == "the quick brown fox jumps over the lazy dog"


async def test_a_bad_model_path_is_a_permanent_misconfiguration(tmp_path: Path) -> None:
    service = OfflineSTTService(hmm=str(tmp_path / "missing-model"))
    with pytest.raises(EndpointMisconfigured, match="missing-model") as info:
        await service.probe()
    assert not info.value.retryable
    with pytest.raises(EndpointMisconfigured):
        await service.start_streaming()
    assert not service.is_streaming


async def test_probe_loads_the_default_model() -> None:
    await OfflineSTTService().probe()


async def test_a_decoder_failure_fails_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Recognizer, pcm: bytes) -> list[STTResult]:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(Recognizer, "feed", boom)
    service = OfflineSTTService()
    data, fmt = clip("water_16k.wav")
    results = await service.start_streaming(fmt)
    with pytest.raises(StreamingFailed, match="decoder exploded"):
        for chunk in iter_chunks(data, fmt, 0.02):
            await service.send_audio(chunk)
        await service.stop_streaming()
    with pytest.raises(StreamingFailed, match="pocketsphinx failed"):
        async for _ in results:
            pass
    await service.cancel_streaming()
    assert not service.is_streaming


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"beam": 1e-40}, "beam"),
        ({"hmm": ""}, "hmm"),
        ({"lm": 3}, "lm"),
        ({"vad_mode": 4}, "vad_mode"),
        ({"vad_mode": True}, "vad_mode"),
        ({"vad_window": 0}, "vad_window"),
        ({"vad_ratio": "high"}, "vad_ratio"),
        ({"kws_threshold": float("nan")}, "kws_threshold"),
        ({"interim_results": "yes"}, "interim_results"),
        ({"max_utterance_seconds": 0.5}, "max_utterance_seconds"),
        ({"jsgf": "a.jsgf", "keyphrase": "hello"}, "keyphrase"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"field '{field}'") as info:
        OfflineSTTService(offline_endpoint("ps", **options))
    assert "endpoint 'ps'" in str(info.value)


def test_options_from_endpoint_and_keywords() -> None:
    service = OfflineSTTService(offline_endpoint(vad_mode=1, interim_results=False), vad_mode=3)
    assert service.options == OfflineOptions(vad_mode=3, interim_results=False)
    opts = OfflineOptions.from_mapping(
        {"lm": "x.lm", "dict": "x.dict", "kws_threshold": 1e-20, "vad_window": 1}
    )
    config = dict(opts.decoder_config())
    assert config["lm"] == "x.lm"
    assert config["dict"] == "x.dict"
    assert config["samprate"] == 16_000
    assert "hmm" not in config
    assert opts.vad_window == 1.0


def test_missing_pocketsphinx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)
    with pytest.raises(MissingDependency, match=r"sttrouter\[offline\]") as info:
        OfflineSTTService()
    assert info.value.extra == "offline"


def test_recognizer_directly_on_a_pooled_decoder() -> None:
    key = OfflineOptions().decoder_config()
    decoder, cmn = DECODERS.acquire(key)
    try:
        rec = Recognizer(decoder, cmn, OfflineOptions(interim_results=False))
        data, fmt = clip("water_16k.wav")
        data = data[: fmt.bytes_for(1.6)]  # "please drink a ..."
        out = rec.feed(data[:700]) + rec.feed(data[700:])
        assert out == []
        assert rec.in_utterance
        out = rec.finish()
        assert [r.is_final for r in out] == [True]
        assert not rec.in_utterance
        assert out[0].transcript.startswith("please drink")
        assert rec.finish() == []
    finally:
        DECODERS.release(key, decoder, cmn)


async def test_finalize_mid_speech_cuts_the_utterance_and_only_english_is_taken() -> None:
    from sttrouter.errors import UnsupportedOption
    from sttrouter.options import StreamOptions

    data, fmt = clip("hello_16k.wav")
    split = fmt.bytes_for(2.5)
    service = OfflineSTTService()
    with pytest.raises(UnsupportedOption, match="language"):
        await service.start_streaming(fmt, StreamOptions(language="de"))
    with pytest.raises(UnsupportedOption, match="keywords"):
        await service.start_streaming(fmt, StreamOptions(keywords=("hello",)))
    results = await service.start_streaming(fmt, StreamOptions(language="en"))
    for chunk in iter_chunks(data[:split], fmt, 0.02):
        await service.send_audio(chunk)
    await service.finalize()
    for chunk in iter_chunks(data[split:], fmt, 0.02):
        await service.send_audio(chunk)
    await service.stop_streaming()
    finals = [r async for r in results if r.is_final]
    cut = next(r for r in finals if r.end == pytest.approx(2.5))
    assert cut.is_end_of_utterance
    assert "my name is" in cut.transcript
    assert finals[-1].end > 2.5  # the speech after the cut is its own utterance


async def test_batch_records_latency() -> None:
    data, fmt = clip("hello_16k.wav")
    service = OfflineSTTService()
    await service.transcribe(data, fmt)
    assert service.metrics.latency_count == service.metrics.finals > 0
