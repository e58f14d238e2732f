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
from sttrouter.results import STTResult
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
