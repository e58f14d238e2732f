"""The test kit's quiet liars under the short names the routed-session tests use.

Every kind is a :class:`~sttrouter.testing.FaultKind` of the public kit (each with an
``nth``); :class:`QuietFake` is a :class:`~sttrouter.testing.FakeSTTService` that also
records its largest send and can stop reading (``block_sends_after``)."""

from __future__ import annotations

from sttrouter.testing import FakeSTTService, Fault, FaultKind, FaultPlan


class Quiet:
    SKIP = FaultKind.SKIP_FINAL
    UNPARSEABLE = FaultKind.UNPARSEABLE_FINAL
    NAN = FaultKind.NAN_TIME
    HUGE = FaultKind.HUGE_TIME
    NEGATIVE = FaultKind.NEGATIVE_DURATION
    NOT_BOOL = FaultKind.NOT_BOOL_FINAL
    BACKWARDS = FaultKind.BACKWARDS_FINAL
    INTERIMS_ONLY = FaultKind.INTERIMS_ONLY
    NO_LAST_FINAL = FaultKind.NO_LAST_FINAL
    BAD_AUDIO = FaultKind.BAD_AUDIO
    DEAF = FaultKind.DEAF


QUIET_KINDS = tuple(v for k, v in vars(Quiet).items() if k.isupper())

QuietFault = Fault
"""``QuietFault(Quiet.SKIP, nth=1, stream=0)`` is the kit's ``Fault``."""


class QuietFake(FakeSTTService):
    """A :class:`FakeSTTService` whose quiet faults are set apart from its loud ones."""

    max_send: int = 0

    @property
    def quiet(self) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults.faults if f.on_final)

    @quiet.setter
    def quiet(self, faults: tuple[Fault, ...]) -> None:
        loud = [f for f in self.faults.faults if not f.on_final]
        self.faults = FaultPlan([*loud, *faults])

    @property
    def block_sends_after(self) -> float | None:
        stall = [f for f in self.faults.faults if f.kind is FaultKind.READ_STALL_CLOSE]
        return stall[0].after if stall else None

    @block_sends_after.setter
    def block_sends_after(self, seconds: float) -> None:
        self.faults = self.faults | FaultPlan.read_stall_close(seconds)

    async def _send(self, pcm: bytes) -> None:
        self.max_send = max(self.max_send, len(pcm))
        await super()._send(pcm)
