"""GLM-ASR in-process: load time, real-time factor per audio second, memory, per precision.

Each (device, dtype) runs in a fresh subprocess (so peak RSS and thread pools are its own)
through the adapter's real path: ``resolve_model_dir`` → ``load_model`` (from_pretrained,
local files only) → ``LoadedGlm.decode`` (greedy, duration-scaled token budget, loop guard).
The baseline is float32 on the CPU in the same run; other rows are reported as its ratio.

Usage::

    .venv/bin/python benchmarks/glm_local.py                       # tiny random model, CPU
    .venv/bin/python benchmarks/glm_local.py --model-dir ~/models/GLM-ASR-Nano-2512 \\
        --device cuda --dtype auto --seconds 5,10,30               # the real checkpoint
    .venv/bin/python benchmarks/glm_local.py --random-full         # real size, random weights

``--random-full`` builds the full GLM-ASR-Nano-2512 architecture (2.14 B parameters) with
random weights, saved in bfloat16 (≈4.3 GB on disk): speed and memory are real, text is noise.
Random weights rarely hit an end token, so they decode up to the whole token budget (10 per
audio second): an upper bound on decode work, real speech needs fewer tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_random_full(directory: Path) -> Path:
    """The real GLM-ASR-Nano-2512 architecture, random weights, a byte-level tokenizer whose
    special tokens sit at the real ids."""
    import tokenizers
    import torch
    import transformers

    from sttrouter.testing.glm_tiny import CHAT_TEMPLATE

    config = transformers.GlmAsrConfig()
    vocab_size = config.text_config.vocab_size
    specials = {
        59246: "<|endoftext|>",
        59253: "<|user|>",
        59254: "<|assistant|>",
        59252: "<|system|>",
        59255: "<|observation|>",
        59260: "<|pad|>",
        59261: "<|begin_of_audio|>",
        59262: "<|end_of_audio|>",
    }
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for i in range(len(alphabet), vocab_size):
        vocab[specials.get(i, f"<x{i}>")] = i  # special tokens at their real ids
    core = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = tokenizers.decoders.ByteLevel()
    core.add_special_tokens([specials[i] for i in sorted(specials)])
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    assert tok.convert_tokens_to_ids("<|pad|>") == config.audio_token_id
    features = transformers.WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    processor = transformers.GlmAsrProcessor(
        feature_extractor=features, tokenizer=tok, chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.GlmAsrForConditionalGeneration(config).to(torch.bfloat16).eval()
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    return directory


def speechlike(seconds: float, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Amplitude-modulated harmonic tones with pauses: speech energy without words."""
    rate = 16000
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = (np.sin(2 * np.pi * 4 * t) > -0.2).astype(np.float64)
    words = (np.sin(2 * np.pi * 0.5 * t + 1) > -0.6).astype(np.float64)
    audio = 0.1 * voice * syllables * words + 0.003 * rng.standard_normal(len(t))
    return audio.astype(np.float32)


def _weights_bytes(state: Any, seen: set[int] | None = None) -> int:
    """Bytes held by a state dict's tensors: shared (tied) storage counted once, int8 packed
    linear weights included."""
    seen = set() if seen is None else seen
    if hasattr(state, "dtype") and hasattr(state, "element_size"):
        try:
            key = int(state.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # quantised tensors have no plain storage
            key = id(state)
        if key in seen:
            return 0
        seen.add(key)
        return int(state.numel() * state.element_size())
    if isinstance(state, dict):
        return sum(_weights_bytes(v, seen) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_weights_bytes(v, seen) for v in state)
    return 0


def _proc_memory() -> dict[str, float]:
    """VmHWM (peak RSS), RssAnon (heap) and RssFile (mapped files) in GB, on Linux."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(value.split()[0]) * 1024 / 1e9, 2)
    except OSError:
        pass
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One (device, dtype): load, warm up, decode each duration ``repeats`` times."""
    started = time.perf_counter()
    import torch

    from sttrouter.providers._decoding import token_budget
    from sttrouter.providers._glm_model import (
        load_model,
        parse_precision,
        resolve_model_dir,
        select_device,
        select_precision,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    import_s = time.perf_counter() - started
    model_dir = resolve_model_dir(args.model_dir)
    device = select_device(args.device, torch)
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    precision = select_precision(device, parse_precision(args.dtype), cuda_bf16=cuda_bf16)
    loaded = load_model(model_dir, device, precision)
    weights_mb = _weights_bytes(loaded.model.state_dict()) / 1e6
    after_load = _proc_memory()
    loaded.decode(speechlike(1.0), max_new_tokens=4)  # warm-up
    rows = []
    for seconds in args.seconds:
        audio = speechlike(seconds, seed=int(seconds))
        walls, tokens = [], []
        for _ in range(args.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            decoded = loaded.decode(audio, max_new_tokens=token_budget(seconds))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            tokens.append(decoded.generated)
        wall = float(np.median(walls))
        rows.append(
            {
                "seconds": seconds,
                "wall_s": round(wall, 4),
                "rtf": round(wall / seconds, 4),
                "tokens": int(np.median(tokens)),
                "ms_per_token": round(1000 * wall / max(1, int(np.median(tokens))), 2),
            }
        )
    return {
        "device": device,
        "dtype": precision.value,
        "threads": torch.get_num_threads(),
        "parameters": loaded.parameters,
        "weights_mb": round(weights_mb, 1),
        "anon_after_load_gb": after_load.get("RssAnon"),
        "file_after_load_gb": after_load.get("RssFile"),
        "import_s": round(import_s, 2),
        "load_s": round(loaded.load_seconds, 3),
        "peak_rss_gb": _proc_memory().get("VmHWM")
        or round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "cuda_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3)
        if device.startswith("cuda")
        else None,
        "rows": rows,
    }


def run_config(args: argparse.Namespace, device: str, dtype: str) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        __file__,
        "--_worker",
        "--model-dir",
        str(args.model_dir),
        "--device",
        device,
        "--dtype",
        dtype,
        "--seconds",
        ",".join(f"{s:g}" for s in args.seconds),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"# {device}/{dtype} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def report(results: list[dict[str, Any]], label: str) -> str:
    base = next((r for r in results if r["device"] == "cpu" and r["dtype"] == "float32"), None)
    lines = [
        f"model: {label}",
        "",
        "| device | dtype | threads | load s | weights MB | heap / mapped GB after load "
        "| peak RSS GB | GPU peak GB "
        "| audio s | tokens | wall s | RTF | ms/token | speed-up vs fp32 CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            ratio = ""
            if base is not None:
                b = next(x for x in base["rows"] if x["seconds"] == row["seconds"])
                ratio = f"{b['wall_s'] / row['wall_s']:.2f}"
            lines.append(
                f"| {r['device']} | {r['dtype']} | {r['threads']} | {r['load_s']:.2f} "
                f"| {r['weights_mb']:.1f} | {r['anon_after_load_gb']} / {r['file_after_load_gb']} "
                f"| {r['peak_rss_gb']:.2f} "
                f"| {r['cuda_peak_gb'] if r['cuda_peak_gb'] is not None else '-'} "
                f"| {row['seconds']:g} | {row['tokens']} | {row['wall_s']:.3f} | {row['rtf']:.3f} "
                f"| {row['ms_per_token']:.1f} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a GLM-ASR checkpoint directory")
    parser.add_argument(
        "--random-full",
        action="store_true",
        help="real size, random weights (built into --model-dir if given, else a temp dir)",
    )
    parser.add_argument("--device", default="cpu", help="comma list: cpu,cuda,mps,auto")
    parser.add_argument(
        "--dtype", default="float32,bfloat16,int8", help="comma list (auto, bf16, int8, ...)"
    )
    parser.add_argument("--seconds", default="1,5,10,30", help="audio durations (≤ 30)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seconds = [float(s) for s in str(args.seconds).split(",")]
    if args._worker:
        print(json.dumps(worker(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_full:
            # --model-dir names where to keep the build (reused when it is already there)
            target = args.model_dir or Path(tmp) / "full"
            t0 = time.perf_counter()
            if not (target / "config.json").is_file():
                build_random_full(target)
            args.model_dir = target
            label = (
                "GLM-ASR-Nano-2512 architecture, random weights "
                f"(built or found in {time.perf_counter() - t0:.0f} s)"
            )
        elif args.model_dir is None:
            from sttrouter.testing.glm_tiny import build_tiny_glm_asr

            args.model_dir = build_tiny_glm_asr(Path(tmp) / "tiny")
            label = "tiny random GLM-ASR (sttrouter.testing.glm_tiny, 0.27 M parameters)"
        else:
            label = str(args.model_dir)
        results = []
        for device in args.device.split(","):
            for dtype in args.dtype.split(","):
                if dtype in ("int8", "qint8") and device != "cpu":
                    continue
                print(f"# running {device}/{dtype} ...", file=sys.stderr, flush=True)
                r = run_config(args, device, dtype)
                if r is not None:
                    results.append(r)
        print(report(results, label))
        print(f"\nhost: {os.cpu_count()} CPUs; torch threads as listed; median of {args.repeats}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
