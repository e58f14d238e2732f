"""Audio formats, validation and conversion.

Engines mostly want 16 kHz mono signed 16-bit little-endian PCM; callers send whatever their
capture gives them. :class:`AudioConverter` turns any chunk into what the engine wants with one
streaming soxr resampler whose filter state carries across chunks, so a stream converted in
20 ms pieces equals the whole clip converted at once.

No I/O here except :func:`read_audio`, which reads a file the caller names.
"""

from __future__ import annotations

import enum
import io
import math
import wave
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from sttrouter.errors import AudioFormatError, MissingDependency

__all__ = [
    "ENGINE_FORMAT",
    "AudioChunk",
    "AudioConverter",
    "AudioFormat",
    "Encoding",
    "float_to_pcm16",
    "pcm16_to_float",
    "read_audio",
    "rms_dbfs",
    "to_float_frames",
]

MIN_SAMPLE_RATE: Final = 8_000
MAX_SAMPLE_RATE: Final = 192_000
MAX_CHANNELS: Final = 32

FloatArray = npt.NDArray[np.float32]
AudioChunk = bytes | bytearray | memoryview | npt.NDArray[Any]
"""What ``send_audio`` accepts: raw bytes in the stream's format, or a numpy array
(1-D for mono, ``(frames, channels)`` for more channels; integer arrays are read as int16,
float arrays as samples in -1..1)."""


class Encoding(enum.StrEnum):
    """Sample encoding of raw PCM bytes."""

    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"

    @property
    def sample_bytes(self) -> int:
        return 2 if self is Encoding.PCM_S16LE else 4


def _check_rate(_inst: object, _attr: object, value: int) -> None:
    if not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise AudioFormatError(
            f"sample rate {value} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; "
            "declare the rate your audio really has (16000 is what most engines want)"
        )


def _check_channels(_inst: object, _attr: object, value: int) -> None:
    if not 1 <= value <= MAX_CHANNELS:
        raise AudioFormatError(
            f"channel count {value} is outside 1..{MAX_CHANNELS}; use 1 for mono, 2 for stereo"
        )


def _to_encoding(value: Encoding | str) -> Encoding:
    try:
        return Encoding(value)
    except ValueError:
        choices = ", ".join(e.value for e in Encoding)
        raise AudioFormatError(f"unknown audio encoding {value!r}; use one of: {choices}") from None


@attrs.frozen
class AudioFormat:
    """The format of a stream of raw PCM audio.

    Args:
        sample_rate: samples per second per channel, 8 000..192 000.
        channels: interleaved channels, 1..32.
        encoding: ``pcm_s16le`` (default) or ``pcm_f32le``.
    """

    sample_rate: int = attrs.field(default=16_000, validator=_check_rate)
    channels: int = attrs.field(default=1, validator=_check_channels)
    encoding: Encoding = attrs.field(default=Encoding.PCM_S16LE, converter=_to_encoding)

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.channels * self.encoding.sample_bytes

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.frame_bytes

    def seconds(self, nbytes: int) -> float:
        """Duration of ``nbytes`` of audio in this format."""
        return nbytes / self.bytes_per_second

    def bytes_for(self, seconds: float) -> int:
        """Whole frames of this format that last ``seconds`` (rounded down), in bytes."""
        return int(seconds * self.sample_rate) * self.frame_bytes

    def __str__(self) -> str:
        return f"{self.sample_rate} Hz {self.channels} ch {self.encoding.value}"


ENGINE_FORMAT: Final = AudioFormat(16_000, 1, Encoding.PCM_S16LE)
"""16 kHz mono s16le: what almost every speech engine wants."""


def pcm16_to_float(data: npt.NDArray[np.int16]) -> FloatArray:
    """int16 samples to float32 in -1..1."""
    return (data.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def float_to_pcm16(data: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int16]:
    """float samples (nominally -1..1) to int16, clipping what lies outside."""
    # in place on one float32 buffer: np.clip's wrapper alone cost ~3 us per 20 ms chunk
    scaled = np.array(data, dtype=np.float32)  # a fresh array, even for 0-d input
    scaled *= np.float32(32768.0)
    np.rint(scaled, out=scaled)
    np.minimum(scaled, 32767.0, out=scaled)
    np.maximum(scaled, -32768.0, out=scaled)
    out: npt.NDArray[np.int16] = scaled.astype(np.int16)
    return out


def to_float_frames(chunk: AudioChunk, fmt: AudioFormat) -> FloatArray:
    """Decode and validate one chunk into float32 frames of shape ``(frames, channels)``.

    Raises:
        AudioFormatError: odd byte counts, partial frames, NaN or infinite floats, or an array
            whose channel count differs from ``fmt``.
    """
    if isinstance(chunk, np.ndarray):
        frames = _array_to_float(chunk, fmt)
        from_ints = np.issubdtype(chunk.dtype, np.integer)
    elif isinstance(chunk, bytes | bytearray | memoryview):
        frames = _bytes_to_float(bytes(chunk), fmt)
        from_ints = fmt.encoding is Encoding.PCM_S16LE
    else:
        raise AudioFormatError(
            f"audio chunk of type {type(chunk).__name__} is not supported; "
            "send bytes in the stream's format or a numpy array"
        )
    if not from_ints:  # int16 samples are always finite
        _check_finite(frames.reshape(-1))
    return frames


def _check_byte_count(nbytes: int, fmt: AudioFormat) -> None:
    width = fmt.encoding.sample_bytes
    if nbytes % width:
        raise AudioFormatError(
            f"{nbytes} bytes is not a whole number of {width}-byte {fmt.encoding.value} "
            "samples; send whole samples (an even byte count for pcm_s16le)"
        )
    if nbytes % fmt.frame_bytes:
        raise AudioFormatError(
            f"{nbytes} bytes is not a whole number of {fmt.channels}-channel frames "
            f"({fmt.frame_bytes} bytes each); check the declared channel count"
        )


def _bytes_to_float(data: bytes, fmt: AudioFormat) -> FloatArray:
    _check_byte_count(len(data), fmt)
    if fmt.encoding is Encoding.PCM_S16LE:
        flat = pcm16_to_float(np.frombuffer(data, dtype="<i2"))
    else:
        flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return flat.reshape(-1, fmt.channels)


def _array_to_float(arr: npt.NDArray[Any], fmt: AudioFormat) -> FloatArray:
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise AudioFormatError(
            f"audio array has {arr.ndim} dimensions; pass (frames,) for mono "
            "or (frames, channels) for more channels"
        )
    if arr.shape[1] != fmt.channels:
        raise AudioFormatError(
            f"audio array has {arr.shape[1]} channels but the stream was started with "
            f"{fmt.channels}; pass (frames, {fmt.channels}) arrays or restart with "
            f"AudioFormat(channels={arr.shape[1]})"
        )
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.int16:
            raise AudioFormatError(
                f"integer audio must be int16, got {arr.dtype}; convert it or send floats"
            )
        return pcm16_to_float(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise AudioFormatError(f"audio array dtype {arr.dtype} is not supported; use int16 or float32")


def rms_dbfs(frames: npt.NDArray[Any]) -> float:
    """Root-mean-square level of float frames in dBFS (-inf for digital silence)."""
    if frames.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(frames, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


class AudioConverter:
    """Converts a stream of chunks from one format to another.

    Mixes down to mono (channel mean) when the target is mono, resamples with one
    ``soxr.ResampleStream`` whose state persists across chunks, and encodes to the target
    encoding with clipping. Call :meth:`flush` once at the end of the stream to get the
    resampler's tail.

    This runs once per chunk on every stream, so raw bytes take a short path: decoding,
    mix-down and scaling to the target's units are one matrix product, the resampler works in
    those units (it is linear), and encoding rounds and clips in place.

    Args:
        source: the format chunks arrive in.
        target: the format to produce (default 16 kHz mono s16le).
        quality: soxr quality (``"HQ"`` by default).
    """

    def __init__(
        self, source: AudioFormat, target: AudioFormat = ENGINE_FORMAT, *, quality: str = "HQ"
    ) -> None:
        if target.channels not in (1, source.channels):
            raise AudioFormatError(
                f"cannot convert {source.channels} channels to {target.channels}; "
                "only mix-down to mono or keeping the channel count is supported"
            )
        self.source = source
        self.target = target
        self._resampler: Any = None
        if source.sample_rate != target.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(
                source.sample_rate,
                target.sample_rate,
                target.channels,
                dtype="float32",
                quality=quality,
            )
        self._passthrough = source == target
        self._raw_dtype = "<i2" if source.encoding is Encoding.PCM_S16LE else "<f4"
        # the pipeline works in target units: int16 steps for s16 targets, +-1 for f32
        self._to_s16 = target.encoding is Encoding.PCM_S16LE
        self._unit = np.float32(32768.0 if self._to_s16 else 1.0)
        raw_scale = (1.0 / 32768.0 if self._raw_dtype == "<i2" else 1.0) * float(self._unit)
        mix = target.channels == 1 and source.channels > 1
        n = source.channels
        self._raw_mix = np.full((n, 1), raw_scale / n, dtype=np.float32) if mix else None
        self._float_mix = np.full((n, 1), float(self._unit) / n, dtype=np.float32) if mix else None
        self._raw_scale = np.float32(raw_scale)

    def convert(self, chunk: AudioChunk) -> bytes:
        """Validate one chunk and return it in the target format (possibly empty)."""
        if isinstance(chunk, bytes | bytearray | memoryview):
            data = chunk if isinstance(chunk, bytes) else bytes(chunk)
            _check_byte_count(len(data), self.source)
            flat = np.frombuffer(data, dtype=self._raw_dtype)
            if self._raw_dtype == "<f4":
                _check_finite(flat)
            if self._passthrough:
                return data
            frames = flat.reshape(-1, self.source.channels)
            return self._encode(self._resample(self._scale(frames, self._raw_mix, self._raw_scale)))
        frames = to_float_frames(chunk, self.source)
        return self._encode(self._resample(self._scale(frames, self._float_mix, self._unit)))

    def convert_frames(self, frames: FloatArray) -> FloatArray:
        """Like :meth:`convert` for already-decoded float frames (-1..1); returns float frames."""
        out = self._resample(self._scale(frames, self._float_mix, self._unit))
        out /= self._unit
        return out

    def flush(self) -> bytes:
        """Return the resampler's remaining output; the converter is then spent."""
        if self._resampler is None:
            return b""
        empty = np.zeros((0, self.target.channels), dtype=np.float32)
        return self._encode(self._resample(empty, last=True))

    @staticmethod
    def _scale(frames: npt.NDArray[Any], mix: FloatArray | None, scale: np.float32) -> FloatArray:
        """Mix down (a matrix product: ``mean`` over a short axis is ~10x slower) and scale
        to target units, always into a new writable float32 array."""
        if mix is not None:
            out: FloatArray = frames @ mix
            return out
        scaled: FloatArray = frames.astype(np.float32) * scale
        return scaled

    def _resample(self, frames: FloatArray, *, last: bool = False) -> FloatArray:
        if self._resampler is None:
            return frames
        out = self._resampler.resample_chunk(np.ascontiguousarray(frames), last=last)
        return np.asarray(out, dtype=np.float32).reshape(-1, self.target.channels)

    def _encode(self, frames: FloatArray) -> bytes:
        """Round (s16) and clip in place, then serialise."""
        if self._to_s16:
            np.rint(frames, out=frames)
            np.minimum(frames, 32767.0, out=frames)
            np.maximum(frames, -32768.0, out=frames)
            return frames.astype("<i2").tobytes()
        np.minimum(frames, 1.0, out=frames)
        np.maximum(frames, -1.0, out=frames)
        return frames.astype("<f4", copy=False).tobytes()


def _check_finite(flat: npt.NDArray[Any]) -> None:
    # one dot product is ~3x cheaper than isfinite().all(); it overflows to inf only for
    # absurd magnitudes, so confirm with the exact check before refusing
    if flat.size and not np.isfinite(np.dot(flat, flat)) and not np.isfinite(flat).all():
        raise AudioFormatError(
            "audio contains NaN or infinite samples; clean the signal "
            "(for example numpy.nan_to_num) before sending it"
        )


def read_audio(path: str | Path) -> tuple[bytes, AudioFormat]:
    """Read an audio file into raw PCM bytes and their format.

    WAV (PCM 16-bit, or 32-bit float) is read with the standard library; FLAC, OGG and MP3 need
    ``soundfile`` (``pip install 'sttrouter[offline]'``).

    Raises:
        AudioFormatError: the file is missing, empty or unreadable.
        MissingDependency: a non-WAV file and soundfile is not installed.
    """
    p = Path(path)
    if p.is_dir():
        raise AudioFormatError(f"{str(p)!r} is a directory, not an audio file")
    if not p.is_file():
        raise AudioFormatError(f"audio file {str(p)!r} does not exist; check the path")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise AudioFormatError(f"cannot read audio file {str(p)!r}: {exc.strerror}") from exc
    if not raw:
        raise AudioFormatError(f"audio file {str(p)!r} is empty; record or export it again")
    if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
        try:
            return _read_wav(raw, p)
        except (wave.Error, EOFError):
            pass  # e.g. float WAV (format 3): soundfile reads it
    data, fmt = _read_soundfile(raw, p)
    if not data:
        raise AudioFormatError(f"audio file {str(p)!r} holds no samples")
    return data, fmt


def _read_wav(raw: bytes, path: Path) -> tuple[bytes, AudioFormat]:
    with wave.open(io.BytesIO(raw)) as w:
        width, rate, channels = w.getsampwidth(), w.getframerate(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise wave.Error(f"{8 * width}-bit")
    if not frames:
        raise AudioFormatError(f"audio file {str(path)!r} holds no samples")
    return frames, AudioFormat(rate, channels, Encoding.PCM_S16LE)


def _read_soundfile(raw: bytes, path: Path) -> tuple[bytes, AudioFormat]:
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - soundfile ships with the offline extra
        raise MissingDependency("soundfile", "offline") from exc
    try:
        data, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        # LibsndfileError's str() names the in-memory buffer; its error_string does not
        why = getattr(exc, "error_string", None) or str(exc)
        raise AudioFormatError(
            f"cannot read audio file {str(path)!r} ({why}); use WAV, FLAC, OGG or MP3"
        ) from exc
    fmt = AudioFormat(int(rate), int(data.shape[1]), Encoding.PCM_F32LE)
    return np.ascontiguousarray(data, dtype="<f4").tobytes(), fmt
