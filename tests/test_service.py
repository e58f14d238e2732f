"""BaseSTTService: the state machine, channel, conversion, metrics and error handling."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import anyio
import numpy as np
import pytest

from sttrouter.audio import ENGINE_FORMAT, AudioFormat, Encoding
from sttrouter.clock import SystemClock, fail_after
from sttrouter.errors import (
    AlreadyStreaming,
    AudioFormatError,
    ConnectionFailed,
    NotStreaming,
    StreamingFailed,
)
from sttrouter.results import STTResult, Transcript
from sttrouter.service import BaseSTTService, ResultChannel, iter_chunks, load_input
from sttrouter.testing import (
    ConformanceError,
    FakeClock,
    FakeSTTService,
    check_stt_service,
    fake_endpoint,
    synthetic_speech,
)

pytestmark = pytest.mark.anyio


class EchoService(BaseSTTService):
    """Emits one final per chunk it receives, covering that chunk."""

    def __init__(self, **kw: object) -> None:
        super().__init__(fake_endpoint("echo", cost_per_hour=Decimal("3.6")), **kw)  # type: ignore[arg-type]
        self.opened = 0
        self.finished = 0
        self.aborted = 0

    async def _open(self) -> None:
        self.opened += 1

    async def _send(self, pcm: bytes) -> None:
        end = self.stream_seconds
        dur = ENGINE_FORMAT.seconds(len(pcm))
        await self._emit(STTResult("x", is_final=True, start=end - dur, duration=dur))

    async def _finish(self) -> None:
        self.finished += 1

    async def _abort(self) -> None:
        self.aborted += 1


async def test_conformance_of_a_minimal_adapter() -> None:
    speech = synthetic_speech((2,))
    await check_stt_service(EchoService, speech.pcm)


async def test_resampled_input_reaches_engine_at_16k() -> None:
    svc = EchoService()
    fmt = AudioFormat(48_000, 2, Encoding.PCM_F32LE)
    results = await svc.start_streaming(fmt)
    one_second = np.zeros((48_000, 2), dtype=np.float32)
    await svc.send_audio(one_second)
    await svc.stop_streaming()
    out = [r async for r in results]
    total = sum(r.duration for r in out)
    assert total == pytest.approx(1.0, abs=1e-3)
    assert svc.metrics.audio_seconds == pytest.approx(1.0)
    assert svc.metrics.cost == Decimal("0.001000")  # 3.6/h for 1 s


async def test_state_errors_name_the_fix() -> None:
    svc = EchoService()
    with pytest.raises(NotStreaming, match="call start_streaming first"):
        await svc.send_audio(b"\0\0")
    await svc.start_streaming()
    with pytest.raises(AlreadyStreaming, match="one service instance per stream"):
        await svc.start_streaming()
    await svc.cancel_streaming()
    await svc.cancel_streaming()  # idempotent
    assert svc.aborted == 1


class BrokenSend(EchoService):
    async def _send(self, pcm: bytes) -> None:
        raise OSError("socket closed")


async def test_foreign_exception_is_translated_and_fails_the_stream() -> None:
    svc = BrokenSend()
    results = await svc.start_streaming()
    with pytest.raises(StreamingFailed, match="unexpected OSError: socket closed") as info:
        await svc.send_audio(b"\0\0" * 160)
    assert info.value.endpoint_id == "echo"
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StreamingFailed):
        async for _ in results:
            pass
    with pytest.raises(StreamingFailed):
        await svc.send_audio(b"\0\0")
    with pytest.raises(StreamingFailed):
        await svc.stop_streaming()
    assert not svc.is_streaming
    assert svc.metrics.errors == 1


class BrokenOpen(EchoService):
    async def _open(self) -> None:
        raise ConnectionRefusedError("refused")


async def test_open_failure_leaves_service_idle() -> None:
    svc = BrokenOpen()
    with pytest.raises(StreamingFailed, match="ConnectionRefusedError"):
        await svc.start_streaming()
    assert not svc.is_streaming


class Spawner(EchoService):
    async def _open(self) -> None:
        async def boom() -> None:
            await asyncio.sleep(0)
            raise ConnectionFailed("receive loop died")

        self._spawn(boom())


async def test_spawned_task_failure_fails_stream() -> None:
    svc = Spawner()
    results = await svc.start_streaming()
    with pytest.raises(ConnectionFailed, match="receive loop died"):
        async for _ in results:
            pass
    with pytest.raises(ConnectionFailed):
        await svc.stop_streaming()


async def test_stream_context_manager_stops_on_normal_exit() -> None:
    svc = EchoService()
    async with svc.stream() as s:
        await s.send(b"\0\0" * 320)
    assert svc.finished == 1
    assert not svc.is_streaming
    async with svc.stream() as s:
        await s.send(b"\0\0" * 320)
        last = await s.stop()
        assert last is not None
        assert last.is_final
        assert [r.transcript async for r in s] == ["x"]
    assert svc.finished == 2


async def test_result_channel_backpressure_and_close() -> None:
    ch = ResultChannel(1)
    r = STTResult("a", is_final=True)
    await ch.send(r)
    blocked = asyncio.ensure_future(ch.send(r))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await ch.__anext__() is r
    await blocked
    ch.close()
    await ch.send(r)  # dropped after close
    assert [x async for x in ch] == [r]


async def test_transcribe_inputs(tmp_path: Path) -> None:
    speech = synthetic_speech((2, 1))
    svc = FakeSTTService()
    t = await svc.transcribe(speech.pcm)
    assert t.text == "w1 w2 w3"
    assert t.duration == pytest.approx(speech.duration)
    assert t.endpoint_ids == ("fake",)
    with pytest.raises(AudioFormatError, match="empty"):
        await svc.transcribe(b"")
    with pytest.raises(AudioFormatError, match="does not exist"):
        await svc.transcribe(tmp_path / "missing.wav")


def test_load_input_and_chunks() -> None:
    data, fmt = load_input(np.zeros(160, dtype=np.int16), None)
    assert fmt == ENGINE_FORMAT
    assert len(data) == 320
    chunks = iter_chunks(b"\0" * 1000, ENGINE_FORMAT, 0.01)
    assert [len(c) for c in chunks] == [320, 320, 320, 40]


async def test_fail_after_on_fake_and_system_clock() -> None:
    clock = FakeClock()

    outcome: list[str] = []

    async def body() -> None:
        try:
            async with fail_after(clock, 2.0):
                await clock.sleep(5.0)
        except TimeoutError:
            outcome.append(f"timeout at {clock.now()}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(body)
        await clock.advance(2.5)
    assert outcome == ["timeout at 2.0"]
    async with fail_after(clock, None):
        pass
    async with fail_after(clock, 1.0):
        await clock.sleep(0)
    with pytest.raises(TimeoutError):
        async with fail_after(SystemClock(), 0.001):
            await anyio.sleep(1)


async def test_fake_clock_run_until_idle() -> None:
    clock = FakeClock(10.0)
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, 3.0)
        tg.start_soon(sleeper, 1.0)
        await asyncio.sleep(0)
        assert clock.sleepers == 2
        assert clock.next_deadline == 11.0
        await clock.run_until_idle()
    assert woke == [11.0, 13.0]
    assert "FakeClock(now=13" in repr(clock)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)


class LiarService(EchoService):
    """Claims results far past the audio it was sent."""

    async def _send(self, pcm: bytes) -> None:
        await self._emit(STTResult("lie", is_final=True, start=100.0, duration=1.0))


async def test_conformance_catches_a_lying_engine() -> None:
    with pytest.raises(ConformanceError, match="past the"):
        await check_stt_service(LiarService, synthetic_speech((1,)).pcm)


def test_repr() -> None:
    assert repr(EchoService()) == "EchoService(endpoint='echo', state=idle)"


class BatchService(EchoService):
    """An engine with a batch call: ``outcome`` is what the call returns or raises, after
    ``decode_seconds`` on the fake clock."""

    def __init__(self, outcome: object, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.outcome = outcome
        self.decode_seconds = 0.25

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript | None:
        await self.clock.sleep(self.decode_seconds)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        assert isinstance(self.outcome, Transcript | None)
        return self.outcome


async def test_batch_metrics_and_errors_are_recorded_once_by_the_base() -> None:
    clock = FakeClock()
    results = (
        STTResult("hello", is_final=True, start=0.0, duration=0.5),
        STTResult("", is_final=True, start=0.5, duration=0.5),  # counted, then dropped
        STTResult("again", is_final=True, start=1.0, duration=0.5, latency=0.1),
    )
    svc = BatchService(Transcript(results, duration=1.5), clock)
    pcm = b"\0\0" * 16000
    async with anyio.create_task_group() as tg:

        async def batch() -> None:
            transcript = await svc.transcribe(pcm)
            assert [r.transcript for r in transcript.results] == ["hello", "again"]
            assert all(r.endpoint_id == "echo" for r in transcript.results)
            assert [r.latency for r in transcript.results] == [pytest.approx(0.25), 0.1]

        tg.start_soon(batch)
        await clock.advance(1.0)
    m = svc.metrics
    assert (m.finals, m.latency_count, m.errors) == (3, 3, 0)
    assert m.audio_seconds == pytest.approx(1.0)
    assert m.cost > 0
    assert svc.opened == 0  # the batch call, not a stream

    failing = BatchService(OSError("socket closed"), clock)
    failing.decode_seconds = 0.0
    with pytest.raises(StreamingFailed, match="OSError: socket closed"):
        await failing.transcribe(pcm)
    assert (failing.metrics.errors, failing.metrics.latency_count) == (1, 0)


async def test_batch_without_a_batch_call_streams_finals_only() -> None:
    svc = BatchService(None, FakeClock())
    svc.decode_seconds = 0.0
    transcript = await svc.transcribe(b"\0\0" * 3200)
    assert svc.opened == 1
    assert svc.finished == 1
    assert transcript.text == "x x"  # one final per 0.1 s chunk
    assert svc.metrics.audio_seconds == pytest.approx(0.2)  # counted by the stream, once
