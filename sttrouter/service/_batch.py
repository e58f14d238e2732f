"""Whole clips through the streaming path: chunking, input normalisation, ``stream_transcribe``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat, read_audio
from sttrouter.errors import AudioFormatError, STTError
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult, Transcript
from sttrouter.service._contract import AudioInput, STTService

__all__ = ["iter_chunks", "load_input", "stream_transcribe"]


def iter_chunks(data: bytes, fmt: AudioFormat, seconds: float = 0.1) -> list[bytes]:
    """Split raw audio into whole-frame chunks of ``seconds`` each (the last may be shorter)."""
    size = max(fmt.frame_bytes, fmt.bytes_for(seconds))
    return [data[i : i + size] for i in range(0, len(data), size)]


def load_input(audio: AudioInput, audio_format: AudioFormat | None) -> tuple[bytes, AudioFormat]:
    """Normalise ``transcribe``'s input to raw bytes plus their format."""
    if isinstance(audio, str | Path):
        data, fmt = read_audio(audio)
        return data, fmt
    fmt = audio_format or ENGINE_FORMAT
    converter = AudioConverter(fmt, fmt)
    data = converter.convert(audio)  # validates
    if not data:
        raise AudioFormatError("audio is empty; pass at least one sample")
    return data, fmt


async def stream_transcribe(
    service: STTService,
    data: bytes,
    fmt: AudioFormat,
    *,
    chunk_seconds: float = 0.1,
    on_result: Callable[[STTResult], None] | None = None,
    options: StreamOptions | None = None,
) -> Transcript:
    """Transcribe a clip by streaming it through ``service`` as fast as it accepts audio."""
    collected: list[STTResult] = []
    failure: BaseException | None = None
    results = await service.start_streaming(fmt, options)

    async def collect() -> None:
        nonlocal failure
        try:
            async for r in results:
                collected.append(r)
                if on_result is not None:
                    on_result(r)
        except STTError as exc:
            failure = exc

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            try:
                for chunk in iter_chunks(data, fmt, chunk_seconds):
                    await service.send_audio(chunk)
                await service.stop_streaming()
            except STTError as exc:
                failure = failure or exc
                await service.cancel_streaming()
    except BaseException:
        await service.cancel_streaming()
        raise
    if failure is not None:
        raise failure
    return Transcript.from_results(collected, duration=fmt.seconds(len(data)))
