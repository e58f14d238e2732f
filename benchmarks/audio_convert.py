"""Streamed audio conversion speed: 48 kHz stereo float32 -> 16 kHz mono s16le in 20 ms chunks.

Measures, in one run and on one core (CPU time of this process, best of ``--repeat``):

* ``AudioConverter`` fed 20 ms (and 100 ms) chunks of raw ``pcm_f32le`` bytes (what
  ``send_audio`` does: validate, decode, mix down, resample with a persistent soxr stream,
  encode with clipping);
* the floor of streaming: bare ``soxr.ResampleStream`` over the same 20 ms chunks of
  already-mixed mono float32 (no validation, no decoding, no encoding);
* the baseline: one ``soxr.resample`` call over the whole clip (mix down and encode included).

Speeds are seconds of audio converted per CPU second ("x real time per core"); the goal for
``AudioConverter`` is at least 1000x.

Run: ``.venv/bin/python benchmarks/audio_convert.py [--seconds 60] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import soxr

from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat, Encoding, float_to_pcm16

SOURCE = AudioFormat(48_000, 2, Encoding.PCM_F32LE)
CHUNK_FRAMES = 960  # 20 ms at 48 kHz


def make_audio(seconds: float) -> np.ndarray:
    rate = SOURCE.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(1)
    left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right], axis=1).astype(np.float32)


def cpu_best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (best is kept)")
    args = parser.parse_args()

    frames = make_audio(args.seconds)
    chunks = [frames[i : i + CHUNK_FRAMES].tobytes() for i in range(0, len(frames), CHUNK_FRAMES)]
    mono_chunks = [
        frames[i : i + CHUNK_FRAMES].mean(axis=1, dtype=np.float32)
        for i in range(0, len(frames), CHUNK_FRAMES)
    ]
    outputs: dict[str, bytes] = {}

    def converter() -> None:
        conv = AudioConverter(SOURCE, ENGINE_FORMAT)
        parts = [conv.convert(c) for c in chunks]
        parts.append(conv.flush())
        outputs["converter"] = b"".join(parts)

    chunks_100ms = [
        frames[i : i + 5 * CHUNK_FRAMES].tobytes() for i in range(0, len(frames), 5 * CHUNK_FRAMES)
    ]

    def converter_100ms() -> None:
        conv = AudioConverter(SOURCE, ENGINE_FORMAT)
        for c in chunks_100ms:
            conv.convert(c)
        conv.flush()

    def bare_stream() -> None:
        rs = soxr.ResampleStream(48_000, 16_000, 1, dtype="float32", quality="HQ")
        for c in mono_chunks:
            rs.resample_chunk(c)
        rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def one_shot() -> None:
        mono = frames.mean(axis=1, dtype=np.float32)
        out = soxr.resample(mono, 48_000, 16_000, quality="HQ")
        outputs["one_shot"] = float_to_pcm16(out).astype("<i2").tobytes()

    results = {
        "AudioConverter, 20 ms chunks": cpu_best(converter, args.repeat),
        "AudioConverter, 100 ms chunks": cpu_best(converter_100ms, args.repeat),
        "soxr.ResampleStream, 20 ms chunks (floor)": cpu_best(bare_stream, args.repeat),
        "soxr.resample one-shot (baseline)": cpu_best(one_shot, args.repeat),
    }
    a = np.frombuffer(outputs["converter"], "<i2").astype(np.int32)
    b = np.frombuffer(outputs["one_shot"], "<i2").astype(np.int32)
    print(f"clip: {args.seconds:.0f} s of 48 kHz stereo float32, {len(chunks)} chunks of 20 ms")
    for name, cpu in results.items():
        print(f"  {name:44s} {cpu * 1000:8.1f} ms CPU  {args.seconds / cpu:9.0f}x real time")
    conv_cpu = results["AudioConverter, 20 ms chunks"]
    print(
        f"  ratio AudioConverter / one-shot speed: "
        f"{results['soxr.resample one-shot (baseline)'] / conv_cpu:.2f}"
    )
    print(
        f"  output samples equal in length: {len(a) == len(b)}; "
        f"max difference {int(np.max(np.abs(a - b))) if len(a) == len(b) else 'n/a'} LSB"
    )
    speed = args.seconds / conv_cpu
    print(f"  goal >= 1000x real time: {'met' if speed >= 1000 else 'NOT met'} ({speed:.0f}x)")


if __name__ == "__main__":
    main()
