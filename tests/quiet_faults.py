"""Quiet engine misbehaviour for the routed-session tests: a fake engine that mangles or
withholds its own finals (no error, no close), claims bad audio, or blocks its sends."""

from __future__ import annotations

import asyncio
import enum

import attrs

from sttrouter.errors import AudioFormatError
from sttrouter.results import STTResult
from sttrouter.testing import FakeSTTService


class Quiet(enum.StrEnum):
    SKIP = "skip"
    """The ``nth`` final is never sent."""
    NAN = "nan"
    """The ``nth`` final starts at NaN."""
    HUGE = "huge"
    """The ``nth`` final starts at 1e12 s."""
    NEGATIVE = "negative"
    """The ``nth`` final has a duration of -50 s."""
    NOT_BOOL = "not_bool"
    """The ``nth`` final's ``is_final`` is the string ``"false"``."""
    BACKWARDS = "backwards"
    """The ``nth`` final lies before the previous one (it is sent again, shifted back)."""
    INTERIMS_ONLY = "interims_only"
    """From the ``nth`` final on, only interims: no final ever again."""
    NO_LAST_FINAL = "no_last_final"
    """The stream's closing finals (sent while it stops) never arrive."""
    BAD_AUDIO = "bad_audio"
    """Instead of the ``nth`` final, the engine claims the audio is bad."""
    DEAF = "deaf"
    """Every final holding the word ``w<nth>`` is never sent, on every stream (the engine
    finds no words there: music, breathing)."""


_MANGLE: dict[Quiet, dict[str, object]] = {
    Quiet.NAN: {"start": float("nan")},
    Quiet.HUGE: {"start": 1e12},
    Quiet.NEGATIVE: {"duration": -50.0},
    Quiet.NOT_BOOL: {"is_final": "false"},
    Quiet.BACKWARDS: {"start": 0.0, "duration": 0.01, "words": ()},
}


@attrs.frozen
class QuietFault:
    kind: Quiet = attrs.field(converter=Quiet)
    nth: int = 0
    stream: int | None = None
    """Which stream of the service (0 = first); ``None``: every stream."""


class QuietFake(FakeSTTService):
    """A :class:`FakeSTTService` whose finals go wrong as ``quiet`` says."""

    quiet: tuple[QuietFault, ...] = ()
    max_send: int = 0
    block_sends_after: float | None = None

    async def _open(self) -> None:
        self._finals = 0
        self._stopping = False
        self._last: STTResult | None = None
        await super()._open()

    async def _send(self, pcm: bytes) -> None:
        self.max_send = max(self.max_send, len(pcm))
        if self.block_sends_after is not None and self.stream_seconds >= self.block_sends_after:
            await asyncio.Event().wait()  # the server stopped reading: the send never ends
        await super()._send(pcm)

    async def _finish(self) -> None:
        self._stopping = True
        await super()._finish()

    def _withholds(self, f: QuietFault, n: int, result: STTResult) -> bool:
        if f.kind is Quiet.INTERIMS_ONLY:
            return n >= f.nth
        if f.kind is Quiet.NO_LAST_FINAL:
            return self._stopping
        if f.kind is Quiet.DEAF:
            return any(w.word == f"w{f.nth}" for w in result.words)
        return f.kind is Quiet.SKIP and n == f.nth

    def _faults_now(self) -> list[QuietFault]:
        index = self.streams_started - 1
        return [f for f in self.quiet if f.stream is None or f.stream == index]

    async def _deliver(self, result: STTResult) -> None:
        if not result.is_final:
            await super()._deliver(result)
            return
        n = self._finals
        self._finals += 1
        out: STTResult | None = result
        for f in self._faults_now():
            if self._withholds(f, n, result):
                out = None
            elif n != f.nth:
                continue
            elif f.kind is Quiet.BAD_AUDIO:
                self._fail(AudioFormatError("DATA-0000: the engine could not decode the audio"))
                return
            elif f.kind in _MANGLE and (f.kind is not Quiet.BACKWARDS or self._last is not None):
                out = attrs.evolve(result, **_MANGLE[f.kind])
        if out is not None:
            self._last = out
            await super()._deliver(out)
