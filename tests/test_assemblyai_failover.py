"""A RoutedSession over [AssemblyAI, Deepgram], both real SDKs against the fake servers.

The committed 15 s clip (four sentences) streams through the session. AssemblyAI dies in the
third sentence (close 3005 after 8 s of audio); the session fails over to Deepgram, replays
the audio since AssemblyAI's last final and returns the whole transcript, on one timeline,
with no word lost or duplicated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sttrouter.audio import ENGINE_FORMAT, read_audio
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
)

pytestmark = [
    pytest.mark.anyio,
    # assemblyai 1.8 reads ConnectionClosed.code/.reason when a socket closes with an error,
    # which websockets >= 13.1 deprecates; under -W error the SDK's read task would die on
    # the warning instead of reporting the close. Nothing else is silenced.
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]

AUDIO = Path(__file__).resolve().parents[1] / "examples" / "audio"
PCM, FORMAT = read_audio(AUDIO / "long_16k.wav")
# Sentences of long.txt and their speech spans (RMS over 20 ms windows above -40 dBFS).
TEXTS = tuple(t.strip() + "." for t in (AUDIO / "long.txt").read_text().split(".") if t.strip())
SPANS = ((0.36, 2.82), (4.04, 6.42), (7.64, 10.94), (12.18, 14.42))
SCRIPT = [ScriptedUtterance.spread(t, *span) for t, span in zip(TEXTS, SPANS, strict=True)]


async def test_assemblyai_dies_mid_stream_deepgram_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "aai-key")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-key")
    # Deepgram's stream starts where AssemblyAI's last final ended: its script is on its own
    # stream's timeline, so shift the second utterance by that offset.
    offset = SCRIPT[1].end
    shifted = [
        ScriptedUtterance.spread(u.text, u.start - offset, u.end - offset) for u in SCRIPT[2:]
    ]
    async with (
        FakeAssemblyAIServer(SCRIPT, api_key="aai-key", faults=FaultPlan.drop_after(8.0)) as aai,
        FakeDeepgramServer(shifted, api_key="dg-key") as dg,
    ):
        session = RoutedSession(
            [
                assemblyai_endpoint(base_url=aai.base_url),
                deepgram_endpoint(base_url=dg.base_url),
            ]
        )
        seen: list[STTResult] = []
        transcript = await stream_transcribe(
            session, PCM, FORMAT, chunk_seconds=0.02, on_result=seen.append
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
    assert replayed == pytest.approx(FORMAT.seconds(len(PCM)) - offset, abs=0.01)
    # the caller saw AssemblyAI's two finals, then Deepgram's two, in timeline order
    finals = [r for r in seen if r.is_final and r.transcript]
    assert [(r.endpoint_id, r.transcript) for r in finals] == [
        ("assemblyai", TEXTS[0]),
        ("assemblyai", TEXTS[1]),
        ("deepgram", TEXTS[2]),
        ("deepgram", TEXTS[3]),
    ]
    assert aai.sessions[0].close_code == 3005
