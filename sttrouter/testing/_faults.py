"""Fault plans: what a fake engine does wrong, and when (in seconds of audio it received)."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConnectionFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    STTError,
)

__all__ = ["FINAL_FAULTS", "Fault", "FaultKind", "FaultPlan"]


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
    # -- quiet liars: no error, no close; only the results are wrong ----------------------
    SKIP_FINAL = "skip_final"
    """The ``nth`` final is never sent."""
    UNPARSEABLE_FINAL = "unparseable_final"
    """The ``nth`` final is a message the client cannot parse (deepgram-sdk yields ``None``
    for it); the fake service drops it as an adapter would, logged and counted."""
    NAN_TIME = "nan_time"
    """The ``nth`` final starts at NaN."""
    INFINITE_TIME = "infinite_time"
    """The ``nth`` final starts at infinity."""
    HUGE_TIME = "huge_time"
    """The ``nth`` final starts at 1e12 s, far past the audio sent."""
    NEGATIVE_DURATION = "negative_duration"
    """The ``nth`` final lasts -50 s."""
    NOT_BOOL_FINAL = "not_bool_final"
    """The ``nth`` final's ``is_final`` is the string ``"false"``."""
    BACKWARDS_FINAL = "backwards_final"
    """The ``nth`` final goes back in time (it lies before the previous one)."""
    INTERIMS_ONLY = "interims_only"
    """From the ``nth`` final on, interims only: no final ever again."""
    NO_LAST_FINAL = "no_last_final"
    """The finals due while the stream stops never come (the close is clean)."""
    DEAF = "deaf"
    """The engine hears no words in the final holding word ``w<nth>``, on every stream
    (loud sound that is not speech: music, breathing)."""
    BAD_AUDIO = "bad_audio"
    """The engine claims the audio is bad (Deepgram's close 1002 ``DATA-0000``, an HTTP
    413), although it is not: at the ``nth`` final, or after ``after`` seconds."""
    # -- broken answers and hostile servers -----------------------------------------------
    HTML_200 = "html_200"
    """A 200 whose body is an HTML "502 Bad Gateway" page, not the JSON asked for."""
    HUGE_BODY = "huge_body"
    """A 200 whose JSON body is megabytes long."""
    KEY_ECHO = "key_echo"
    """The server echoes the client's ``Authorization`` value in its error text (a 401
    body, a close reason)."""
    READ_STALL_CLOSE = "read_stall_close"
    """The server stops reading audio, then closes (1008); the client's sends block."""


_ERRORS: dict[FaultKind, tuple[type[STTError], str]] = {
    FaultKind.CONNECT_FAIL: (ConnectionFailed, "connection refused (injected)"),
    FaultKind.DROP: (StreamingFailed, "connection closed with 1011 (injected)"),
    FaultKind.AUTH: (AuthenticationFailed, "invalid API key (injected)"),
    FaultKind.RATE_LIMIT: (RateLimited, "too many concurrent sessions (injected)"),
    FaultKind.QUOTA: (QuotaExceeded, "account out of credit (injected)"),
    FaultKind.MALFORMED: (MalformedResponse, "engine sent an unparsable message (injected)"),
    FaultKind.HTML_200: (
        MalformedResponse,
        "the server answered 200 with text/html, not the JSON asked for (injected)",
    ),
    FaultKind.HUGE_BODY: (MalformedResponse, "the answer passed the body cap (injected)"),
    FaultKind.BAD_AUDIO: (
        AudioFormatError,
        "DATA-0000: the engine could not decode the audio (injected)",
    ),
    FaultKind.KEY_ECHO: (AuthenticationFailed, "invalid credentials (injected)"),
}

FINAL_FAULTS = frozenset(
    {
        FaultKind.SKIP_FINAL,
        FaultKind.UNPARSEABLE_FINAL,
        FaultKind.NAN_TIME,
        FaultKind.INFINITE_TIME,
        FaultKind.HUGE_TIME,
        FaultKind.NEGATIVE_DURATION,
        FaultKind.NOT_BOOL_FINAL,
        FaultKind.BACKWARDS_FINAL,
        FaultKind.INTERIMS_ONLY,
        FaultKind.NO_LAST_FINAL,
        FaultKind.DEAF,
    }
)
"""The quiet kinds that act on finals (picked by ``nth``), not at a time."""


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
        nth: which final of the stream a final-level fault hits (0 = the first; for
            ``DEAF``, the word number ``w<nth>``).
    """

    kind: FaultKind = attrs.field(converter=FaultKind)
    after: float | None = None
    seconds: float = 0.0
    stream: int | None = None
    nth: int = 0

    @property
    def on_final(self) -> bool:
        """Whether it acts on the ``nth`` final (the quiet kinds, and ``BAD_AUDIO`` without
        ``after``) rather than at a time."""
        return self.kind in FINAL_FAULTS or (self.kind is FaultKind.BAD_AUDIO and not self.after)

    def applies_to(self, stream_index: int) -> bool:
        return self.stream is None or self.stream == stream_index

    def error(self, endpoint_id: str | None = None, *, echo: str | None = None) -> STTError:
        """The error this fault raises; ``echo`` is the credential a ``KEY_ECHO`` server
        repeats back in its message."""
        cls, message = _ERRORS[self.kind]
        if self.kind is FaultKind.KEY_ECHO:
            message = f"{message}: Authorization: Token {echo or ''}"
        if self.after is not None:
            message = f"{message} after {self.after:g}s of audio"
        return cls(message, endpoint_id=endpoint_id)

    @property
    def is_error(self) -> bool:
        return self.kind in _ERRORS and not self.on_final


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

    @classmethod
    def quiet(cls, kind: FaultKind | str, nth: int = 0, *, stream: int | None = None) -> FaultPlan:
        """A quiet liar: ``kind`` (one of the final-level kinds, or ``BAD_AUDIO``) hits the
        ``nth`` final of the stream, e.g. ``FaultPlan.quiet("skip_final", 1)``."""
        fault = Fault(kind, stream=stream, nth=nth)
        if not fault.on_final:
            raise ValueError(f"{fault.kind.value!r} is not a final-level fault")
        return cls((fault,))

    @classmethod
    def skip_final(cls, nth: int = 0, *, stream: int | None = None) -> FaultPlan:
        return cls.quiet(FaultKind.SKIP_FINAL, nth, stream=stream)

    @classmethod
    def interims_only(cls, nth: int = 0, *, stream: int | None = None) -> FaultPlan:
        return cls.quiet(FaultKind.INTERIMS_ONLY, nth, stream=stream)

    @classmethod
    def bad_audio(
        cls, after: float | None = None, *, nth: int = 0, stream: int | None = None
    ) -> FaultPlan:
        """The engine claims bad audio after ``after`` seconds, or at the ``nth`` final."""
        return cls((Fault(FaultKind.BAD_AUDIO, after=after, stream=stream, nth=nth),))

    @classmethod
    def key_echo(cls, after: float | None = None, *, stream: int | None = None) -> FaultPlan:
        """The server rejects the key and echoes it back (at connect, or after ``after``)."""
        return cls((Fault(FaultKind.KEY_ECHO, after=after, stream=stream),))

    @classmethod
    def read_stall_close(cls, after: float, *, stream: int | None = None) -> FaultPlan:
        return cls((Fault(FaultKind.READ_STALL_CLOSE, after=after, stream=stream),))
