"""RoutedSession over a real adapter: Deepgram (the real deepgram-sdk) against the local
protocol-faithful fake server, failing over mid-stream to another engine over real sockets."""

from __future__ import annotations

import pytest

from sttrouter.endpoint import STTEndpoint
from sttrouter.events import RouteEventKind
from sttrouter.providers.deepgram import DeepgramSTTService, deepgram_endpoint
from sttrouter.service import STTService, stream_transcribe
from sttrouter.session import RoutedSession
from sttrouter.testing import (
    FakeDeepgramServer,
    FakeSTTService,
    FaultPlan,
    ServerFault,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio

KEY = "dg-test-key"
SPEECH = synthetic_speech((4, 5), word_seconds=0.15, lead_seconds=0.3)
SCRIPT = [
    ("Hello there, my friend.", *SPEECH.utterances[0]),
    ("How are you doing today?", *SPEECH.utterances[1]),
]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)


def session(server: FakeDeepgramServer) -> tuple[RoutedSession, FakeSTTService]:
    dg = deepgram_endpoint(base_url=server.base_url)
    backup = FakeSTTService(fake_endpoint("backup"))

    def factory(ep: STTEndpoint) -> STTService:
        return DeepgramSTTService(ep) if ep.id == dg.id else backup

    return RoutedSession([dg, backup.endpoint], service_factory=factory), backup


async def test_deepgram_drop_mid_stream_fails_over_without_losing_words() -> None:
    async with FakeDeepgramServer(
        script=SCRIPT, api_key=KEY, faults=FaultPlan.drop_after(1.6)
    ) as server:
        s, backup = session(server)
        transcript = await stream_transcribe(s, SPEECH.pcm, SPEECH.format, chunk_seconds=0.02)
    kinds = [e.kind for e in s.history]
    assert kinds == [RouteEventKind.SELECTED, RouteEventKind.FAILED, RouteEventKind.FAILOVER]
    assert "StreamingFailed" in s.history[1].reason
    # Deepgram finalised the first utterance; the backup heard only audio after that final,
    # and transcribed the interrupted second utterance from its first word
    by_endpoint = {r.endpoint_id: r.transcript for r in transcript.results if r.transcript}
    assert by_endpoint["deepgram"] == "Hello there, my friend."
    assert by_endpoint["backup"] == "w5 w6 w7 w8 w9"
    first_final_end = next(r.end for r in transcript.results if r.endpoint_id == "deepgram")
    assert backup.received == SPEECH.pcm[round(first_final_end * 16000) * 2 :]
    words = [w.word for r in transcript.results for w in r.words]
    assert words.count("w5") == 1
    assert "w1" not in words  # no duplicate of what Deepgram already finalised


async def test_deepgram_bad_audio_claim_fails_over_without_losing_words() -> None:
    """A Deepgram close 1002 ``DATA-0000`` on audio the session validated is Deepgram's
    failure: the backup replays and transcribes the rest, nothing lost, whatever the timing."""
    fault = ServerFault(after=0.5, close_code=1002, reason="DATA-0000")
    async with FakeDeepgramServer(script=SCRIPT, api_key=KEY, faults=[fault]) as server:
        s, backup = session(server)
        transcript = await stream_transcribe(s, SPEECH.pcm, SPEECH.format, chunk_seconds=0.02)
    kinds = [e.kind for e in s.history]
    assert kinds == [RouteEventKind.SELECTED, RouteEventKind.FAILED, RouteEventKind.FAILOVER]
    assert "AudioFormatError" in s.history[1].reason
    assert backup.streams_started == 1
    words = [w.word for r in transcript.results for w in r.words]
    assert words == [w for w, _, _ in SPEECH.words]


async def test_deepgram_wrong_key_at_connect_falls_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "wrong")
    async with FakeDeepgramServer(script=SCRIPT, api_key=KEY) as server:
        s, _ = session(server)
        transcript = await stream_transcribe(s, SPEECH.pcm, SPEECH.format)
        assert s.breakers["deepgram"].state.value == "open"  # permanent: opened at once
    assert transcript.endpoint_ids == ("backup",)
    assert transcript.text == SPEECH.text
