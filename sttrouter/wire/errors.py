"""One table from vendor status codes to sttrouter errors, shared by the cloud adapters.

======================================  ===============================  =========
what the vendor says                    error                            kind
======================================  ===============================  =========
HTTP 401 / 403, close 1008, 4001        AuthenticationFailed             permanent
HTTP 402, close 4002/4003, "balance"    QuotaExceeded                    permanent
HTTP 429, close 1013/3009/4029/4102     RateLimited                      transient
HTTP 400 / 415 / 422 about the audio    AudioFormatError                 caller
HTTP 413 (upload over the size limit)   AudioFormatError                 caller
HTTP 400 / 404 / other 4xx but 408      EndpointMisconfigured            permanent
close 3007, 1002 ``DATA-0000``          AudioFormatError                 caller
HTTP 408 / 5xx, refused, timeout        ConnectionFailed / ConnectTimeout transient
close 1011 / 3005 / 3008 / other        StreamingFailed                  transient
======================================  ===============================  =========

HTTP 429 carries the server's ``Retry-After`` (:func:`retry_after`) into
:attr:`RateLimited.retry_after`. ``during_connect`` picks :class:`ConnectionFailed` over
:class:`StreamingFailed` for the transient rows. Messages never include credentials: callers
pass only the vendor's status, its text and the endpoint id, and whatever text a server sent
back (a close reason or a 401 body can echo the ``Authorization`` header) goes through
:func:`redact` at the adapter's translation boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConnectionFailed,
    EndpointMisconfigured,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    STTError,
)

__all__ = [
    "REDACTED",
    "from_close_code",
    "from_http_status",
    "mentions_quota",
    "redact",
    "retry_after",
]

REDACTED = "<redacted>"
"""What stands in for a secret value in a message."""

MIN_SECRET_CHARS = 4
"""Shorter values are not treated as secrets (replacing them would garble any text)."""


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every occurrence of each secret value replaced by :data:`REDACTED`.

    Longer secrets go first, so a key that contains another is replaced whole.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    return text


_QUOTA_WORDS = ("insufficient", "balance", "quota", "credit", "funds", "payment")


def mentions_quota(text: str) -> bool:
    """Whether a vendor's error text says the account ran out of money."""
    low = text.lower()
    return any(w in low for w in _QUOTA_WORDS)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its seconds form; ``None`` when absent or a date."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _say(vendor: str, what: str, detail: str) -> str:
    detail = detail.strip()
    return f"{vendor} {what}" + (f": {detail}" if detail else "")


def from_http_status(
    status: int,
    detail: str = "",
    *,
    vendor: str,
    endpoint_id: str | None = None,
    during_connect: bool = True,
    key_env: str | None = None,
    retry_after: float | None = None,
    hint: str = "check the endpoint's base_url and options",
) -> STTError:
    """The error for an HTTP status from a vendor (a rejected upgrade or a REST call).

    ``hint`` is the advice given with :class:`EndpointMisconfigured` (a rejected request);
    ``retry_after`` is passed on with :class:`RateLimited`.
    """
    text = f"HTTP {status}" + (f" {detail.strip()}" if detail.strip() else "")
    if status in (401, 403):
        where = f" in {key_env}" if key_env else ""
        return AuthenticationFailed(
            _say(vendor, "rejected the API key", text) + f"; check the key{where}",
            endpoint_id=endpoint_id,
        )
    if status == 402 or (status == 400 and mentions_quota(detail)):
        return QuotaExceeded(
            _say(vendor, "says the account is out of credit", text) + "; top up the account",
            endpoint_id=endpoint_id,
        )
    if status == 429:
        return RateLimited(
            _say(vendor, "is rate limiting us", text),
            endpoint_id=endpoint_id,
            retry_after=retry_after,
        )
    if status == 413:
        return AudioFormatError(
            _say(vendor, "refused the upload", text) + "; it is over the server's size limit",
            endpoint_id=endpoint_id,
        )
    if status in (400, 415, 422) and "audio" in detail.lower():
        return AudioFormatError(
            _say(vendor, "could not decode the audio", text)
            + "; send PCM or WAV in the format you declared",
            endpoint_id=endpoint_id,
        )
    if 400 <= status < 500 and status != 408:
        return EndpointMisconfigured(
            _say(vendor, "rejected the request", text) + f"; {hint}",
            endpoint_id=endpoint_id,
        )
    cls = ConnectionFailed if during_connect else StreamingFailed
    return cls(_say(vendor, "failed", text), endpoint_id=endpoint_id)


def from_close_code(
    code: int | None,
    reason: str = "",
    *,
    vendor: str,
    endpoint_id: str | None = None,
    key_env: str | None = None,
) -> STTError | None:
    """The error for a WebSocket close code or in-band error code; ``None`` for 1000."""
    if code == 1000:
        return None
    text = f"closed with {code}" + (f" {reason.strip()}" if reason.strip() else "")
    if code in (4002, 4003) or (code in (1008, 4001) and mentions_quota(reason)):
        return QuotaExceeded(
            _say(vendor, "says the account is out of credit", text) + "; top up the account",
            endpoint_id=endpoint_id,
        )
    if code in (1008, 4001):
        where = f" in {key_env}" if key_env else ""
        return AuthenticationFailed(
            _say(vendor, "rejected the API key", text) + f"; check the key{where}",
            endpoint_id=endpoint_id,
        )
    if code in (1013, 3009, 4029, 4102):
        return RateLimited(_say(vendor, "is rate limiting us", text), endpoint_id=endpoint_id)
    if code == 3007 or (code == 1002 and "DATA-0000" in reason):
        return AudioFormatError(
            _say(vendor, "rejected the audio", text)
            + "; send 16-bit PCM in the declared format (AssemblyAI: 50..1000 ms per message)",
            endpoint_id=endpoint_id,
        )
    return StreamingFailed(_say(vendor, "stream broke", text), endpoint_id=endpoint_id)
