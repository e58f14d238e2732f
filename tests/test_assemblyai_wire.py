"""The pure AssemblyAI v3 wire module: recorded payloads, round trips, re-chunking."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.errors import MalformedResponse
from sttrouter.providers.assemblyai import turn_to_result
from sttrouter.wire import assemblyai as aai

# Shapes from assemblyai/streaming/v3/models.py (1.8.2), values as the service sends them.
BEGIN = {"type": "Begin", "id": "de5d9927-73a6-4be8-b52d-b4c07be37e6b", "expires_at": 1759796682}
PARTIAL = {
    "type": "Turn",
    "turn_order": 0,
    "turn_is_formatted": False,
    "end_of_turn": False,
    "transcript": "hello",
    "end_of_turn_confidence": 0.0104,
    "words": [
        {"start": 640, "end": 1040, "text": "hello", "confidence": 0.87, "word_is_final": True},
        {"start": 1120, "end": 1200, "text": "wor", "confidence": 0.5, "word_is_final": False},
    ],
}
FORMATTED = {
    "type": "Turn",
    "turn_order": 0,
    "turn_is_formatted": True,
    "end_of_turn": True,
    "transcript": "Hello world.",
    "end_of_turn_confidence": 0.93,
    "words": [
        {"start": 640, "end": 1040, "text": "Hello", "confidence": 0.87, "word_is_final": True},
        {"start": 1120, "end": 1520, "text": "world.", "confidence": 0.91, "word_is_final": True},
    ],
    "language_code": "en",
}
TERMINATION = {"type": "Termination", "audio_duration_seconds": 3, "session_duration_seconds": 4}
ERROR = {"type": "Error", "error_code": 3007, "error": "Input duration violation: 10 ms."}
SPEECH_STARTED = {"type": "SpeechStarted", "timestamp": 640}


@pytest.mark.parametrize("payload", [BEGIN, PARTIAL, FORMATTED, TERMINATION, ERROR, SPEECH_STARTED])
def test_recorded_payloads_round_trip(payload: dict[str, Any]) -> None:
    msg = aai.parse_server_message(json.dumps(payload))
    assert aai.parse_server_message(aai.serialize_server_message(msg)) == msg
    assert aai.parse_server_message(payload) == msg


def test_turn_mapping_ms_to_seconds() -> None:
    final = aai.parse_server_message(FORMATTED)
    assert isinstance(final, aai.Turn)
    r = turn_to_result(final, format_turns=True)
    assert (r.is_final, r.is_end_of_utterance, r.transcript, r.language) == (
        True,
        True,
        "Hello world.",
        "en",
    )
    assert (r.start, r.end) == (0.64, 1.52)
    assert [(w.word, w.start, w.end) for w in r.words] == [
        ("Hello", 0.64, 1.04),
        ("world.", 1.12, 1.52),
    ]
    assert r.confidence == pytest.approx(0.89)
    partial = aai.parse_server_message(PARTIAL)
    assert isinstance(partial, aai.Turn)
    assert not turn_to_result(partial, format_turns=True).is_final
    # the unformatted end of turn is an interim while formatting is on, the final otherwise
    unformatted_end = aai.Turn(0, "hello world", end_of_turn=True)
    assert not turn_to_result(unformatted_end, format_turns=True).is_final
    assert turn_to_result(unformatted_end, format_turns=False).is_final
    empty = turn_to_result(aai.Turn(1, "", end_of_turn=True), format_turns=False, after=2.0)
    assert (empty.start, empty.duration, empty.confidence) == (2.0, 0.0, None)


def test_error_without_type_and_unknown_types() -> None:
    assert aai.parse_server_message({"error": "bad", "error_code": 1008}) == aai.Error("bad", 1008)
    unknown = aai.parse_server_message({"type": "Heartbeat", "total_audio_received_ms": 5})
    assert isinstance(unknown, aai.Unknown)
    assert json.loads(aai.serialize_server_message(unknown))["type"] == "Heartbeat"


@pytest.mark.parametrize(
    "bad",
    ["{", "[]", '{"type": "Turn", "transcript": 5}', '{"type": "Begin", "expires_at": "x"}'],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(MalformedResponse):
        aai.parse_server_message(bad)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"Terminate"}',
        '{"type":"ForceEndpoint"}',
        '{"type":"KeepAlive"}',
        '{"max_turn_silence":1500,"type":"UpdateConfiguration"}',
    ],
)
def test_client_messages_as_the_sdk_sends_them(text: str) -> None:
    msg = aai.parse_client_message(text)
    assert json.loads(aai.serialize_client_message(msg)) == json.loads(text)


def test_bad_client_message() -> None:
    with pytest.raises(MalformedResponse):
        aai.parse_client_message('{"type": "Hello"}')


def test_query_booleans() -> None:
    assert aai.parse_bool("True")
    assert aai.parse_bool("true")
    assert not aai.parse_bool("False")


def test_chunk_violation() -> None:
    assert aai.chunk_violation(3200, 32000) is None  # 100 ms
    assert aai.chunk_violation(1600, 32000) is None  # 50 ms
    assert aai.chunk_violation(32000, 32000) is None  # 1000 ms
    assert aai.chunk_violation(320, 32000) == (
        "Input duration violation: 10 ms. Expected between 50 and 1000 ms"
    )
    assert aai.chunk_violation(32002, 32000) is not None


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 20_000).map(lambda n: n * 2), max_size=40),
    st.integers(50, 1000),
)
def test_rechunker_keeps_every_message_in_bounds(sizes: list[int], target_ms: int) -> None:
    r = aai.Rechunker(32_000, 2, target_ms)
    sent: list[bytes] = []
    data = bytearray()
    for i, n in enumerate(sizes):
        chunk = bytes([i % 251]) * n
        data += chunk
        sent += r.push(chunk)
    assert r.pending < 32 * target_ms
    tail = r.flush()
    if tail:
        sent.append(tail)
    assert r.flush() == b""
    for msg in sent:
        assert aai.chunk_violation(len(msg), 32_000) is None
        assert len(msg) % 2 == 0
    joined = b"".join(sent)
    assert joined[: len(data)] == bytes(data)  # order kept, nothing lost
    assert set(joined[len(data) :]) <= {0}  # only silence padding after
    assert len(joined) - len(data) < 1600


def test_rechunker_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="target_ms"):
        aai.Rechunker(32_000, 2, 20)


def test_transcript_round_trip() -> None:
    payload = {
        "id": "t1",
        "status": "completed",
        "audio_url": "https://cdn/x",
        "text": "Hi there.",
        "words": [{"text": "Hi", "start": 100, "end": 300, "confidence": 0.9, "speaker": None}],
        "confidence": 0.9,
        "audio_duration": 3,
        "language_code": "en_us",
    }
    t = aai.parse_transcript(json.dumps(payload))
    assert (t.status, t.text, t.words[0].start) == ("completed", "Hi there.", 100)
    assert aai.parse_transcript(aai.serialize_transcript(t)) == t
    with pytest.raises(MalformedResponse):
        aai.parse_transcript('{"id": "t"}')
