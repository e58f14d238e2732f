"""The contract: the :class:`STTService` protocol, the factory type and the stream handle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

from sttrouter.audio import ENGINE_FORMAT, AudioChunk, AudioFormat
from sttrouter.endpoint import STTEndpoint
from sttrouter.metrics import STTMetrics
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult, Transcript

__all__ = ["AudioInput", "AudioStream", "STTService", "ServiceFactory"]

AudioInput = AudioChunk | str | Path
"""What ``transcribe`` accepts: raw audio (with its format) or a path to an audio file."""


@runtime_checkable
class STTService(Protocol):
    """One async streaming interface to a speech-to-text engine.

    One stream at a time per instance: ``start_streaming`` while streaming raises
    :class:`~sttrouter.errors.AlreadyStreaming`; ``send_audio``/``stop_streaming`` without a
    stream raise :class:`~sttrouter.errors.NotStreaming`.
    """

    endpoint: STTEndpoint

    @property
    def metrics(self) -> STTMetrics: ...

    @property
    def cost_per_hour(self) -> Decimal: ...

    @property
    def is_streaming(self) -> bool: ...

    async def start_streaming(
        self, audio_format: AudioFormat = ENGINE_FORMAT, options: StreamOptions | None = None
    ) -> AsyncIterator[STTResult]:
        """Open a stream; iterate the returned iterator for results.

        ``options`` (language, keywords, prompt, interim results, punctuation) are honoured
        or refused with :class:`~sttrouter.errors.UnsupportedOption` here, never ignored.
        The iterator ends after ``stop_streaming`` delivered the last final, and raises the
        stream's :class:`~sttrouter.errors.STTError` if the engine failed.
        """
        ...

    async def send_audio(self, chunk: AudioChunk) -> None:
        """Send one chunk in the format given to ``start_streaming``."""
        ...

    async def finalize(self) -> None:
        """Force a final for the audio sent so far without ending the stream.

        Deepgram's ``Finalize``, AssemblyAI's ``ForceEndpoint``, a segment cut for batch
        engines. Safe to call when nothing is open (then it does nothing).
        """
        ...

    async def stop_streaming(self) -> STTResult | None:
        """Flush, wait for the last final, close; returns the last final result."""
        ...

    async def cancel_streaming(self) -> None:
        """Close now without waiting for results. Safe to call at any time."""
        ...

    async def transcribe(
        self, audio: AudioInput, audio_format: AudioFormat | None = None
    ) -> Transcript:
        """Transcribe a whole clip or file."""
        ...

    def stream(
        self, audio_format: AudioFormat = ENGINE_FORMAT
    ) -> AbstractAsyncContextManager[AudioStream]:
        """``async with service.stream(fmt) as s:`` — always cleans up."""
        ...

    async def probe(self) -> None:
        """Check the engine is reachable without billing a transcription; raise if not."""
        ...


ServiceFactory = Callable[[STTEndpoint], STTService]
"""Builds a fresh service for one endpoint stream (what a routed session and a routing
context use; :func:`sttrouter.providers.create_service` with a clock bound is the default)."""


@attrs.define
class AudioStream:
    """Handle yielded by ``service.stream(fmt)``: send audio, iterate results, stop."""

    service: STTService
    results: AsyncIterator[STTResult]
    stopped: bool = False

    async def send(self, chunk: AudioChunk) -> None:
        await self.service.send_audio(chunk)

    async def stop(self) -> STTResult | None:
        self.stopped = True
        return await self.service.stop_streaming()

    def __aiter__(self) -> AsyncIterator[STTResult]:
        return self.results
