"""A RoutedSession over [AssemblyAI, Deepgram], both real SDKs against the fake servers.

AssemblyAI dies mid-stream (close 3005 after 1.2 s of audio); the session fails over to
Deepgram, replays the audio since AssemblyAI's last final and returns the whole transcript,
on one timeline, with no word lost or duplicated.
"""

from __future__ import annotations

import pytest

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.providers.assemblyai import assemblyai_endpoint
from sttrouter.providers.deepgram import deepgram_endpoint
from sttrouter.results import STTResult
from sttrouter.service import stream_transcribe
from sttrouter.session import RoutedSession
from sttrouter.testing import (
    FakeAssemblyAIServer,
    FakeDeepgramServer,
    FaultPlan,
    ScriptedUtterance,
    synthetic_speech,
)

pytestmark = [
    pytest.mark.anyio,
    # assemblyai 1.8 reads ConnectionClosed.code/.reason when a socket closes with an error,
    # which websockets >= 13.1 deprecates; under -W error the SDK's read task would die on
    # the warning instead of reporting the close. Nothing else is silenced.
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]

SPEECH = synthetic_speech((4, 5), word_seconds=0.15, lead_seconds=0.3)
TEXTS = ("Hello there, my friend.", "How are you doing today?")
SCRIPT = [
    ScriptedUtterance.spread(t, *span) for t, span in zip(TEXTS, SPEECH.utterances, strict=True)
]


async def test_assemblyai_dies_mid_stream_deepgram_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "aai-key")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-key")
    # Deepgram's stream starts where AssemblyAI's last final ended: its script is on its own
    # stream's timeline, so shift the second utterance by that offset.
    offset = SCRIPT[0].end
    shifted = ScriptedUtterance.spread(TEXTS[1], SCRIPT[1].start - offset, SCRIPT[1].end - offset)
    async with (
        FakeAssemblyAIServer(SCRIPT, api_key="aai-key", faults=FaultPlan.drop_after(1.2)) as aai,
        FakeDeepgramServer([shifted], api_key="dg-key") as dg,
    ):
        session = RoutedSession(
            [
                assemblyai_endpoint(base_url=aai.base_url),
                deepgram_endpoint(base_url=dg.base_url),
            ]
        )
        seen: list[STTResult] = []
        transcript = await stream_transcribe(
            session, SPEECH.pcm, ENGINE_FORMAT, chunk_seconds=0.02, on_result=seen.append
        )
    assert transcript.text == " ".join(TEXTS)
    assert transcript.endpoint_ids == ("assemblyai", "deepgram")
    words = transcript.words
    expected = [w for utt in SCRIPT for w in utt.words]
    assert [(w.word, w.start, w.end) for w in words] == [
        (e.text, pytest.approx(e.start, abs=2e-3), pytest.approx(e.end, abs=2e-3)) for e in expected
    ]
    # Deepgram heard the replay from AssemblyAI's last final to the end, nothing earlier
    replayed = ENGINE_FORMAT.seconds(dg.sessions[0].audio_bytes)
    assert replayed == pytest.approx(SPEECH.duration - offset, abs=0.01)
    assert aai.sessions[0].close_code == 3005
