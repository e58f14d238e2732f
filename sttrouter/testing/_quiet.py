"""The quiet liars of a fault plan: what an engine does to its own finals, without an error
or a close. Pure: a final goes in, the final to send (maybe mangled), nothing, or an error
comes out."""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from sttrouter.errors import STTError
from sttrouter.results import STTResult
from sttrouter.testing._faults import Fault, FaultKind

__all__ = ["MANGLED", "QuietFinals"]

MANGLED: dict[FaultKind, dict[str, object]] = {
    FaultKind.NAN_TIME: {"start": math.nan},
    FaultKind.INFINITE_TIME: {"start": math.inf},
    FaultKind.HUGE_TIME: {"start": 1e12},
    FaultKind.NEGATIVE_DURATION: {"duration": -50.0},
    FaultKind.NOT_BOOL_FINAL: {"is_final": "false"},
    FaultKind.BACKWARDS_FINAL: {"start": 0.0, "duration": 0.01, "words": ()},
}
"""How each mangling kind changes the ``nth`` final."""


class QuietFinals:
    """Applies one stream's final-level faults to its finals, in order.

    ``final(result)`` returns the final to deliver, ``None`` to withhold it (then
    ``unparseable`` says whether a client would have seen a message it could not parse), or
    the :class:`STTError` the engine reports instead (``BAD_AUDIO``). Set ``stopping`` when
    the stream starts to stop (for ``NO_LAST_FINAL``).
    """

    def __init__(self, faults: Iterable[Fault]) -> None:
        self.faults = tuple(faults)
        self.count = 0
        self.stopping = False
        self.unparseable = False
        self._previous: STTResult | None = None

    def _withholds(self, f: Fault, n: int, result: STTResult) -> bool:
        if f.kind is FaultKind.INTERIMS_ONLY:
            return n >= f.nth
        if f.kind is FaultKind.NO_LAST_FINAL:
            return self.stopping
        if f.kind is FaultKind.DEAF:
            return any(w.word == f"w{f.nth}" for w in result.words)
        return f.kind in (FaultKind.SKIP_FINAL, FaultKind.UNPARSEABLE_FINAL) and n == f.nth

    def final(self, result: STTResult) -> STTResult | STTError | None:
        n = self.count
        self.count += 1
        self.unparseable = False
        out: STTResult | None = result
        for f in self.faults:
            if self._withholds(f, n, result):
                out = None
                self.unparseable = self.unparseable or f.kind is FaultKind.UNPARSEABLE_FINAL
            elif n != f.nth:
                continue
            elif f.kind is FaultKind.BAD_AUDIO:
                return f.error()
            elif f.kind in MANGLED and out is not None:
                if f.kind is FaultKind.BACKWARDS_FINAL and self._previous is None:
                    continue  # nothing to go back before
                out = attrs.evolve(out, **MANGLED[f.kind])  # type: ignore[arg-type]
        if out is not None:
            self._previous = out
        return out
