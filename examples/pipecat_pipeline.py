"""A minimal Pipecat pipeline whose STT is sttrouter: an unreachable cloud primary, the offline
engine as backup.

In a real bot the service goes where any STT service goes::

    pipeline = Pipeline([transport.input(), RoutedSTTService(context, ...), aggregator, llm, ...])

This script needs no Daily room or transport: a ``PipelineWorker`` runs the pipeline locally and
the WAV file is queued into it as 20 ms ``InputAudioRawFrame``\\ s, the way a transport would
push them, with the VAD's stopped-speaking frame at the end. The Deepgram endpoint points at a
closed local port, standing in for a cloud outage: the routed session fails over to the offline
engine (pocketsphinx).

Run it (needs ``sttrouter[pipecat,offline]``)::

    python examples/pipecat_pipeline.py examples/audio/hello_16k.wav
"""

from __future__ import annotations

import argparse
import asyncio
import os
import wave
from pathlib import Path
from typing import Any

from sttrouter import EndpointRegistry, RoutingContext, deepgram_endpoint, offline_endpoint
from sttrouter.integrations.pipecat import RoutedSTTService

from pipecat.frames.frames import (  # isort: skip  (after the plugin, which imports it cleanly)
    EndFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # isort: skip
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # isort: skip
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # isort: skip
from pipecat.workers.runner import WorkerRunner  # isort: skip

HERE = Path(__file__).parent


class TranscriptPrinter(FrameProcessor):  # type: ignore[misc]
    """Prints and keeps the final transcriptions that reach the end of the pipeline."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finals: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            served = frame.metadata.get("endpoint_id")
            print(f"  final [{served}]: {frame.text}")
            self.finals.append(frame.text)
        await self.push_frame(frame, direction)


def make_context() -> RoutingContext:
    """Once per process: Deepgram (unreachable here) first, the offline engine as backup."""
    os.environ.setdefault("DEEPGRAM_API_KEY", "offline-demo")  # a key, so Deepgram is tried
    registry = EndpointRegistry(
        [deepgram_endpoint(base_url="ws://127.0.0.1:9"), offline_endpoint()]
    )
    return RoutingContext(registry)


def wav_frames(path: Path, frame_seconds: float = 0.02) -> list[Frame]:
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = wav.readframes(wav.getnframes())
    if channels != 1:
        raise SystemExit("give a mono WAV: a Pipecat transport delivers mono audio to STT")
    step = round(rate * frame_seconds) * 2
    return [
        InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=rate, num_channels=1)
        for i in range(0, len(pcm), step)
    ]


async def transcribe(path: Path) -> list[str]:
    stt = RoutedSTTService(make_context(), chain=["deepgram", "offline"], language="en")
    printer = TranscriptPrinter()

    @stt.event_handler("on_route_event")
    async def on_route(_service: RoutedSTTService, event: object) -> None:
        print(f"  route: {event}")

    frames = wav_frames(path)
    worker = PipelineWorker(
        Pipeline([stt, printer]),
        params=PipelineParams(audio_in_sample_rate=16000),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    async def feed() -> None:
        await started.wait()
        await worker.queue_frames(
            [VADUserStartedSpeakingFrame(), *frames, VADUserStoppedSpeakingFrame(), EndFrame()]
        )

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), feed())
    return printer.finals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", nargs="?", type=Path, default=HERE / "audio" / "hello_16k.wav")
    args = parser.parse_args(argv)
    asyncio.run(transcribe(args.wav))


if __name__ == "__main__":
    main()
