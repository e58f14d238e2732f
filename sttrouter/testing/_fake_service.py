"""A deterministic fake engine that transcribes by audio time or by audio content."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence

import attrs
import numpy as np

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock
from sttrouter.endpoint import Location, STTEndpoint
from sttrouter.errors import ConfigError, ConnectionFailed, StreamingFailed, STTError
from sttrouter.options import OPTION_NAMES, StreamOptions
from sttrouter.results import STTResult, WordTimestamp
from sttrouter.service import BaseSTTService
from sttrouter.testing._faults import Fault, FaultKind, FaultPlan
from sttrouter.testing._quiet import QuietFinals
from sttrouter.testing._speech import mark_word

__all__ = ["FakeSTTService", "Utterance", "fake_endpoint"]


@attrs.frozen
class Utterance:
    """A scripted utterance: ``text`` spoken from ``start`` to ``end`` seconds of stream audio.

    The fake emits an interim as each word's share of the span has been received, and the
    final (``is_end_of_utterance``) once ``end`` seconds of audio have arrived.
    """

    text: str
    end: float
    start: float = 0.0

    def timed_words(self) -> list[WordTimestamp]:
        words = self.text.split()
        if not words:
            return []
        step = (self.end - self.start) / len(words)
        return [
            WordTimestamp(w, self.start + i * step, self.start + (i + 1) * step, 1.0)
            for i, w in enumerate(words)
        ]


def fake_endpoint(id: str = "fake", **overrides: object) -> STTEndpoint:
    """An endpoint for a fake engine: free, on-device, needs no network (override any field)."""
    fields: dict[str, object] = {
        "provider": "fake",
        "location": Location.ON_DEVICE,
        "needs_network": False,
        "expected_latency_ms": 10.0,
    }
    fields.update(overrides)
    return STTEndpoint(id=id, **fields)  # type: ignore[arg-type]


class FakeSTTService(BaseSTTService):
    """A fake engine for tests, deterministic and driven by the audio it receives.

    Without a ``script`` it reads :func:`~sttrouter.testing.synthetic_speech` marks: every run
    of one non-zero int16 value is the word ``w<n>``; an utterance ends after
    ``endpoint_silence`` seconds of silence, and its final covers the audio from the previous
    final's end up to that point (so the finals of a healthy stream tile its timeline).
    With a ``script`` it emits the scripted utterances at their audio times, whatever the audio.

    Args:
        endpoint: defaults to :func:`fake_endpoint`.
        script: scripted utterances, or ``None`` to decode marks.
        faults: what goes wrong, and when: loud faults at a time, and the quiet liars
            (a skipped, unparseable or mangled ``nth`` final, interims only, a claim of bad
            audio...) on the finals.
        clock: used for ``LATENCY`` faults and ``connect_delay``.
        endpoint_silence: silence that ends an utterance when decoding marks.
        interim_results: emit interims.
        connect_delay: seconds ``_open`` takes (on ``clock``).
        supported_options: the stream options it honours (default: all of them); the
            others are refused with :class:`~sttrouter.errors.UnsupportedOption`.

    ``finalize()`` ends the current utterance with the words heard so far (a word still
    being spoken goes into the next one), like a vendor's Finalize; with nothing heard it
    does nothing.

    Attributes:
        received: every byte this instance was sent, across streams.
        streams_started: how many ``start_streaming`` calls reached the engine.
        options_received: the :class:`~sttrouter.options.StreamOptions` of every stream
            that reached the engine, in order.
        finalize_calls: how many ``finalize()`` calls reached the engine.
        down: while true, connecting and probing fail with :class:`ConnectionFailed`.
    """

    def __init__(
        self,
        endpoint: STTEndpoint | None = None,
        *,
        script: Sequence[Utterance] | None = None,
        faults: FaultPlan | None = None,
        clock: Clock | None = None,
        endpoint_silence: float = 0.3,
        interim_results: bool = True,
        connect_delay: float = 0.0,
        supported_options: Iterable[str] = OPTION_NAMES,
    ) -> None:
        super().__init__(endpoint or fake_endpoint(), clock=clock)
        self.supported_options = frozenset(supported_options)
        unknown = self.supported_options - OPTION_NAMES
        if unknown:
            raise ConfigError(
                f"unknown stream options {sorted(unknown)}; use some of {sorted(OPTION_NAMES)}",
                field="supported_options",
            )
        self.script = tuple(script) if script is not None else None
        self.faults = faults or FaultPlan()
        self.endpoint_silence = endpoint_silence
        self.interim_results = interim_results
        self.connect_delay = connect_delay
        self.received = bytearray()
        self.streams_started = 0
        self.options_received: list[StreamOptions] = []
        self.finalize_calls = 0
        self.down = False
        self._active: tuple[Fault, ...] = ()
        self._reset_stream_state()

    # -- test controls --------------------------------------------------------------------
    def kill(self, reason: str = "engine died (killed by test)") -> None:
        """Break the running stream now, as a dropped connection would."""
        self._fail(StreamingFailed(reason, endpoint_id=self.endpoint.id))

    async def probe(self) -> None:
        if self.down or any(f.kind is FaultKind.CONNECT_FAIL for f in self.faults.faults):
            raise ConnectionFailed("probe failed: engine is down", endpoint_id=self.endpoint.id)

    # -- engine hooks ---------------------------------------------------------------------
    def _reset_stream_state(self) -> None:
        self._samples = 0
        self._run_value = 0
        self._run_start = 0
        self._covered_until = 0
        self._utt_words: list[WordTimestamp] = []
        self._script_pos = 0
        self._script_words_sent = 0
        self._stalled = False
        self._empty = False
        self._latency = 0.0
        self._fired: set[int] = set()
        self._pending: list[asyncio.Task[None]] = []
        self._read_stalled = False
        self._quiet = QuietFinals(())

    async def _open(self) -> None:
        index = self.streams_started
        self.streams_started += 1
        self.options_received.append(self.stream_options)
        self._reset_stream_state()
        self._active = self.faults.for_stream(index)
        if self.connect_delay:
            await self.clock.sleep(self.connect_delay)
        if self.down:
            raise ConnectionFailed("connection refused: engine is down")
        self._quiet = QuietFinals([f for f in self._active if f.on_final])
        for i, f in enumerate(self._active):
            if f.after is None and not f.on_final:
                self._fired.add(i)
                if f.is_error:
                    raise self._fault_error(f)
                self._apply(f)

    async def _send(self, pcm: bytes) -> None:
        if self.down:
            raise StreamingFailed("connection lost: engine is down")
        if self._read_stalled:
            await asyncio.Event().wait()  # the server stopped reading: the send never ends
        self.received += pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        start = self._samples
        self._samples += len(samples)
        seconds = self._samples / ENGINE_FORMAT.sample_rate
        for i, f in enumerate(self._active):
            if i not in self._fired and f.after is not None and seconds >= f.after:
                self._fired.add(i)
                if f.is_error:
                    self._fail(self._fault_error(f))
                    return
                self._apply(f)
        if self._stalled:
            return
        if self.script is not None:
            await self._advance_script(seconds)
        else:
            await self._decode(samples, start)

    async def _finish(self) -> None:
        self._quiet.stopping = True
        if self._stalled:
            await asyncio.Event().wait()  # a stalled engine never answers; only cancel ends it
        if self.script is not None:
            await self._advance_script(float("inf"))
        else:
            await self._close_run(self._samples)
            await self._final(self._samples, end_of_utterance=bool(self._utt_words))
        for task in self._pending:
            await task

    async def _abort(self) -> None:
        for task in self._pending:
            task.cancel()

    async def _finalize(self) -> None:
        self.finalize_calls += 1
        if self._stalled:
            return
        if self.script is not None:
            await self._finalize_script()
        elif self._utt_words:
            # the final covers the audio up to the word still being spoken, if any
            at = self._run_start if self._run_value != 0 else self._samples
            await self._final(at, end_of_utterance=True)

    async def _finalize_script(self) -> None:
        assert self.script is not None
        if self._script_pos >= len(self.script):
            return
        utt = self.script[self._script_pos]
        seconds = self._samples / ENGINE_FORMAT.sample_rate
        heard = [w for w in utt.timed_words() if w.end <= seconds + 1e-9]
        if not heard:
            return
        await self._deliver(
            STTResult(
                "" if self._empty else " ".join(w.word for w in heard),
                is_final=True,
                is_end_of_utterance=True,
                start=utt.start,
                duration=heard[-1].end - utt.start,
                words=() if self._empty else tuple(heard),
                confidence=1.0,
            )
        )
        self._script_pos += 1
        self._script_words_sent = 0

    # -- behaviour ------------------------------------------------------------------------
    def _fault_error(self, fault: Fault) -> STTError:
        conn = self.endpoint.connection
        echo = (conn.secrets() or ("",))[0]  # KEY_ECHO repeats the configured key
        return fault.error(self.endpoint.id, echo=echo)

    def _apply(self, fault: Fault) -> None:
        if fault.kind is FaultKind.READ_STALL_CLOSE:
            self._read_stalled = True
        elif fault.kind is FaultKind.STALL:
            self._stalled = True
        elif fault.kind is FaultKind.EMPTY_FINALS:
            self._empty = True
        elif fault.kind is FaultKind.LATENCY:
            self._latency = fault.seconds

    async def _deliver(self, result: STTResult) -> None:
        if result.is_final:
            verdict = self._quiet.final(result)
            if isinstance(verdict, STTError):
                self._fail(verdict)
                return
            if verdict is None:
                if self._quiet.unparseable:
                    self._dropped("a final it could not parse (injected)")
                return
            result = verdict
        if self._latency <= 0:
            await self._emit(result)
            return
        previous = self._pending[-1] if self._pending else None

        async def later() -> None:
            await self.clock.sleep(self._latency)
            if previous is not None:
                await previous
            await self._emit(result)

        self._pending.append(self._spawn(later()))

    async def _advance_script(self, seconds: float) -> None:
        assert self.script is not None
        while self._script_pos < len(self.script):
            utt = self.script[self._script_pos]
            words = utt.timed_words()
            if self.interim_results:
                while self._script_words_sent < len(words) and (
                    words[self._script_words_sent].end <= seconds
                    and self._script_words_sent + 1 < len(words)
                ):
                    self._script_words_sent += 1
                    shown = words[: self._script_words_sent]
                    await self._deliver(
                        STTResult(
                            " ".join(w.word for w in shown),
                            is_final=False,
                            start=utt.start,
                            duration=shown[-1].end - utt.start,
                            words=tuple(shown),
                            confidence=0.5,
                        )
                    )
            if utt.end > seconds:
                return
            await self._deliver(
                STTResult(
                    "" if self._empty else utt.text,
                    is_final=True,
                    is_end_of_utterance=True,
                    start=utt.start,
                    duration=utt.end - utt.start,
                    words=() if self._empty else tuple(words),
                    confidence=1.0,
                )
            )
            self._script_pos += 1
            self._script_words_sent = 0

    async def _decode(self, samples: np.ndarray, offset: int) -> None:
        if not len(samples):
            return
        change = np.flatnonzero(np.diff(samples)) + 1
        bounds = [0, *change.tolist(), len(samples)]
        for lo, hi in itertools.pairwise(bounds):
            value = int(samples[lo])
            if value != self._run_value:
                await self._close_run(offset + lo)
                self._run_value = value
                self._run_start = offset + lo
            if self._run_value == 0 and self._utt_words:
                silence = (offset + hi - self._run_start) / ENGINE_FORMAT.sample_rate
                if silence >= self.endpoint_silence:
                    await self._final(offset + hi, end_of_utterance=True)

    async def _close_run(self, at: int) -> None:
        if self._run_value == 0 or at <= self._run_start:
            return
        rate = ENGINE_FORMAT.sample_rate
        self._utt_words.append(
            WordTimestamp(mark_word(self._run_value), self._run_start / rate, at / rate, 1.0)
        )
        self._run_value = 0
        self._run_start = at
        if self.interim_results:
            first = self._covered_until / rate
            await self._deliver(
                STTResult(
                    " ".join(w.word for w in self._utt_words),
                    is_final=False,
                    start=first,
                    duration=at / rate - first,
                    words=tuple(self._utt_words),
                    confidence=0.5,
                )
            )

    async def _final(self, at: int, *, end_of_utterance: bool) -> None:
        if at <= self._covered_until:
            return
        rate = ENGINE_FORMAT.sample_rate
        start = self._covered_until / rate
        words = () if self._empty else tuple(self._utt_words)
        self._covered_until = at
        self._utt_words = []
        await self._deliver(
            STTResult(
                " ".join(w.word for w in words),
                is_final=True,
                is_end_of_utterance=end_of_utterance,
                start=start,
                duration=at / rate - start,
                words=words,
                confidence=1.0,
            )
        )
