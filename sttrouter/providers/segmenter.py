"""Turn any batch speech engine into a streaming :class:`~sttrouter.service.STTService`.

GLM-ASR (on a server or in-process) decodes whole clips only. :class:`Segmenter` cuts the
stream into utterances with a :class:`~sttrouter.providers.vad.StreamingVAD`, decodes each
utterance with the batch engine, and reports one final per utterance on the stream's
timeline; :class:`SegmentedSTTService` is the ready-made service around it.

The batch engine
----------------
Anything with ``async def transcribe_segment(self, pcm: bytes, sample_rate: int) ->
SegmentResult`` (:class:`BatchEngine`), or a plain async callable with the same signature.
``pcm`` is 16 kHz mono s16le, at most ``max_segment_seconds`` long; the engine returns
:class:`SegmentResult` with word times (if any) relative to the segment's first sample. It
raises an :class:`~sttrouter.errors.STTError` when it fails; that fails the stream.

How segments are cut
--------------------
* An utterance runs from the VAD's ``start`` to its ``end`` event (padding included).
* An utterance longer than ``max_segment_seconds`` (30 s: GLM-ASR's encoder window and Z.AI's
  limit) is cut at its quietest 100 ms in the second half of the window; the rest goes on
  as the next segment. Such a cut's final has ``is_end_of_utterance = False``.
* Segments are decoded with at most ``max_concurrency`` decodes at once and their finals are
  emitted strictly in order. At most ``max_queued`` segments wait; ``send_audio`` then waits
  (back-pressure instead of unbounded memory).
* With ``interim_interval`` set, the growing segment is re-decoded each time that many
  seconds of audio have arrived, when a decode slot is free, and the text is emitted as an
  interim (``is_final = False``) if the segment is still open. Interims are driven by audio
  time, so they are deterministic in tests.
* ``finalize()`` (:meth:`Segmenter.cut`) cuts the open segment at once; its final has
  ``is_end_of_utterance = True`` and the speech that follows starts the next segment.
* A result the engine marks ``low_confidence`` (a repetition loop it could not fix) gets its
  confidence capped at :data:`LOW_CONFIDENCE`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol, runtime_checkable

import attrs
import numpy as np

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.providers._decoding import token_budget
from sttrouter.providers.vad import StreamingVAD, VADConfig, VADEvent
from sttrouter.results import STTResult, WordTimestamp
from sttrouter.service import BaseSTTService

__all__ = [
    "LOW_CONFIDENCE",
    "BatchEngine",
    "EngineLike",
    "SegmentFn",
    "SegmentResult",
    "SegmentedSTTService",
    "Segmenter",
    "quietest_cut",
    "token_budget",
]

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = ENGINE_FORMAT.sample_rate
LOW_CONFIDENCE: Final = 0.2
"""Confidence given to a result its engine flagged ``low_confidence``."""


def _words(value: Iterable[WordTimestamp]) -> tuple[WordTimestamp, ...]:
    return tuple(value)


@attrs.frozen
class SegmentResult:
    """What a batch engine returns for one segment.

    Attributes:
        text: the transcript (may be empty).
        confidence: 0..1 when the engine knows.
        words: word times relative to the segment's first sample.
        language: detected language, when known.
        low_confidence: the engine suspects the text (e.g. a repetition loop it trimmed).
    """

    text: str
    confidence: float | None = None
    words: tuple[WordTimestamp, ...] = attrs.field(default=(), converter=_words)
    language: str | None = None
    low_confidence: bool = False


@runtime_checkable
class BatchEngine(Protocol):
    """A batch engine the segmenter can drive."""

    async def transcribe_segment(self, pcm: bytes, sample_rate: int) -> SegmentResult:
        """Transcribe one segment of 16 kHz mono s16le audio."""
        ...


SegmentFn = Callable[[bytes, int], Awaitable[SegmentResult]]
EngineLike = BatchEngine | SegmentFn
Emit = Callable[[STTResult], Awaitable[None]]


def _segment_fn(engine: EngineLike) -> SegmentFn:
    method = getattr(engine, "transcribe_segment", None)
    if method is not None:
        return method  # type: ignore[no-any-return]
    if callable(engine):
        return engine
    raise ConfigError(
        f"{type(engine).__name__} is not a batch engine: give an object with "
        "'async transcribe_segment(pcm, sample_rate)' or such an async callable"
    )


def _check_settings(
    max_segment_seconds: float,
    max_concurrency: int,
    max_queued: int,
    interim_interval: float | None,
) -> None:
    if max_segment_seconds < 1.0:
        raise ConfigError(
            f"max_segment_seconds must be at least 1 s, got {max_segment_seconds}",
            field="max_segment_seconds",
        )
    if max_concurrency < 1 or max_queued < 1:
        raise ConfigError(
            f"max_concurrency ({max_concurrency}) and max_queued ({max_queued}) must be at least 1",
            field="max_concurrency",
        )
    if interim_interval is not None and interim_interval <= 0:
        raise ConfigError(
            f"interim_interval must be positive or None, got {interim_interval}",
            field="interim_interval",
        )


def _retrieve(task: asyncio.Task[SegmentResult]) -> None:
    if not task.cancelled():
        task.exception()


def quietest_cut(pcm: bytes, lo: int, hi: int, *, window: int = 1600, hop: int = 160) -> int:
    """Sample index in ``[lo, hi]`` at the middle of the quietest ``window`` of ``pcm``.

    ``pcm`` is mono s16le; indices are in samples. Used to cut an over-long utterance where
    it hurts least (the same rule vLLM uses for its 30 s chunks).
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    lo, hi = max(0, lo), min(len(samples), hi)
    if hi - lo <= window:
        return hi
    region = samples[lo:hi]
    energy = np.concatenate([[0.0], np.cumsum(region * region)])
    starts = np.arange(0, len(region) - window + 1, hop)
    sums = energy[starts + window] - energy[starts]
    best = int(starts[int(np.argmin(sums))])
    return lo + best + window // 2


@attrs.define
class _Segment:
    index: int
    start: int  # samples on the stream timeline
    end: int
    end_of_utterance: bool
    task: asyncio.Task[SegmentResult]


class Segmenter:
    """The segmenting core, independent of any service: push PCM, results come out of ``emit``.

    A service calls :meth:`run` in a background task for the life of the stream (it emits
    the finals in order and raises the engine's error), :meth:`push` for each chunk,
    :meth:`finish` at the end (then awaits the ``run`` task), and :meth:`close` to abort.

    Args:
        engine: the batch engine (see the module docstring).
        emit: awaited with each result (stream timeline times).
        vad: VAD settings (a fresh :class:`StreamingVAD` per segmenter) or a ready detector.
        max_segment_seconds: longest segment sent to the engine.
        max_concurrency: decodes in flight at once.
        interim_interval: seconds of audio between interim re-decodes; ``None``: no interims.
        max_queued: segments that may wait for decoding before ``push`` waits.
    """

    def __init__(
        self,
        engine: EngineLike,
        emit: Emit,
        *,
        vad: VADConfig | StreamingVAD | None = None,
        max_segment_seconds: float = 30.0,
        max_concurrency: int = 1,
        interim_interval: float | None = None,
        max_queued: int = 8,
    ) -> None:
        _check_settings(max_segment_seconds, max_concurrency, max_queued, interim_interval)
        self._decode_fn = _segment_fn(engine)
        self._emit = emit
        self.vad = vad if isinstance(vad, StreamingVAD) else StreamingVAD(vad)
        self._max = round(max_segment_seconds * SAMPLE_RATE)
        self._interim_every = (
            round(interim_interval * SAMPLE_RATE) if interim_interval is not None else None
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._queue: asyncio.Queue[_Segment | None] = asyncio.Queue(max_queued)
        self._buf = bytearray()
        self._buf_start = 0  # stream sample index of self._buf[0]
        self._pos = 0  # samples pushed
        self._seg_start: int | None = None  # open segment
        self._seg_index = 0
        self._emitted = 0  # segments whose final has been emitted
        self._last_interim = 0
        self._interim: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[SegmentResult]] = set()
        self._closed = False
        self._finished = False

    @property
    def position(self) -> float:
        """Seconds of audio pushed."""
        return self._pos / SAMPLE_RATE

    @property
    def segments_cut(self) -> int:
        return self._seg_index

    # -- input ---------------------------------------------------------------------------
    async def push(self, pcm: bytes) -> None:
        """Feed 16 kHz mono s16le audio (whole samples)."""
        if not pcm:
            return
        self._buf += pcm
        self._pos += len(pcm) // 2
        for event in self.vad.push(pcm):
            await self._on_event(event)
        while self._seg_start is not None and self._pos - self._seg_start >= self._max:
            lo, hi = self._seg_start + self._max // 2, self._seg_start + self._max
            cut = quietest_cut(bytes(self._buf), lo - self._buf_start, hi - self._buf_start)
            await self._cut(self._seg_start, cut + self._buf_start, end_of_utterance=False)
            self._seg_start = cut + self._buf_start
        if self._seg_start is None:
            self._trim(self._keep_from())
        else:
            self._maybe_interim()

    async def finish(self) -> None:
        """End of audio: close the open utterance and let :meth:`run` finish."""
        if self._finished:
            return
        self._finished = True
        for event in self.vad.flush():
            await self._on_event(event)
        if self._seg_start is not None:  # pragma: no cover - flush always ends open speech
            await self._cut(self._seg_start, self._pos, end_of_utterance=True)
        await self._queue.put(None)

    async def cut(self) -> None:
        """Cut the open segment here (``finalize``): its final comes as soon as it is
        decoded, and the speech that follows is a new segment. Nothing open: nothing to do."""
        if self._finished or self._seg_start is None or self._pos <= self._seg_start:
            return
        await self._cut(self._seg_start, self._pos, end_of_utterance=True)
        self._seg_start = self._last_interim = self._pos

    def close(self) -> None:
        """Abort: cancel every decode in flight."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._interim is not None:
            self._interim.cancel()

    # -- output --------------------------------------------------------------------------
    async def run(self) -> None:
        """Emit each segment's final in order until :meth:`finish`; raises the engine's error."""
        try:
            while (seg := await self._queue.get()) is not None:
                result = await seg.task
                await self._emit(self._final(seg, result))
                self._emitted = seg.index + 1
        finally:
            self.close()
            while not self._queue.empty():  # free anyone waiting in push
                self._queue.get_nowait()

    def _final(self, seg: _Segment, result: SegmentResult) -> STTResult:
        start = seg.start / SAMPLE_RATE
        confidence = result.confidence
        if result.low_confidence:
            confidence = min(LOW_CONFIDENCE, confidence if confidence is not None else 1.0)
        return STTResult(
            transcript=result.text.strip(),
            is_final=True,
            is_end_of_utterance=seg.end_of_utterance,
            confidence=confidence,
            start=start,
            duration=(seg.end - seg.start) / SAMPLE_RATE,
            words=tuple(w.shifted(start) for w in result.words),
            language=result.language,
        )

    # -- internals -----------------------------------------------------------------------
    async def _on_event(self, event: VADEvent) -> None:
        at = min(self._pos, max(self._buf_start, round(event.time * SAMPLE_RATE)))
        if event.kind == "start":
            if self._seg_start is None:
                self._seg_start = at
                self._last_interim = at
        elif self._seg_start is not None:
            end = max(self._seg_start, at)
            if end > self._seg_start:
                await self._cut(self._seg_start, end, end_of_utterance=True)
            self._seg_start = None
            self._trim(end)

    async def _cut(self, start: int, end: int, *, end_of_utterance: bool) -> None:
        pcm = bytes(self._buf[(start - self._buf_start) * 2 : (end - self._buf_start) * 2])
        index = self._seg_index
        self._seg_index += 1
        task = asyncio.get_running_loop().create_task(self._decode(pcm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # run() raises the first failed segment's error and never awaits the later ones;
        # their errors (every request to a host that does not resolve fails) are retrieved
        # here, so asyncio never reports "Task exception was never retrieved"
        task.add_done_callback(_retrieve)
        if self._closed:
            task.cancel()
        await self._queue.put(_Segment(index, start, end, end_of_utterance, task))

    async def _decode(self, pcm: bytes) -> SegmentResult:
        async with self._slots:
            return await self._decode_fn(pcm, SAMPLE_RATE)

    def _maybe_interim(self) -> None:
        every, start = self._interim_every, self._seg_start
        if every is None or start is None or self._closed:
            return
        if self._pos - self._last_interim < every:
            return
        if self._interim is not None and not self._interim.done():
            return
        if self._slots.locked():  # never delay a final for an interim
            return
        self._last_interim = self._pos
        pcm = bytes(self._buf[(start - self._buf_start) * 2 :])
        index, end = self._seg_index, self._pos
        self._interim = asyncio.get_running_loop().create_task(
            self._run_interim(pcm, index, start, end)
        )

    async def _run_interim(self, pcm: bytes, index: int, start: int, end: int) -> None:
        try:
            async with self._slots:
                result = await self._decode_fn(pcm, SAMPLE_RATE)
        except Exception as exc:  # an interim is best effort; the final reports failures
            log.debug("interim decode failed: %s", type(exc).__name__)
            return
        if self._seg_start != start or self._seg_index != index or self._emitted != index:
            return  # the segment was closed, or earlier finals are still due
        if not result.text.strip():
            return
        begin = start / SAMPLE_RATE
        await self._emit(
            STTResult(
                transcript=result.text.strip(),
                is_final=False,
                confidence=result.confidence,
                start=begin,
                duration=(end - start) / SAMPLE_RATE,
                words=tuple(w.shifted(begin) for w in result.words),
                language=result.language,
            )
        )

    def _keep_from(self) -> int:
        """Earliest sample a future speech start could reach back to."""
        earliest = self.vad.earliest_start
        return min(self._pos, round(earliest * SAMPLE_RATE))

    def _trim(self, upto: int) -> None:
        drop = upto - self._buf_start
        if drop > 0:
            del self._buf[: drop * 2]
            self._buf_start = upto


class SegmentedSTTService(BaseSTTService):
    """A streaming service over a batch engine (see the module docstring).

    Args:
        endpoint: the endpoint this service serves.
        engine: the batch engine (object with ``transcribe_segment`` or an async callable).
        vad: VAD settings.
        max_segment_seconds: longest segment the engine is given (30 s for GLM-ASR).
        max_concurrency: decodes in flight at once.
        interim_interval: seconds of audio between interim re-decodes, or ``None``.
        clock: the clock (latency metrics).
    """

    def __init__(
        self,
        endpoint: STTEndpoint,
        engine: EngineLike,
        *,
        vad: VADConfig | None = None,
        max_segment_seconds: float = 30.0,
        max_concurrency: int = 1,
        interim_interval: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(endpoint, clock=clock)
        self.engine = engine
        self.vad_config = vad or VADConfig()
        self.max_segment_seconds = max_segment_seconds
        self.max_concurrency = max_concurrency
        self.interim_interval = interim_interval
        self._segmenter: Segmenter | None = None
        self._runner: asyncio.Task[None] | None = None
        _segment_fn(engine)
        _check_settings(max_segment_seconds, max_concurrency, 1, interim_interval)

    def _stream_engine(self) -> EngineLike:
        """The batch engine of the current stream (adapters bind stream options here)."""
        return self.engine

    def _new_segmenter(self) -> Segmenter:
        return Segmenter(
            self._stream_engine(),
            self._emit,
            vad=self.vad_config,
            max_segment_seconds=self.max_segment_seconds,
            max_concurrency=self.max_concurrency,
            interim_interval=self.interim_interval,
        )

    async def _open(self) -> None:
        self._segmenter = self._new_segmenter()
        self._runner = self._spawn(self._segmenter.run())

    async def _send(self, pcm: bytes) -> None:
        assert self._segmenter is not None
        await self._segmenter.push(pcm)

    async def _finish(self) -> None:
        assert self._segmenter is not None
        assert self._runner is not None
        await self._segmenter.finish()
        await self._runner

    async def _abort(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()

    async def _finalize(self) -> None:
        if self._segmenter is not None:
            await self._segmenter.cut()
