"""Audio formats, validation, streaming conversion and file reading (sttrouter.audio)."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.audio import (
    ENGINE_FORMAT,
    AudioConverter,
    AudioFormat,
    Encoding,
    float_to_pcm16,
    pcm16_to_float,
    read_audio,
    rms_dbfs,
    to_float_frames,
)
from sttrouter.errors import AudioFormatError, CallerError

AUDIO = Path(__file__).parent.parent / "examples" / "audio"
STEREO_48K_F32 = AudioFormat(48_000, 2, Encoding.PCM_F32LE)


def tone(seconds: float, rate: int = 48_000, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A few sines plus a little noise, ``(frames, channels)`` float32 in -0.6..0.6."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    cols = [
        0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t)
        + 0.2 * np.sin(2 * np.pi * 3100 * t)
        + 0.05 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def one_shot_16k(frames: np.ndarray) -> np.ndarray:
    """The reference: mix to mono, then one soxr.resample call over the whole clip."""
    mono = frames.mean(axis=1, dtype=np.float32)
    return np.asarray(soxr.resample(mono, 48_000, 16_000, quality="HQ"), dtype=np.float32)


def streamed_16k(frames: np.ndarray, chunk_frames: int) -> np.ndarray:
    conv = AudioConverter(STEREO_48K_F32, ENGINE_FORMAT)
    parts = [
        conv.convert(frames[i : i + chunk_frames].astype("<f4").tobytes())
        for i in range(0, len(frames), chunk_frames)
    ]
    parts.append(conv.flush())
    return pcm16_to_float(np.frombuffer(b"".join(parts), dtype="<i2"))


# -- AudioFormat ------------------------------------------------------------------------


def test_format_properties() -> None:
    fmt = AudioFormat(48_000, 2, "pcm_f32le")
    assert fmt.encoding is Encoding.PCM_F32LE
    assert fmt.frame_bytes == 8
    assert fmt.bytes_per_second == 384_000
    assert fmt.seconds(384_000) == 1.0
    assert fmt.bytes_for(0.02) == 960 * 8
    assert str(ENGINE_FORMAT) == "16000 Hz 1 ch pcm_s16le"
    assert Encoding.PCM_S16LE.sample_bytes == 2


@pytest.mark.parametrize("rate", [0, 7_999, 192_001, -16_000])
def test_sample_rate_out_of_range(rate: int) -> None:
    with pytest.raises(AudioFormatError, match=rf"sample rate {rate} Hz is outside") as info:
        AudioFormat(rate)
    assert "declare the rate your audio really has" in str(info.value)


@pytest.mark.parametrize("rate", [8_000, 192_000])
def test_sample_rate_limits_are_allowed(rate: int) -> None:
    assert AudioFormat(rate).sample_rate == rate


@pytest.mark.parametrize("channels", [0, 33])
def test_channel_count_out_of_range(channels: int) -> None:
    with pytest.raises(AudioFormatError, match="use 1 for mono, 2 for stereo"):
        AudioFormat(16_000, channels)


def test_unknown_encoding_lists_the_choices() -> None:
    with pytest.raises(AudioFormatError, match="unknown audio encoding 'mp3'") as info:
        AudioFormat(16_000, 1, "mp3")
    assert "pcm_s16le, pcm_f32le" in str(info.value)
    assert isinstance(info.value, CallerError)
    assert not info.value.retryable


# -- validation of chunks ---------------------------------------------------------------


def test_odd_byte_count_for_s16() -> None:
    with pytest.raises(AudioFormatError, match="3 bytes is not a whole number of 2-byte") as info:
        to_float_frames(b"\x00\x01\x02", ENGINE_FORMAT)
    assert "send whole samples (an even byte count" in str(info.value)


def test_partial_frame_for_stereo() -> None:
    with pytest.raises(AudioFormatError, match=r"2-channel frames \(4 bytes each\)") as info:
        to_float_frames(b"\x00" * 6, AudioFormat(16_000, 2))
    assert "check the declared channel count" in str(info.value)


def test_f32_byte_count_must_be_a_multiple_of_4() -> None:
    with pytest.raises(AudioFormatError, match="4-byte pcm_f32le samples"):
        to_float_frames(b"\x00" * 6, AudioFormat(16_000, 1, "pcm_f32le"))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_floats_are_rejected(bad: float) -> None:
    f32 = AudioFormat(16_000, 1, "pcm_f32le")
    raw = struct.pack("<3f", 0.0, bad, 0.1)
    with pytest.raises(AudioFormatError, match="NaN or infinite") as info:
        to_float_frames(raw, f32)
    assert "numpy.nan_to_num" in str(info.value)
    with pytest.raises(AudioFormatError, match="NaN or infinite"):
        AudioConverter(f32).convert(np.array([0.0, bad], dtype=np.float32))


def test_array_channel_mismatch_names_both_counts() -> None:
    with pytest.raises(AudioFormatError, match="has 3 channels but the stream was started with 2"):
        to_float_frames(np.zeros((10, 3), dtype=np.float32), AudioFormat(16_000, 2))
    with pytest.raises(AudioFormatError, match=r"restart with AudioFormat\(channels=1\)"):
        to_float_frames(np.zeros(10, dtype=np.float32), AudioFormat(16_000, 2))


def test_bad_arrays_and_types() -> None:
    with pytest.raises(AudioFormatError, match="3 dimensions"):
        to_float_frames(np.zeros((2, 2, 2), dtype=np.float32), ENGINE_FORMAT)
    with pytest.raises(AudioFormatError, match="integer audio must be int16, got int32"):
        to_float_frames(np.zeros(4, dtype=np.int32), ENGINE_FORMAT)
    with pytest.raises(AudioFormatError, match="dtype complex64 is not supported"):
        to_float_frames(np.zeros(4, dtype=np.complex64), ENGINE_FORMAT)
    with pytest.raises(AudioFormatError, match="chunk of type str is not supported"):
        to_float_frames("abc", ENGINE_FORMAT)  # type: ignore[arg-type]


def test_int16_arrays_bytes_and_memoryview_decode_alike() -> None:
    samples = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    from_array = to_float_frames(samples, ENGINE_FORMAT)
    from_bytes = to_float_frames(samples.tobytes(), ENGINE_FORMAT)
    from_view = to_float_frames(memoryview(bytearray(samples.tobytes())), ENGINE_FORMAT)
    assert from_array.shape == (4, 1)
    np.testing.assert_array_equal(from_array, from_bytes)
    np.testing.assert_array_equal(from_array, from_view)
    np.testing.assert_allclose(from_array[:, 0], [0.0, 0.5, -1.0, 32767 / 32768])


# -- conversion -------------------------------------------------------------------------


def test_pcm16_float_round_trip_and_clipping() -> None:
    ints = np.arange(-32768, 32768, 257, dtype=np.int16)
    np.testing.assert_array_equal(float_to_pcm16(pcm16_to_float(ints)), ints)
    clipped = float_to_pcm16(np.array([1.5, -2.0, 1.0, -1.0], dtype=np.float32))
    assert clipped.tolist() == [32767, -32768, 32767, -32768]


def test_float_above_one_is_clipped_on_conversion() -> None:
    conv = AudioConverter(AudioFormat(16_000, 1, "pcm_f32le"), ENGINE_FORMAT)
    out = np.frombuffer(conv.convert(np.array([2.0, -3.0, 0.25], dtype=np.float32)), "<i2")
    assert out.tolist() == [32767, -32768, 8192]
    to_f32 = AudioConverter(ENGINE_FORMAT, AudioFormat(16_000, 1, "pcm_f32le"))
    assert np.frombuffer(to_f32.convert(np.array([0, 16384], np.int16)), "<f4").tolist() == [
        0.0,
        0.5,
    ]


def test_passthrough_returns_the_same_bytes_and_still_validates() -> None:
    conv = AudioConverter(ENGINE_FORMAT, ENGINE_FORMAT)
    data = np.arange(100, dtype="<i2").tobytes()
    assert conv.convert(data) == data
    assert conv.convert(bytearray(data)) == data
    assert conv.flush() == b""
    with pytest.raises(AudioFormatError):
        conv.convert(data[:-1])
    assert conv.convert(np.arange(100, dtype=np.int16)) == data


def test_stereo_mixes_down_to_the_channel_mean() -> None:
    conv = AudioConverter(AudioFormat(16_000, 2), ENGINE_FORMAT)
    stereo = np.array([[1000, 3000], [-2000, 0]], dtype=np.int16)
    assert np.frombuffer(conv.convert(stereo), "<i2").tolist() == [2000, -1000]
    keep = AudioConverter(AudioFormat(16_000, 2), AudioFormat(16_000, 2))
    assert np.frombuffer(keep.convert(stereo), "<i2").tolist() == [1000, 3000, -2000, 0]
    frames = keep.convert_frames(pcm16_to_float(stereo))
    assert frames.shape == (2, 2)


def test_unsupported_channel_conversion() -> None:
    with pytest.raises(AudioFormatError, match="cannot convert 2 channels to 3"):
        AudioConverter(AudioFormat(16_000, 2), AudioFormat(16_000, 3))


def test_streamed_20ms_chunks_equal_one_shot_soxr() -> None:
    frames = tone(1.0)
    ref = one_shot_16k(frames)
    out = streamed_16k(frames, 960)  # 20 ms at 48 kHz
    assert len(out) == len(ref) == 16_000
    # the only difference is int16 quantisation of the output
    assert np.max(np.abs(out - np.clip(ref, -1, 1))) <= 1 / 32768 + 1e-6


@settings(max_examples=25, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=4_000), min_size=1, max_size=40),
    seconds=st.floats(min_value=0.05, max_value=0.6),
)
def test_any_chunking_equals_one_shot(chunks: list[int], seconds: float) -> None:
    frames = tone(seconds, seed=len(chunks))
    ref = np.clip(one_shot_16k(frames), -1, 1)
    conv = AudioConverter(STEREO_48K_F32, ENGINE_FORMAT)
    parts, pos, i = [], 0, 0
    while pos < len(frames):
        size = chunks[i % len(chunks)]
        parts.append(conv.convert(frames[pos : pos + size].astype("<f4").tobytes()))
        pos += size
        i += 1
    parts.append(conv.flush())
    out = pcm16_to_float(np.frombuffer(b"".join(parts), dtype="<i2"))
    assert len(out) == len(ref)
    assert np.max(np.abs(out - ref), initial=0.0) <= 1 / 32768 + 1e-6


def test_upsampling_keeps_the_duration() -> None:
    conv = AudioConverter(AudioFormat(8_000, 1), AudioFormat(16_000, 1))
    data = (np.sin(np.arange(8_000) / 5) * 10_000).astype("<i2").tobytes()
    out = b"".join(conv.convert(data[i : i + 320]) for i in range(0, len(data), 320))
    out += conv.flush()
    assert len(out) == 2 * 16_000


def test_rms_dbfs() -> None:
    assert rms_dbfs(np.zeros(0, dtype=np.float32)) == -math.inf
    assert rms_dbfs(np.zeros(10, dtype=np.float32)) == -math.inf
    assert rms_dbfs(np.ones(10, dtype=np.float32)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(10, 0.1, dtype=np.float32)) == pytest.approx(-20.0, abs=1e-4)


# -- files ------------------------------------------------------------------------------


def test_read_committed_wavs() -> None:
    data, fmt = read_audio(AUDIO / "water_16k.wav")
    assert fmt == ENGINE_FORMAT
    assert fmt.seconds(len(data)) == pytest.approx(3.86)
    data48, fmt48 = read_audio(str(AUDIO / "water_48k_stereo.wav"))
    assert fmt48 == AudioFormat(48_000, 2)
    assert fmt48.seconds(len(data48)) == pytest.approx(3.86)


def test_read_float_wav_and_flac(tmp_path: Path) -> None:
    frames = tone(0.25, rate=24_000)
    float_wav = tmp_path / "f.wav"
    soundfile.write(float_wav, frames, 24_000, subtype="FLOAT")
    data, fmt = read_audio(float_wav)
    assert fmt == AudioFormat(24_000, 2, "pcm_f32le")
    np.testing.assert_array_equal(np.frombuffer(data, "<f4").reshape(-1, 2), frames)

    flac = tmp_path / "f.flac"
    soundfile.write(flac, frames, 24_000, subtype="PCM_16")
    data, fmt = read_audio(flac)
    assert fmt == AudioFormat(24_000, 2, "pcm_f32le")
    decoded = np.frombuffer(data, "<f4").reshape(-1, 2)
    assert decoded.shape == frames.shape
    assert np.max(np.abs(decoded - frames)) < 1e-4  # 16-bit FLAC


def test_read_24_bit_wav_through_soundfile(tmp_path: Path) -> None:
    path = tmp_path / "24.wav"
    soundfile.write(path, tone(0.1, rate=16_000, channels=1), 16_000, subtype="PCM_24")
    data, fmt = read_audio(path)
    assert fmt == AudioFormat(16_000, 1, "pcm_f32le")
    assert len(data) == 1600 * 4


def test_missing_empty_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(AudioFormatError, match="does not exist; check the path"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioFormatError, match="is a directory, not an audio file"):
        read_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioFormatError, match="is empty; record or export it again"):
        read_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioFormatError, match=r"cannot read audio file .* use WAV, FLAC, OGG"):
        read_audio(junk)


def test_wav_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
    with pytest.raises(AudioFormatError, match="holds no samples"):
        read_audio(path)


def test_wav_with_a_rate_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(4_000)
        w.writeframes(b"\x00\x00" * 100)
    with pytest.raises(AudioFormatError, match="sample rate 4000 Hz is outside"):
        read_audio(path)
