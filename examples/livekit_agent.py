"""A minimal LiveKit agent whose STT is sttrouter: an unreachable cloud primary, the offline
engine as backup.

In a real agent the plugin goes where any STT goes::

    session = AgentSession(stt=STT(context, chain=["deepgram", "offline"]), llm=..., tts=...)

This script runs without a LiveKit server: it drives the plugin through LiveKit's own
``RecognizeStream`` (what ``AgentSession`` uses), pushing a WAV file as 20 ms ``AudioFrame``\\ s,
and prints the speech events. The Deepgram endpoint points at a closed local port, standing in
for a cloud outage: the routed session fails over to the offline engine (pocketsphinx) and
replays the audio the primary never transcribed.

Run it (needs ``sttrouter[livekit,offline]``)::

    python examples/livekit_agent.py examples/audio/hello_16k.wav
"""

from __future__ import annotations

import argparse
import asyncio
import os
import wave
from pathlib import Path

from livekit import rtc
from livekit.agents import stt

from sttrouter import EndpointRegistry, RoutingContext, deepgram_endpoint, offline_endpoint
from sttrouter.integrations.livekit import STT

HERE = Path(__file__).parent


def make_context() -> RoutingContext:
    """Once per process: Deepgram (unreachable here) first, the offline engine as backup."""
    os.environ.setdefault("DEEPGRAM_API_KEY", "offline-demo")  # a key, so Deepgram is tried
    registry = EndpointRegistry(
        [deepgram_endpoint(base_url="ws://127.0.0.1:9"), offline_endpoint()]
    )
    return RoutingContext(registry)


def wav_frames(path: Path, frame_seconds: float = 0.02) -> list[rtc.AudioFrame]:
    """The WAV file as LiveKit audio frames (16-bit PCM; any rate and channel count)."""
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = wav.readframes(wav.getnframes())
    step = round(rate * frame_seconds) * channels * 2
    return [
        rtc.AudioFrame(
            data=pcm[i : i + step],
            sample_rate=rate,
            num_channels=channels,
            samples_per_channel=len(pcm[i : i + step]) // (2 * channels),
        )
        for i in range(0, len(pcm), step)
    ]


async def transcribe(path: Path) -> list[str]:
    """Stream ``path`` through the plugin; returns the final transcripts."""
    plugin = STT(make_context(), chain=["deepgram", "offline"], language="en")
    plugin.on("route_event", lambda event: print(f"  route: {event}"))
    stream = plugin.stream()
    for frame in wav_frames(path):
        stream.push_frame(frame)
    stream.end_input()
    finals: list[str] = []
    async with stream:
        async for event in stream:
            if event.type is stt.SpeechEventType.FINAL_TRANSCRIPT:
                data = event.alternatives[0]
                served = (data.metadata or {}).get("endpoint_id")
                print(
                    f"  final [{data.start_time:.2f}-{data.end_time:.2f}s, {served}]: {data.text}"
                )
                finals.append(data.text)
    return finals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", nargs="?", type=Path, default=HERE / "audio" / "hello_16k.wav")
    args = parser.parse_args(argv)
    asyncio.run(transcribe(args.wav))


if __name__ == "__main__":
    main()
