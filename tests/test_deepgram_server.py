"""The fake vendor servers themselves: script timing, fault plans, protocol checks.

Talks to the servers with a plain ``websockets`` client where the point is the wire, and with
the adapters where the point is what a client sees.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sttrouter.errors import ConfigError, StreamingFailed
from sttrouter.providers.deepgram import DeepgramSTTService, deepgram_endpoint
from sttrouter.service import stream_transcribe
from sttrouter.testing import (
    FakeAssemblyAIServer,
    FakeDeepgramServer,
    FaultPlan,
    ScriptedUtterance,
    ScriptedWord,
    ServerFault,
    synthetic_speech,
)
from sttrouter.testing._fake_server import (
    ScriptPlayer,
    UtteranceDone,
    UtteranceStarted,
    WordHeard,
    normalise_script,
    plain_word,
)

pytestmark = pytest.mark.anyio

SCRIPT = normalise_script([("Hello there.", 0.2, 0.6), ("Bye now!", 1.0, 1.4)])


def test_spread_and_plain_words() -> None:
    utt = ScriptedUtterance.spread("Hello, big world.", 0.0, 0.3)
    assert [(w.text, w.plain, w.start, w.end) for w in utt.words] == [
        ("Hello,", "hello", 0.0, 0.1),
        ("big", "big", 0.1, 0.2),
        ("world.", "world", 0.2, 0.3),
    ]
    assert (utt.text, utt.plain_text, utt.start, utt.end) == (
        "Hello, big world.",
        "hello big world",
        0.0,
        0.3,
    )
    assert plain_word('"Quoted!"') == "quoted"


@pytest.mark.parametrize(
    "script",
    [
        [("", 0.0, 1.0)],
        [("late", 1.0, 0.5)],
        [("one", 0.0, 1.0), ("overlap", 0.5, 1.5)],
    ],
)
def test_bad_scripts(script: Any) -> None:
    with pytest.raises(ConfigError):
        normalise_script(script)
    with pytest.raises(ConfigError):
        ScriptedUtterance(())


def test_player_events_in_order() -> None:
    player = ScriptPlayer(SCRIPT)
    assert player.advance(0.1) == []
    assert player.advance(0.4) == [UtteranceStarted(0), WordHeard(0, 1)]
    assert player.advance(0.7) == [UtteranceDone(0, 2)]
    assert player.advance(1.2) == [UtteranceStarted(1), WordHeard(1, 1)]
    assert player.flush() == [UtteranceDone(1, 1, forced=True)]
    assert player.flush() == []
    assert player.advance(5.0) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 0.3), min_size=1, max_size=30))
def test_player_reports_every_word_once(steps: list[float]) -> None:
    player = ScriptPlayer(SCRIPT)
    t = 0.0
    events = []
    for step in steps:
        t += step
        events += player.advance(t)
    events += player.advance(10.0)
    done = [e for e in events if isinstance(e, UtteranceDone)]
    assert [(e.index, e.count) for e in done] == [(0, 2), (1, 2)]
    assert [e.index for e in events if isinstance(e, UtteranceStarted)] == [0, 1]
    for index in (0, 1):
        counts = [e.count for e in events if isinstance(e, WordHeard) and e.index == index]
        assert counts == sorted(set(counts))  # grows, never repeats


def test_server_fault_validation_and_plan_mapping() -> None:
    with pytest.raises(ConfigError):
        ServerFault(after=1.0, http_status=401)
    with pytest.raises(ConfigError, match="not supported"):
        FakeDeepgramServer(faults=FaultPlan.added_latency(0.2))
    server = FakeDeepgramServer(faults=FaultPlan.drop_after(1.0, stream=1))
    assert server.faults == (
        ServerFault(after=1.0, close_code=1011, reason="NET-0000", in_band=False, session=1),
    )
    assert ScriptedWord("a", 0, 1).plain == "a"


SPEECH = synthetic_speech((3,), lead_seconds=0.2)
DG_SCRIPT = [("one two three", *SPEECH.utterances[0])]


def dg_service(server: FakeDeepgramServer, **options: Any) -> DeepgramSTTService:
    return DeepgramSTTService(deepgram_endpoint(base_url=server.base_url, options=options))


async def test_fault_hits_only_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "k")
    plan = FaultPlan.drop_after(0.1, stream=0)
    async with FakeDeepgramServer(DG_SCRIPT, api_key="k", faults=plan) as srv:
        svc = dg_service(srv)
        with pytest.raises(StreamingFailed):
            await stream_transcribe(svc, SPEECH.pcm, svc.engine_format)
        transcript = await stream_transcribe(svc, SPEECH.pcm, svc.engine_format)
    assert transcript.text == "one two three"
    assert [s.close_code for s in srv.sessions] == [1011, 1000]


async def test_idle_timeout_closes_with_net_0001(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "k")
    async with FakeDeepgramServer(DG_SCRIPT, api_key="k", idle_timeout=0.05) as srv:
        svc = dg_service(srv)
        results = await svc.start_streaming()
        with pytest.raises(StreamingFailed, match="NET-0001"):
            async for _ in results:
                pass
        await svc.cancel_streaming()
    assert srv.sessions[0].close_code == 1011


async def test_deepgram_wire_checks() -> None:
    async with FakeDeepgramServer(DG_SCRIPT, api_key=None) as srv:
        url = f"{srv.ws_url}/v1/listen?model=nova-3&interim_results=true"
        async with connect(url) as ws:
            await ws.send('{"type": "Shout"}')
            error = json.loads(await ws.recv())
            assert (error["type"], error["variant"]) == ("Error", "SchemaError")
            await ws.send(b"")  # an empty frame ends the stream
            messages = [json.loads(m) async for m in ws]
        assert [m["type"] for m in messages] == ["Metadata"]
        assert srv.sessions[0].controls == ["<invalid>", "CloseStream"]
        assert srv.sessions[0].close_code == 1000


async def aai_messages(url: str, *frames: bytes | str) -> tuple[list[dict[str, Any]], Any]:
    out: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": "k"}) as ws:
        for frame in frames:
            await ws.send(frame)
        try:
            with anyio.fail_after(5):
                async for m in ws:
                    out.append(json.loads(m))
        except ConnectionClosed:
            pass
        return out, ws.close_code


async def test_assemblyai_wire_checks() -> None:
    script = [("one two", 0.0, 0.2)]
    async with FakeAssemblyAIServer(script, api_key="k") as srv:
        base = f"{srv.ws_url}/v3/ws"
        msgs, code = await aai_messages(base)  # no sample_rate
        assert (msgs[-1]["error_code"], code) == (3006, 3006)
        msgs, code = await aai_messages(f"{base}?sample_rate=16000", b"\0" * 320)  # 10 ms
        assert msgs[-1] == {
            "type": "Error",
            "error_code": 3007,
            "error": "Input duration violation: 10 ms. Expected between 50 and 1000 ms",
        }
        assert code == 3007
        msgs, code = await aai_messages(f"{base}?sample_rate=16000", '{"type": "Hello"}')
        assert (msgs[-1]["error_code"], code) == (3006, 3006)
        msgs, code = await aai_messages(
            f"{base}?sample_rate=16000&format_turns=true",
            b"\0" * 6400,
            '{"type": "KeepAlive"}',
            '{"type": "Terminate"}',
        )
        # 200 ms pass both words at once: the end of turn, unformatted then formatted
        assert [m["type"] for m in msgs] == ["Begin", "Turn", "Turn", "Termination"]
        assert [(m["end_of_turn"], m["turn_is_formatted"]) for m in msgs[1:3]] == [
            (True, False),
            (True, True),
        ]
        assert msgs[2]["transcript"] == "one two"
        assert code == 1000
        assert srv.sessions[-1].controls == ["KeepAlive", "Terminate"]
