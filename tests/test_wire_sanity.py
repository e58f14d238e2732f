"""Result sanity at the wire: the codecs refuse values no engine may send, and secrets are
scrubbed from any text by one function."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from sttrouter.endpoint import ConnectionConfig
from sttrouter.errors import MalformedResponse
from sttrouter.testing import Fault, FaultKind, FaultPlan
from sttrouter.wire import assemblyai as aai
from sttrouter.wire import deepgram as dg
from sttrouter.wire.errors import REDACTED, redact

RESULTS: dict[str, Any] = {
    "type": "Results",
    "start": 1.0,
    "duration": 0.5,
    "is_final": True,
    "channel": {"alternatives": [{"transcript": "hi", "words": [
        {"word": "hi", "start": 1.0, "end": 1.5}
    ]}]},
}  # fmt: skip
TURN: dict[str, Any] = {
    "type": "Turn",
    "end_of_turn": True,
    "transcript": "hi",
    "words": [{"text": "hi", "start": 1000, "end": 1500, "confidence": 0.9}],
}


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("start", math.nan, "not finite"),
        ("start", math.inf, "not finite"),
        ("duration", -50, "negative time"),
        ("is_final", "false", "not a boolean"),
        ("speech_final", 1, "not a boolean"),
    ],
)
def test_deepgram_results_with_insane_values_are_malformed(
    field: str, value: object, match: str
) -> None:
    with pytest.raises(MalformedResponse, match=match):
        dg.parse_server_message(json.dumps({**RESULTS, field: value}))


def test_deepgram_word_times_are_checked_and_null_flags_are_false() -> None:
    alt = {"transcript": "hi", "words": [{"word": "hi", "start": -1.0, "end": 0.5}]}
    with pytest.raises(MalformedResponse, match="negative"):
        dg.parse_server_message({**RESULTS, "channel": {"alternatives": [alt]}})
    parsed = dg.parse_server_message({**RESULTS, "speech_final": None})
    assert isinstance(parsed, dg.Results)
    assert parsed.is_final
    assert not parsed.speech_final


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"end_of_turn": "false"}, "not a boolean"),
        ({"words": [{"text": "hi", "start": -5, "end": 10}]}, "negative"),
        ({"words": [{"text": "hi", "start": math.nan, "end": 10}]}, "not finite"),
    ],
)
def test_assemblyai_turns_with_insane_values_are_malformed(
    change: dict[str, Any], match: str
) -> None:
    with pytest.raises(MalformedResponse, match=match):
        aai.parse_server_message({**TURN, **change})


def test_redact_replaces_every_secret_longest_first() -> None:
    text = "Authorization: Token abcd-1234 (abcd-1234-long)"
    assert redact(text, ["abcd-1234", "abcd-1234-long"]) == (
        f"Authorization: Token {REDACTED} ({REDACTED})"
    )
    assert redact("a key k", ["k"]) == "a key k"  # too short to be a secret


def test_a_connection_knows_its_secret() -> None:
    conn = ConnectionConfig(api_key_env="SOME_KEY")
    assert conn.secrets({"SOME_KEY": "s3cret-value"}) == ("s3cret-value",)
    assert conn.secrets({}) == ()
    assert ConnectionConfig().secrets() == ()


def test_fault_plan_quiet_constructors() -> None:
    plan = FaultPlan.skip_final(2) | FaultPlan.interims_only(1, stream=0)
    assert [(f.kind, f.nth, f.stream) for f in plan.faults] == [
        (FaultKind.SKIP_FINAL, 2, None),
        (FaultKind.INTERIMS_ONLY, 1, 0),
    ]
    assert all(f.on_final and not f.is_error for f in plan.faults)
    with pytest.raises(ValueError, match="not a final-level fault"):
        FaultPlan.quiet(FaultKind.DROP)
    timed = FaultPlan.bad_audio(1.5).faults[0]
    assert timed.is_error
    assert not timed.on_final
    assert "DATA-0000" in str(timed.error("x"))
    echo = Fault(FaultKind.KEY_ECHO).error("x", echo="the-key")
    assert "Token the-key" in str(echo)
    assert FaultPlan.read_stall_close(1.0).faults[0].kind is FaultKind.READ_STALL_CLOSE
