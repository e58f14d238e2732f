"""The pure Deepgram wire module: recorded payloads parse, values round-trip."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.errors import ConfigError, MalformedResponse
from sttrouter.providers.deepgram import to_stt_result
from sttrouter.wire import deepgram as dg

# Shapes as deepgram-sdk 7.x models them (deepgram/listen/v1/types/*.py), values as a
# live stream sends them.
RESULTS = {
    "type": "Results",
    "channel_index": [0, 1],
    "duration": 1.02,
    "start": 0.0,
    "is_final": True,
    "speech_final": True,
    "from_finalize": False,
    "channel": {
        "alternatives": [
            {
                "transcript": "Hello world.",
                "confidence": 0.9951172,
                "languages": ["en"],
                "words": [
                    {
                        "word": "hello",
                        "start": 0.08,
                        "end": 0.4,
                        "confidence": 0.99,
                        "punctuated_word": "Hello",
                    },
                    {
                        "word": "world",
                        "start": 0.4,
                        "end": 0.9,
                        "confidence": 0.98,
                        "punctuated_word": "world.",
                    },
                ],
            }
        ]
    },
    "metadata": {
        "request_id": "6d4c1f9b-0000-4f00-8000-000000000001",
        "model_info": {"name": "general-nova-3", "version": "2024-12-20.0", "arch": "nova-3"},
        "model_uuid": "40bd3654-e622-47c4-a111-63a61b23bd29",
    },
}
METADATA = {
    "type": "Metadata",
    "transaction_key": "deprecated",
    "request_id": "6d4c1f9b-0000-4f00-8000-000000000001",
    "sha256": "5324da68ede209a16ac69a38e8cd29cee4d754434a041166cda3a1f5e0b24566",
    "created": "2026-01-01T00:00:00.000Z",
    "duration": 2.5,
    "channels": 1,
}
UTTERANCE_END = {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.395}
SPEECH_STARTED = {"type": "SpeechStarted", "channel": [0], "timestamp": 0.24}
ERROR = {
    "type": "Error",
    "variant": "SchemaError",
    "description": "Unknown message type",
    "message": "bad",
}


@pytest.mark.parametrize("payload", [RESULTS, METADATA, UTTERANCE_END, SPEECH_STARTED, ERROR])
def test_recorded_payloads_round_trip(payload: dict[str, Any]) -> None:
    msg = dg.parse_server_message(json.dumps(payload))
    assert dg.parse_server_message(dg.serialize_server_message(msg)) == msg
    assert dg.parse_server_message(payload) == msg  # decoded objects parse the same


def test_results_fields() -> None:
    msg = dg.parse_server_message(RESULTS)
    assert isinstance(msg, dg.Results)
    assert (msg.transcript, msg.is_final, msg.speech_final, msg.from_finalize) == (
        "Hello world.",
        True,
        True,
        False,
    )
    assert [w.text for w in msg.words] == ["Hello", "world."]
    assert msg.languages == ("en",)
    assert msg.request_id == RESULTS["metadata"]["request_id"]  # type: ignore[index]
    result = to_stt_result(msg)
    assert result.is_end_of_utterance
    assert result.language == "en"
    assert [(w.word, w.start, w.end) for w in result.words] == [
        ("Hello", 0.08, 0.4),
        ("world.", 0.4, 0.9),
    ]


def test_missing_optional_fields_take_defaults() -> None:
    msg = dg.parse_server_message({"type": "Results", "channel": {"alternatives": []}})
    assert isinstance(msg, dg.Results)
    assert (msg.transcript, msg.is_final, msg.words) == ("", False, ())
    interim = to_stt_result(msg, language="de")
    assert not interim.is_final
    assert interim.language == "de"


def test_unknown_type_is_kept() -> None:
    msg = dg.parse_server_message('{"type": "Warning", "code": "W1"}')
    assert msg == dg.Unknown("Warning", {"type": "Warning", "code": "W1"})
    assert json.loads(dg.serialize_server_message(msg)) == {"type": "Warning", "code": "W1"}


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        "[1, 2]",
        '{"type": "Results", "start": "zero"}',
        '{"type": "Results", "channel": {"alternatives": ["x"]}}',
        '{"type": "Metadata", "duration": true}',
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(MalformedResponse):
        dg.parse_server_message(bad)


@pytest.mark.parametrize("kind", sorted(dg.CLIENT_MESSAGE_TYPES))
def test_client_messages(kind: str) -> None:
    # what deepgram-sdk sends: {"type": "KeepAlive"} etc.
    text = json.dumps({"type": kind})
    msg = dg.parse_client_message(text)
    assert msg.type == kind
    assert dg.parse_client_message(dg.serialize_client_message(msg)) == msg
    finalize = dg.parse_client_message('{"type": "Finalize", "channel": 0}')
    assert finalize.fields == {"channel": 0}


@pytest.mark.parametrize("bad", ['{"type": "Shout"}', "{}", "nope"])
def test_bad_client_messages(bad: str) -> None:
    with pytest.raises(MalformedResponse):
        dg.parse_client_message(bad)


PRERECORDED = {
    "metadata": {
        "request_id": "r-1",
        "created": "2026-01-01T00:00:00Z",
        "duration": 3.5,
        "channels": 1,
        "models": ["m"],
        "model_info": {},
    },
    "results": {
        "channels": [
            {
                "alternatives": [
                    {
                        "transcript": "hi there",
                        "confidence": 0.9,
                        "words": [
                            {"word": "hi", "start": 0.1, "end": 0.3, "confidence": 0.9},
                            {"word": "there", "start": 0.3, "end": 0.7, "confidence": 0.9},
                        ],
                    }
                ]
            }
        ]
    },
}


def test_prerecorded_round_trip() -> None:
    resp = dg.parse_prerecorded(json.dumps(PRERECORDED))
    assert (resp.request_id, resp.duration, resp.transcript) == ("r-1", 3.5, "hi there")
    assert [w.word for w in resp.words] == ["hi", "there"]
    assert dg.parse_prerecorded(dg.serialize_prerecorded(resp)) == resp
    empty = dg.parse_prerecorded({"metadata": {}, "results": {}})
    assert (empty.transcript, empty.words) == ("", ())


def test_listen_options_from_endpoint_and_query() -> None:
    opts = dg.ListenOptions.from_options(
        {"model": "nova-2", "endpointing": "500", "utterance_end_ms": 1000, "vad_events": "true"}
    )
    kwargs = opts.sdk_kwargs()
    assert kwargs["endpointing"] == 500
    assert kwargs["vad_events"] is True
    assert "language" not in kwargs
    off = dg.ListenOptions.from_options({"endpointing": False, "punctuate": None})
    assert off.sdk_kwargs()["endpointing"] == "false"
    assert "punctuate" not in off.sdk_kwargs()
    query = {
        "model": "nova-3",
        "encoding": "linear16",
        "sample_rate": "8000",
        "channels": "2",
        "interim_results": "true",
        "endpointing": "false",
        "punctuate": "false",
    }
    parsed = dg.ListenOptions.from_query(query)
    assert (parsed.sample_rate, parsed.channels, parsed.endpointing, parsed.punctuate) == (
        8000,
        2,
        False,
        False,
    )
    assert dg.ListenOptions.from_query({}).endpointing is None


@pytest.mark.parametrize(
    "options",
    [
        {"interim_results": "maybe"},
        {"endpointing": True},
        {"endpointing": "soon"},
        {"utterance_end_ms": -1},
        {"utterance_end_ms": True},
    ],
)
def test_bad_listen_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        dg.ListenOptions.from_options(options)


times = st.floats(min_value=0, max_value=1e4, allow_nan=False)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
words = st.builds(
    dg.Word,
    word=text,
    start=times,
    end=times,
    confidence=st.none() | st.floats(0, 1),
    punctuated_word=st.none() | text,
    language=st.none() | st.sampled_from(["en", "de"]),
)
results = st.builds(
    dg.Results,
    transcript=text,
    start=times,
    duration=times,
    is_final=st.booleans(),
    speech_final=st.booleans(),
    from_finalize=st.booleans(),
    confidence=st.none() | st.floats(0, 1),
    words=st.lists(words, max_size=4),
    languages=st.lists(st.sampled_from(["en", "fr"]), max_size=2),
    request_id=st.none() | st.uuids().map(str),
)


@settings(max_examples=60, deadline=None)
@given(results)
def test_results_round_trip(msg: dg.Results) -> None:
    back = dg.parse_server_message(dg.serialize_server_message(msg))
    # Deepgram always sends a confidence: an unknown one goes out as 0.0
    expected = attrs.evolve(msg, confidence=0.0) if msg.confidence is None else msg
    assert back == expected
