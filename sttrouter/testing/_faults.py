"""Fault plans: what a fake engine does wrong, and when (in seconds of audio it received)."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from sttrouter.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    STTError,
)

__all__ = ["Fault", "FaultKind", "FaultPlan"]


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(value)


class FaultKind(enum.StrEnum):
    CONNECT_FAIL = "connect_fail"
    """Connecting raises :class:`ConnectionFailed`."""
    DROP = "drop"
    """The stream breaks (:class:`StreamingFailed`, like a 1011 close)."""
    STALL = "stall"
    """The engine keeps accepting audio but never answers again (no error)."""
    EMPTY_FINALS = "empty_finals"
    """Finals arrive with empty text although the audio has speech."""
    AUTH = "auth"
    """:class:`AuthenticationFailed` (at connect, or in-band after the socket opened)."""
    RATE_LIMIT = "rate_limit"
    """:class:`RateLimited`."""
    QUOTA = "quota"
    """:class:`QuotaExceeded`."""
    MALFORMED = "malformed"
    """:class:`MalformedResponse`: the engine sent something unparsable."""
    LATENCY = "latency"
    """Every result arrives ``seconds`` later (on the service's clock)."""


_ERRORS: dict[FaultKind, tuple[type[STTError], str]] = {
    FaultKind.CONNECT_FAIL: (ConnectionFailed, "connection refused (injected)"),
    FaultKind.DROP: (StreamingFailed, "connection closed with 1011 (injected)"),
    FaultKind.AUTH: (AuthenticationFailed, "invalid API key (injected)"),
    FaultKind.RATE_LIMIT: (RateLimited, "too many concurrent sessions (injected)"),
    FaultKind.QUOTA: (QuotaExceeded, "account out of credit (injected)"),
    FaultKind.MALFORMED: (MalformedResponse, "engine sent an unparsable message (injected)"),
}


@attrs.frozen
class Fault:
    """One injected fault.

    Attributes:
        kind: what goes wrong.
        after: seconds of audio this stream must have received first; ``None`` means at
            connect (only for the error kinds; ``STALL``/``EMPTY_FINALS``/``LATENCY`` with
            ``None`` apply from the first sample).
        seconds: the added delay, for ``LATENCY``.
        stream: which stream of the service it hits (0 = the first ``start_streaming``);
            ``None`` hits every stream.
    """

    kind: FaultKind = attrs.field(converter=FaultKind)
    after: float | None = None
    seconds: float = 0.0
    stream: int | None = None

    def applies_to(self, stream_index: int) -> bool:
        return self.stream is None or self.stream == stream_index

    def error(self, endpoint_id: str | None = None) -> STTError:
        cls, message = _ERRORS[self.kind]
        if self.after is not None:
            message = f"{message} after {self.after:g}s of audio"
        return cls(message, endpoint_id=endpoint_id)

    @property
    def is_error(self) -> bool:
        return self.kind in _ERRORS


@attrs.frozen
class FaultPlan:
    """A deterministic list of faults for a fake engine. Combine plans with ``|``.

    Example::

        FaultPlan.drop_after(2.0) | FaultPlan.added_latency(0.3)
    """

    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)

    def __or__(self, other: FaultPlan) -> FaultPlan:
        return FaultPlan(self.faults + other.faults)

    def for_stream(self, index: int) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults if f.applies_to(index))

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def none(cls) -> FaultPlan:
        return cls()

    @classmethod
    def fail_on_connect(cls, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.CONNECT_FAIL, stream=stream),))

    @classmethod
    def drop_after(cls, seconds: float, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.DROP, after=seconds, stream=stream),))

    @classmethod
    def stall_after(cls, seconds: float, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.STALL, after=seconds, stream=stream),))

    @classmethod
    def empty_finals_after(cls, seconds: float = 0.0, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.EMPTY_FINALS, after=seconds, stream=stream),))

    @classmethod
    def auth_error(cls, after: float | None = None, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.AUTH, after=after, stream=stream),))

    @classmethod
    def rate_limited(cls, after: float | None = None, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.RATE_LIMIT, after=after, stream=stream),))

    @classmethod
    def quota_exceeded(cls, after: float | None = None, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.QUOTA, after=after, stream=stream),))

    @classmethod
    def malformed_after(cls, seconds: float, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.MALFORMED, after=seconds, stream=stream),))

    @classmethod
    def added_latency(cls, seconds: float, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.LATENCY, seconds=seconds, stream=stream),))
