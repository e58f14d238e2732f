"""The gateway protocol module, without sockets: parse and serialise round trips, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    EndpointMisconfigured,
    ErrorKind,
    MissingDependency,
    QuotaExceeded,
    StreamingFailed,
    STTError,
    UnsupportedOption,
)
from sttrouter.gateway import protocol as gw
from sttrouter.results import STTResult, WordTimestamp


def test_client_messages_round_trip() -> None:
    for msg in (
        gw.Start(gw.StreamConfig(language="en", interim_results=False, profanity_filter=True)),
        gw.Start(),
        gw.End(),
        gw.Ping(12.5),
        gw.Ping(None),
        gw.Audio(b"\x01\x00" * 160),
    ):
        assert gw.parse_client(gw.serialize(msg)) == msg
    assert gw.Audio(bytes(3200)).seconds == 0.1


def test_unamentis_start_shape_is_accepted() -> None:
    raw = (
        '{"type":"start","config":{"language":"zh","interim_results":true,'
        '"punctuate":true,"profanity_filter":false,"unknown":"ignored"}}'
    )
    assert gw.parse_client(raw) == gw.Start(gw.StreamConfig(language="zh"))
    assert gw.parse_client('{"type":"start"}') == gw.Start()


@pytest.mark.parametrize(
    ("raw", "code", "match"),
    [
        ("hello", gw.ErrorCode.INVALID_MESSAGE, "not JSON"),
        ("[1]", gw.ErrorCode.INVALID_MESSAGE, "object"),
        ('{"type": 3}', gw.ErrorCode.INVALID_MESSAGE, "object"),
        ('{"type": "dance"}', gw.ErrorCode.INVALID_MESSAGE, "unknown message type"),
        ('{"type": "start", "config": [1]}', gw.ErrorCode.INVALID_MESSAGE, "config"),
        ('{"type": "start", "config": {"language": 5}}', gw.ErrorCode.INVALID_MESSAGE, "language"),
        ('{"type": "start", "config": {"punctuate": 1}}', gw.ErrorCode.INVALID_MESSAGE, "punct"),
        ('{"type": "ping", "timestamp": "now"}', gw.ErrorCode.INVALID_MESSAGE, "number"),
        ('{"type": "ping", "timestamp": true}', gw.ErrorCode.INVALID_MESSAGE, "number"),
        (b"\x00\x01\x02", gw.ErrorCode.AUDIO_FORMAT_ERROR, "whole 16-bit samples"),
    ],
)  # fmt: skip
def test_bad_client_messages(raw: str | bytes, code: gw.ErrorCode, match: str) -> None:
    with pytest.raises(gw.ProtocolError, match=match) as info:
        gw.parse_client(raw)
    assert info.value.code is code


def test_text_frame_flag_wins_over_python_type() -> None:
    assert gw.parse_client("ab", binary=True) == gw.Audio(b"ab")
    assert gw.parse_client(b'{"type":"end"}', binary=False) == gw.End()


def test_server_messages_round_trip() -> None:
    words = (WordTimestamp("hi", 0.1, 0.3, 0.9), WordTimestamp("there", 0.3, 0.6, None))
    for msg in (
        gw.Transcript("hi there", True, 0.9, 1200, 800, True, words),
        gw.Transcript("hi", False),
        gw.Pong(1.5, 1700000000.25),
        gw.ErrorMessage.of(gw.ErrorCode.BUFFER_OVERFLOW, "slow down"),
        gw.ErrorMessage.of(gw.ErrorCode.AUTHENTICATION_FAILED, "who are you"),
    ):
        assert gw.parse_server(gw.serialize(msg)) == msg


def test_transcript_from_and_to_results() -> None:
    r = STTResult(
        "a b", True, True, 0.8, start=1.25, duration=0.5, words=[WordTimestamp("a", 1.25, 1.5)]
    )
    t = gw.Transcript.from_result(r)
    assert (t.type, t.timestamp_ms, t.duration_ms) == ("final", 1250, 500)
    back = t.to_result()
    assert (back.transcript, back.start, back.duration, back.words) == ("a b", 1.25, 0.5, r.words)
    body = json.loads(gw.serialize(gw.Transcript.from_result(STTResult("x", False))))
    assert set(body) == {
        "type", "text", "confidence", "timestamp_ms", "duration_ms", "is_end_of_utterance", "words"
    }  # fmt: skip


def test_recoverable_codes() -> None:
    assert {c for c in gw.ErrorCode if c.recoverable} == {
        gw.ErrorCode.AUDIO_FORMAT_ERROR,
        gw.ErrorCode.BUFFER_OVERFLOW,
        gw.ErrorCode.RATE_LIMIT_EXCEEDED,
        gw.ErrorCode.INVALID_MESSAGE,
    }


@pytest.mark.parametrize(("code", "error", "advice"), gw.ERROR_TABLE)
def test_every_error_code_round_trips_through_its_error(
    code: gw.ErrorCode, error: type[Exception], advice: str
) -> None:
    """The client raises the row's error for the code; the server answers it with the code."""
    raised = gw.error_for(code, "the message")
    assert type(raised) is error
    assert "the message" in str(raised)
    assert advice in str(raised)
    assert gw.code_for(raised) is code


def test_the_table_covers_every_code_once() -> None:
    codes = [code for code, _, _ in gw.ERROR_TABLE]
    assert sorted(codes) == sorted(gw.ErrorCode)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionFailed("engine down"), gw.ErrorCode.MODEL_UNAVAILABLE),
        (EndpointMisconfigured("bad url"), gw.ErrorCode.MODEL_UNAVAILABLE),
        (QuotaExceeded("no credit"), gw.ErrorCode.MODEL_UNAVAILABLE),
        (AuthenticationFailed("engine key"), gw.ErrorCode.AUTHENTICATION_FAILED),
        (ConfigError("engine config"), gw.ErrorCode.INTERNAL_ERROR),
        (MissingDependency("numpy", "offline"), gw.ErrorCode.INTERNAL_ERROR),
        (UnsupportedOption("prompt", "offline"), gw.ErrorCode.INTERNAL_ERROR),
    ],
)
def test_engine_errors_map_to_codes(error: STTError, code: gw.ErrorCode) -> None:
    assert gw.code_for(error) is code


def test_unknown_codes_are_failures_and_kinds_follow_the_rows() -> None:
    unknown = gw.error_for("QUOTA", "m")
    assert type(unknown) is StreamingFailed
    assert gw.error_for(gw.ErrorCode.BUFFER_OVERFLOW, "m").kind is ErrorKind.TRANSIENT
    assert gw.error_for(gw.ErrorCode.INVALID_MESSAGE, "m").kind is ErrorKind.PERMANENT


def test_lenient_server_error_parsing() -> None:
    err = gw.parse_server('{"type":"error","code":"QUOTA","message":"m"}')
    assert err == gw.ErrorMessage("QUOTA", "m", False)
    err = gw.parse_server('{"type":"error","code":"BUFFER_OVERFLOW"}')
    assert err == gw.ErrorMessage(gw.ErrorCode.BUFFER_OVERFLOW, "BUFFER_OVERFLOW", True)


@pytest.mark.parametrize(
    "raw",
    [
        b"binary",
        '{"type":"final","words":{"a":1}}',
        '{"type":"final","words":[{"word":"x"}]}',
        '{"type":"final","text":5}',
        '{"type":"hello"}',
    ],
)
def test_bad_server_messages(raw: str | bytes) -> None:
    with pytest.raises(gw.ProtocolError):
        gw.parse_server(raw)


@settings(max_examples=50, deadline=None)
@given(
    text=st.text(max_size=40),
    final=st.booleans(),
    start=st.integers(0, 10**7),
    dur=st.integers(0, 10**5),
    conf=st.none() | st.floats(0, 1),
)
def test_transcript_round_trip_property(
    text: str, final: bool, start: int, dur: int, conf: float | None
) -> None:
    msg = gw.Transcript(text, final, conf, start, dur)
    assert gw.parse_server(gw.serialize(msg)) == msg


def test_start_negotiates_audio_and_pong_echoes_the_timestamp_exactly() -> None:
    plain = gw.serialize(gw.Start())
    assert "sample_rate" not in plain  # UnaMentis' own start shape
    cfg = gw.StreamConfig(sample_rate=48000, channels=2, encoding="pcm_f32le")
    assert gw.parse_client(gw.serialize(gw.Start(cfg))) == gw.Start(cfg)
    aliased = gw.parse_client('{"type":"start","config":{"encoding":"LINEAR16"}}')
    assert isinstance(aliased, gw.Start)
    assert aliased.config.encoding == "pcm_s16le"
    for bad in ('{"sample_rate": 100}', '{"channels": true}', '{"encoding": "opus"}'):
        with pytest.raises(gw.ProtocolError) as info:
            gw.parse_client(f'{{"type":"start","config":{bad}}}')
        assert info.value.code is gw.ErrorCode.AUDIO_FORMAT_ERROR
        assert info.value.message_type == "start"
    ping = gw.parse_client('{"type":"ping","timestamp":1700000000123}')
    assert ping == gw.Ping(1700000000123)
    assert '"timestamp":1700000000123' in str(gw.serialize(gw.Pong(1700000000123, 1.5)))
    assert "timestamp" not in str(gw.serialize(gw.Pong(None, 1.5)))
    assert gw.parse_server(gw.serialize(gw.Pong(None, 1.5))) == gw.Pong(None, 1.5)


def test_finalize_round_trips() -> None:
    assert gw.parse_client(gw.serialize(gw.Finalize())) == gw.Finalize()
