"""The one error tree of sttrouter.

Every error carries a :class:`ErrorKind` that tells a router what to do with it::

    STTError                         kind       what a router does
    ├── TransientError               transient  fail over now, retry this endpoint later
    │   ├── ConnectionFailed                    could not connect (refused, DNS, TLS, timeout)
    │   │   └── ConnectTimeout                  connect did not finish within its deadline
    │   ├── StreamingFailed                     the stream broke after it opened (close, 5xx, 1011)
    │   │   ├── StreamStalled                   speech was sent, no result came within a deadline
    │   │   ├── EmptyTranscripts                a run of empty finals over audio that has speech
    │   │   └── MalformedResponse               the engine sent something we cannot parse
    │   ├── RateLimited                         429 / 3009: too many requests or sessions
    │   └── NoEndpointAvailable                 every endpoint of the chain failed or was refused
    ├── PermanentError               permanent  do not retry this endpoint until its config changes
    │   ├── AuthenticationFailed                401 / 1008 / a wrong token
    │   ├── QuotaExceeded                       402 / out of credit
    │   └── EndpointMisconfigured               the endpoint's own config cannot work (no key set)
    └── CallerError                  caller     the caller must fix something; never failed over
        ├── AudioFormatError                    bad audio: odd byte count, NaN, wrong channels, rate
        ├── ConfigError                         a bad endpoint, registry or policy file
        ├── MissingDependency                   an optional extra is not installed
        ├── NotStreaming                        send/stop without start
        ├── AlreadyStreaming                    start while a stream runs
        ├── UnsupportedOption                   a stream option this engine cannot honour
        └── BudgetExceeded                      the tenant's budget refuses new sessions

Errors raised by vendor SDKs or sockets are translated into the most specific class at one
boundary per adapter, always with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

import enum

__all__ = [
    "AlreadyStreaming",
    "AudioFormatError",
    "AuthenticationFailed",
    "BudgetExceeded",
    "CallerError",
    "ConfigError",
    "ConnectTimeout",
    "ConnectionFailed",
    "EmptyTranscripts",
    "EndpointMisconfigured",
    "ErrorKind",
    "MalformedResponse",
    "MissingDependency",
    "NoEndpointAvailable",
    "NotStreaming",
    "PermanentError",
    "QuotaExceeded",
    "RateLimited",
    "STTError",
    "StreamStalled",
    "StreamingFailed",
    "TransientError",
    "UnsupportedOption",
]


class ErrorKind(enum.StrEnum):
    """How a router treats an error."""

    TRANSIENT = "transient"
    """Fail over now; the endpoint may work again later."""
    PERMANENT = "permanent"
    """The endpoint cannot work until its configuration or account changes."""
    CALLER = "caller"
    """The caller did something wrong; failing over would not help."""


class STTError(Exception):
    """Base of every error sttrouter raises.

    Args:
        message: what went wrong and, where the caller can act, what to do about it.
        endpoint_id: the endpoint the error came from, when there is one.
    """

    kind: ErrorKind = ErrorKind.TRANSIENT

    def __init__(self, message: str, *, endpoint_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint_id = endpoint_id

    @property
    def retryable(self) -> bool:
        """True when trying again (or another endpoint) may succeed."""
        return self.kind is ErrorKind.TRANSIENT

    def __str__(self) -> str:
        if self.endpoint_id:
            return f"[{self.endpoint_id}] {self.message}"
        return self.message


class TransientError(STTError):
    """A failure that may go away: fail over, and retry this endpoint later."""

    kind = ErrorKind.TRANSIENT


class PermanentError(STTError):
    """The endpoint cannot serve until its configuration or account changes."""

    kind = ErrorKind.PERMANENT


class CallerError(STTError):
    """The caller must change something; failing over would not help."""

    kind = ErrorKind.CALLER


class ConnectionFailed(TransientError):
    """Could not open a connection to the engine."""


class ConnectTimeout(ConnectionFailed):
    """The connection did not open within its deadline."""


class StreamingFailed(TransientError):
    """The stream broke after it had opened."""


class StreamStalled(StreamingFailed):
    """Speech was sent but no result arrived within the stall deadline."""


class EmptyTranscripts(StreamingFailed):
    """The engine returned a run of empty finals over audio that carries speech energy."""


class MalformedResponse(StreamingFailed):
    """The engine sent a message that does not follow its protocol."""


class RateLimited(TransientError):
    """The engine refused for now: too many requests or concurrent sessions.

    Args:
        retry_after: seconds the engine asked us to wait, when it said.
    """

    def __init__(
        self, message: str, *, endpoint_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, endpoint_id=endpoint_id)
        self.retry_after = retry_after


class NoEndpointAvailable(TransientError):
    """No endpoint of the chain could transcribe (part of) the audio.

    Args:
        uncovered: the ``(start, end)`` interval of session audio, in seconds, that no final
            result covers; ``None`` when the failure happened before any audio was sent.
        attempts: ``(endpoint_id, reason)`` for every endpoint that was tried or skipped.
    """

    def __init__(
        self,
        message: str,
        *,
        uncovered: tuple[float, float] | None = None,
        attempts: tuple[tuple[str, str], ...] = (),
        endpoint_id: str | None = None,
    ) -> None:
        if uncovered is not None:
            message = f"{message} (audio {uncovered[0]:.3f}s..{uncovered[1]:.3f}s not transcribed)"
        if attempts:
            tried = "; ".join(f"{eid}: {why}" for eid, why in attempts)
            message = f"{message}; tried {tried}"
        super().__init__(message, endpoint_id=endpoint_id)
        self.uncovered = uncovered
        self.attempts = attempts


class AuthenticationFailed(PermanentError):
    """The engine rejected our credentials."""


class QuotaExceeded(PermanentError):
    """The account behind the endpoint has no credit or quota left."""


class EndpointMisconfigured(PermanentError):
    """The endpoint's own configuration cannot work (for example its API key is not set)."""


class AudioFormatError(CallerError):
    """The audio does not match its declared format, or the format itself is unusable.

    Attributes:
        uncovered: from a routed session, when two endpoints rejected audio it had validated:
            the ``(start, end)`` span of session audio, in seconds, left without a final.
    """

    uncovered: tuple[float, float] | None = None


class ConfigError(CallerError):
    """A configuration (endpoint, registry, policy, trace) is invalid.

    Args:
        message: what is wrong and how to fix it.
        source: the file (or ``"<dict>"``) the config came from.
        endpoint: the endpoint (or rule) id the problem is in.
        field: the offending field.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        endpoint: str | None = None,
        field: str | None = None,
    ) -> None:
        where = [
            part
            for part in (
                source,
                f"endpoint {endpoint!r}" if endpoint else None,
                f"field {field!r}" if field else None,
            )
            if part
        ]
        full = f"{': '.join(where)}: {message}" if where else message
        super().__init__(full)
        self.source = source
        self.endpoint = endpoint
        self.field = field


class MissingDependency(CallerError, ImportError):
    """An optional dependency is not installed.

    Args:
        package: the import that failed.
        extra: the sttrouter extra that installs it.
    """

    def __init__(self, package: str, extra: str) -> None:
        CallerError.__init__(
            self,
            f"{package} is not installed; install it with: pip install 'sttrouter[{extra}]'",
        )
        self.package = package
        self.extra = extra


class NotStreaming(CallerError):
    """``send_audio``/``stop_streaming`` was called without a running stream."""


class AlreadyStreaming(CallerError):
    """``start_streaming`` was called while a stream was already running on this service."""


class UnsupportedOption(CallerError):
    """A per-stream option (:class:`~sttrouter.options.StreamOptions`) the engine cannot honour.

    A routed session treats it as "this endpoint cannot serve this stream" and moves on to the
    next endpoint of its chain; the caller sees it only when no endpoint of the chain can
    honour the options.

    Args:
        option: the option's name (``"language"``, ``"keywords"``, ...).
        value: the value asked for.
        endpoint_id: the endpoint that refused it.
    """

    def __init__(self, option: str, value: object, *, endpoint_id: str | None = None) -> None:
        super().__init__(
            f"this engine cannot honour the stream option {option}={value!r}; leave it unset "
            "or route to an endpoint that supports it",
            endpoint_id=endpoint_id,
        )
        self.option = option
        self.value = value


class BudgetExceeded(CallerError):
    """A tenant's budget (one with ``on_exhausted = "refuse"``) is spent: new sessions are
    refused until it resets. Streams already running are never cut.

    Args:
        tenant: the tenant key.
        budget: the budget's label.
        resets_at: when the budget's period ends (seconds since the epoch, UTC).
    """

    def __init__(
        self, message: str, *, tenant: str, budget: str, resets_at: float | None = None
    ) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.budget = budget
        self.resets_at = resets_at
