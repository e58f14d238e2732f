"""One stream's state inside a service: the bounded result channel, the audio sent, the
marks that turn a result's end time into its latency."""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import AsyncIterator

from sttrouter.audio import AudioConverter, AudioFormat, Encoding
from sttrouter.errors import STTError
from sttrouter.options import StreamOptions
from sttrouter.results import STTResult

__all__ = ["ResultChannel", "StreamState", "results_of"]


class ResultChannel:
    """A bounded single-stream channel of results: ``send`` waits while it is full.

    ``close`` lets the reader drain what is buffered, then ends its iteration; results sent
    after ``close`` are dropped.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[STTResult] = deque()
        self._capacity = capacity
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, item: STTResult) -> None:
        while len(self._items) >= self._capacity and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return
        self._items.append(item)
        self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    def __aiter__(self) -> ResultChannel:
        return self

    async def __anext__(self) -> STTResult:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item


class StreamState:
    """Everything that belongs to one stream of a service."""

    def __init__(
        self, source: AudioFormat, target: AudioFormat, buffer: int, options: StreamOptions
    ) -> None:
        self.send = ResultChannel(buffer)
        self.options = options
        self.source = source
        self.target = target
        self.converter = AudioConverter(source, target)
        # caller bytes already in the engine's s16 format go to the engine as they are
        self.passthrough = source == target and source.encoding is Encoding.PCM_S16LE
        self.frame_bytes = source.frame_bytes
        self.bytes_per_second = source.bytes_per_second
        self.failure: STTError | None = None
        self.engine_seconds = 0.0
        self.mark_ends: list[float] = []
        self.mark_times: list[float] = []
        self.last_final: STTResult | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def mark(self, seconds: float, now: float) -> None:
        self.engine_seconds += seconds
        self.mark_ends.append(self.engine_seconds)
        self.mark_times.append(now)

    def latency_for(self, end: float, now: float) -> float | None:
        """Seconds since the audio ending at ``end`` was sent."""
        if not self.mark_ends:
            return None
        i = bisect.bisect_left(self.mark_ends, end - 1e-9)
        i = min(i, len(self.mark_ends) - 1)
        return max(0.0, now - self.mark_times[i])

    def forget_before(self, end: float) -> None:
        i = bisect.bisect_left(self.mark_ends, end - 1e-9)
        if i > 0:
            del self.mark_ends[:i]
            del self.mark_times[:i]


async def results_of(stream: StreamState) -> AsyncIterator[STTResult]:
    async for result in stream.send:
        yield result
    if stream.failure is not None:
        raise stream.failure
