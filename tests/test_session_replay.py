"""The replay buffer and the speech-energy tests the session relies on."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.audio import rms_dbfs
from sttrouter.session._replay import ReplayBuffer, chunk_has_speech


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50).map(lambda n: 2 * n), min_size=1, max_size=60),
    cap=st.integers(10, 400),
    trims=st.lists(st.integers(0, 4000), max_size=5),
    reads=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 500)), max_size=8),
)
def test_buffer_matches_a_bytearray_model(
    sizes: list[int], cap: int, trims: list[int], reads: list[tuple[int, int]]
) -> None:
    buf = ReplayBuffer(cap / 32000)
    model = bytearray()
    model_start = 0
    counter = 0
    for n in sizes:
        chunk = bytes((counter + i) % 251 for i in range(n))
        counter += n
        dropped = buf.append(chunk)
        model += chunk
        over = len(model) - buf.max_bytes
        if over > 0:
            assert dropped == (model_start, model_start + over)
            del model[:over]
            model_start += over
        else:
            assert dropped is None
        if trims:
            t = trims.pop()
            buf.trim(t)
            if t > model_start:
                cut = min(t, model_start + len(model)) - model_start
                del model[:cut]
                model_start += cut
        assert (buf.start, buf.end, len(buf)) == (model_start, counter, len(model))
        for pos, limit in reads:
            lo = max(pos, model_start) - model_start
            assert buf.read(pos, limit) == bytes(model[lo : lo + limit])


def test_many_trims_compact_and_positions() -> None:
    buf = ReplayBuffer(30.0)
    for i in range(2000):
        buf.append(bytes([i % 256]) * 640)
        buf.trim(buf.end - 640)
    assert len(buf) == 640
    assert buf.read(0, 10) == bytes([1999 % 256]) * 10
    assert buf.position(0.5) == 16000
    assert buf.position(1e9) == buf.end
    assert buf.seconds(32000) == 1.0
    buf.reset()
    assert (buf.start, buf.end) == (0, 0)
    assert buf.read(0, 100) == b""


def _tone(amplitude: float, n: int = 320) -> bytes:
    t = np.arange(n)
    return (np.sin(t / 5) * amplitude).astype("<i2").tobytes()


def test_chunk_has_speech_agrees_with_rms_dbfs() -> None:
    for amp in (0, 50, 200, 300, 500, 1000, 20000):
        pcm = _tone(amp)
        level = rms_dbfs(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
        assert chunk_has_speech(pcm, -40.0) == (level > -40.0), amp
        assert chunk_has_speech(pcm, -60.0) == (level > -60.0), amp
    assert not chunk_has_speech(b"", -40.0)


def test_has_speech_by_frames() -> None:
    buf = ReplayBuffer(10.0)
    buf.append(_tone(0, 3200) + _tone(5000, 320) + _tone(0, 1000))
    assert buf.has_speech(0, buf.end, -40.0)
    assert not buf.has_speech(0, 6400, -40.0)
    assert not buf.has_speech(0, 1, -40.0)
    assert buf.has_speech(6400, buf.end, -40.0)
