"""The vendor status → STTError table shared by the Deepgram and AssemblyAI adapters."""

from __future__ import annotations

import pytest

from sttrouter.errors import (
    AudioFormatError,
    AuthenticationFailed,
    ConnectionFailed,
    EndpointMisconfigured,
    ErrorKind,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    STTError,
)
from sttrouter.wire.errors import from_close_code, from_http_status, mentions_quota, retry_after


@pytest.mark.parametrize(
    ("status", "detail", "error", "kind"),
    [
        (401, "Invalid credentials", AuthenticationFailed, ErrorKind.PERMANENT),
        (403, "", AuthenticationFailed, ErrorKind.PERMANENT),
        (402, "", QuotaExceeded, ErrorKind.PERMANENT),
        (400, "Insufficient credits", QuotaExceeded, ErrorKind.PERMANENT),
        (429, "", RateLimited, ErrorKind.TRANSIENT),
        (400, "unknown model", EndpointMisconfigured, ErrorKind.PERMANENT),
        (404, "", EndpointMisconfigured, ErrorKind.PERMANENT),
        (400, "failed to process audio", AudioFormatError, ErrorKind.CALLER),
        (415, "unsupported audio", AudioFormatError, ErrorKind.CALLER),
        (413, "too big", AudioFormatError, ErrorKind.CALLER),
        (409, "", EndpointMisconfigured, ErrorKind.PERMANENT),
        (408, "", ConnectionFailed, ErrorKind.TRANSIENT),
        (500, "", ConnectionFailed, ErrorKind.TRANSIENT),
        (503, "busy", ConnectionFailed, ErrorKind.TRANSIENT),
    ],
)
def test_http_status(status: int, detail: str, error: type[STTError], kind: ErrorKind) -> None:
    err = from_http_status(status, detail, vendor="V", endpoint_id="e", key_env="V_KEY")
    assert type(err) is error
    assert err.kind is kind
    assert err.endpoint_id == "e"
    assert str(status) in str(err)


def test_http_status_after_the_stream_opened_is_a_streaming_failure() -> None:
    err = from_http_status(502, vendor="V", during_connect=False)
    assert type(err) is StreamingFailed


def test_rate_limit_carries_retry_after_and_rejections_carry_the_hint() -> None:
    assert [retry_after(v) for v in ("2.5", "0", None, "", "-1", "Wed, 21 Oct 2015")] == [
        2.5,
        0.0,
        None,
        None,
        None,
        None,
    ]
    limited = from_http_status(429, vendor="V", retry_after=2.5)
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 2.5
    rejected = from_http_status(404, "no such model", vendor="V", hint="check the model")
    assert str(rejected).endswith("; check the model")


def test_auth_message_names_the_variable_not_the_key() -> None:
    err = from_http_status(401, "", vendor="Deepgram", key_env="DEEPGRAM_API_KEY")
    assert "DEEPGRAM_API_KEY" in str(err)
    assert "check the key" in str(err)


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (1008, "Unauthorized Connection: Invalid API key", AuthenticationFailed),
        (4001, "Not Authorized", AuthenticationFailed),
        (1008, "Unauthorized Connection: Insufficient account balance", QuotaExceeded),
        (4002, "Insufficient Funds", QuotaExceeded),
        (4003, "paid-only feature", QuotaExceeded),
        (3009, "Too many concurrent sessions", RateLimited),
        (4029, "Client sent audio too fast", RateLimited),
        (1013, "Try again later", RateLimited),
        (3007, "Input duration violation: 10 ms", AudioFormatError),
        (1002, "DATA-0000", AudioFormatError),
        (1002, "protocol error", StreamingFailed),
        (1011, "NET-0001", StreamingFailed),
        (3005, "Server error", StreamingFailed),
        (3008, "Session expired", StreamingFailed),
        (None, "", StreamingFailed),
    ],
)
def test_close_codes(code: int | None, reason: str, error: type[STTError]) -> None:
    err = from_close_code(code, reason, vendor="V", endpoint_id="e")
    assert type(err) is error


def test_normal_close_is_no_error() -> None:
    assert from_close_code(1000, vendor="V") is None


@pytest.mark.parametrize(
    ("text", "quota"),
    [("Insufficient balance", True), ("out of credit", True), ("Invalid API key", False)],
)
def test_mentions_quota(text: str, quota: bool) -> None:
    assert mentions_quota(text) is quota
