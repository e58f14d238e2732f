"""The ``glm_local`` adapter on a tiny random-weights GLM-ASR built offline in this session.

The tiny checkpoint goes through the same loading path as the real one (files on disk →
``AutoProcessor``/``GlmAsrForConditionalGeneration.from_pretrained(local_files_only=True)``).
Its text is noise (it repeats token 198, "\\n"), so the tests assert structure, timeline
offsets, the token budget and the repetition guard, not words.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sttrouter.audio import ENGINE_FORMAT, AudioFormat
from sttrouter.endpoint import ConnectionConfig, STTEndpoint
from sttrouter.errors import ConfigError, EndpointMisconfigured, MissingDependency
from sttrouter.panel.device import Conditions
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.panel.router import Router, SkipReason
from sttrouter.providers import create_service
from sttrouter.providers._decoding import token_budget
from sttrouter.providers._glm_model import (
    NANO_2512,
    LoadedGlm,
    Precision,
    clear_model_cache,
    load_model,
    resolve_model_dir,
)
from sttrouter.providers.glm_local import (
    GLMLocalEngine,
    GLMLocalSettings,
    GLMLocalSTTService,
    glm_local_endpoint,
    memory_estimate_gb,
)
from sttrouter.providers.segmenter import LOW_CONFIDENCE
from sttrouter.providers.vad import VADConfig
from sttrouter.results import STTResult
from sttrouter.service import stream_transcribe
from sttrouter.testing import FakeClock, check_stt_service, synthetic_speech
from sttrouter.testing.glm_tiny import TINY_LOOP_TOKEN_ID, build_tiny_glm_asr

pytestmark = pytest.mark.anyio

ENERGY = VADConfig(
    backend="energy", pad_seconds=0.05, min_silence_seconds=0.3, energy_floor_seconds=60.0
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_glm_asr(tmp_path_factory.mktemp("glm") / "tiny")


def tiny_endpoint(model_dir: Path, **options: Any) -> STTEndpoint:
    options.setdefault("device", "cpu")
    options.setdefault("dtype", "float32")
    options.setdefault(
        "vad",
        {
            "backend": "energy",
            "pad_seconds": 0.05,
            "min_silence_seconds": 0.3,
            "energy_floor_seconds": 60.0,
        },
    )
    return glm_local_endpoint(model_dir=model_dir, id="glm-tiny", **_split(options))


def _split(options: dict[str, Any]) -> dict[str, Any]:
    device, dtype = options.pop("device"), options.pop("dtype")
    return {"device": device, "dtype": dtype, "options": options}


# -- the tiny model itself --------------------------------------------------------------------
def test_tiny_checkpoint_has_the_real_files(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
    } <= names


def test_tiny_builder_is_deterministic_and_leaves_the_rng_alone(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_glm_asr(tmp_path / "a")
    assert torch.rand(1) == expected
    b = build_tiny_glm_asr(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_tiny_builder_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependency, match=r"sttrouter\[glm-local\]"):
        build_tiny_glm_asr(tmp_path)


# -- loading ----------------------------------------------------------------------------------
async def test_loads_through_the_real_path_once_per_process(tiny_dir: Path) -> None:
    clear_model_cache()
    settings = GLMLocalSettings.from_endpoint(tiny_endpoint(tiny_dir, dtype="bf16"))
    engines = [GLMLocalEngine(settings) for _ in range(3)]
    loaded = await asyncio.gather(*(e.load() for e in engines))
    assert loaded[0] is loaded[1] is loaded[2]
    model = loaded[0]
    assert isinstance(model, LoadedGlm)
    assert type(model.model).__name__ == "GlmAsrForConditionalGeneration"
    assert type(model.processor).__name__ == "GlmAsrProcessor"
    assert (model.device, model.precision) == ("cpu", Precision.BFLOAT16)
    assert str(model.model.dtype) == "torch.bfloat16"
    assert model.parameters == 268_992
    assert model.sample_rate == 16000
    assert model.max_window_seconds == 30
    assert "bfloat16" in repr(model)
    # another precision is another cache entry
    fp32 = load_model(model.model_dir, "cpu", Precision.FLOAT32)
    assert fp32 is not model
    assert fp32 is load_model(model.model_dir, "cpu", Precision.FLOAT32)


async def test_int8_quantises_every_linear_layer(tiny_dir: Path) -> None:
    import torch

    endpoint = tiny_endpoint(tiny_dir, dtype="int8", device="auto")  # int8 implies the CPU
    engine = GLMLocalEngine(GLMLocalSettings.from_endpoint(endpoint))
    model = await engine.load()
    assert model.device == "cpu"
    modules = list(model.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in modules) >= 20
    assert model.parameters == 268_992  # counted before quantisation
    decoded = await engine.decode(np.zeros(16000, dtype=np.float32))
    assert decoded.loop_cut


def hf_cache(cache: Path, repo: str, files_from: Path) -> Path:
    """Lay ``files_from`` out as the Hugging Face hub cache stores a downloaded snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


def test_repo_id_resolves_from_the_hf_cache(tiny_dir: Path, tmp_path: Path) -> None:
    snap = hf_cache(tmp_path / "hub", "zai-org/GLM-ASR-Nano-2512", tiny_dir)
    found = resolve_model_dir("zai-org/GLM-ASR-Nano-2512", cache_dir=tmp_path / "hub")
    assert found == snap


async def test_loads_a_repo_id_from_the_hf_cache(tiny_dir: Path, tmp_path: Path) -> None:
    snap = hf_cache(tmp_path / "hub", "someone/glm-tiny", tiny_dir)
    endpoint = STTEndpoint(
        id="glm-cached",
        provider="glm_local",
        needs_network=False,
        connection=ConnectionConfig(
            options={
                "model": "someone/glm-tiny",
                "cache_dir": str(tmp_path / "hub"),
                "device": "cpu",
                "dtype": "fp32",
            }
        ),
    )
    service = create_service(endpoint)
    assert isinstance(service, GLMLocalSTTService)
    loaded = await service.engine.load()
    assert loaded.model_dir == snap


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("tokenizer.json", "lacks tokenizer.json"),
        ("processor_config.json", "lacks processor_config.json"),
        ("model.safetensors", "lacks model.safetensors"),
        ("model_type", "not 'glmasr'"),
    ],
)
async def test_a_broken_checkpoint_fails_at_start_with_a_clear_error(
    tiny_dir: Path, tmp_path: Path, damage: str, message: str
) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "broken"))
    if damage == "model_type":
        config = (broken / "config.json").read_text().replace('"glmasr"', '"llama"')
        (broken / "config.json").write_text(config)
    else:
        (broken / damage).unlink()
    service = GLMLocalSTTService(tiny_endpoint(broken))
    with pytest.raises(ConfigError, match=message) as info:
        await service.start_streaming()
    assert info.value.endpoint == "glm-tiny"
    assert not service.is_streaming


async def test_a_device_this_host_lacks_is_a_permanent_error(tiny_dir: Path) -> None:
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir, dtype="bf16"), device="cuda:7")
    with pytest.raises(EndpointMisconfigured, match="cuda:7"):
        await service.start_streaming()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"dtype": "float64"}, "dtype"),
        ({"dtype": "int8", "device": "cuda"}, "dtype"),
        ({"device": "gpu"}, "device"),
        ({"max_segment_seconds": 45}, "max_segment_seconds"),
        ({"max_segment_seconds": "long"}, "max_segment_seconds"),
        ({"tokens_per_second": 0}, "tokens_per_second"),
        ({"vad": "silero"}, "vad"),
        ({"vad": {"nope": 1}}, "vad"),
        ({"temperature": 0.3}, "temperature"),
    ],
)
def test_bad_options_fail_at_construction(
    tiny_dir: Path, options: dict[str, Any], field: str
) -> None:
    endpoint = STTEndpoint(
        id="glm-bad",
        provider="glm_local",
        connection=ConnectionConfig(options={"model_dir": str(tiny_dir), **options}),
    )
    with pytest.raises(ConfigError) as info:
        create_service(endpoint)
    assert info.value.field == field


@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_missing_package_fails_construction_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, package: str
) -> None:
    endpoint = tiny_endpoint(tiny_dir)
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(MissingDependency, match=r"pip install 'sttrouter\[glm-local\]'"):
        create_service(endpoint)


# -- streaming through the segmenter -----------------------------------------------------------
async def test_streams_with_correct_offsets_and_the_guard_firing(tiny_dir: Path) -> None:
    speech = synthetic_speech((5, 8, 4), gap_seconds=0.8, lead_seconds=0.4)
    clock = FakeClock()
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir), clock=clock)
    results: list[STTResult] = []
    transcript = await stream_transcribe(
        service, speech.pcm, ENGINE_FORMAT, chunk_seconds=0.02, on_result=results.append
    )
    finals = [r for r in results if r.is_final]
    assert len(finals) == len(speech.utterances)
    for result, (start, end) in zip(finals, speech.utterances, strict=True):
        assert result.start == pytest.approx(start - ENERGY.pad_seconds, abs=0.05)
        assert result.end == pytest.approx(end + ENERGY.pad_seconds, abs=0.1)
        assert result.is_end_of_utterance
        assert result.endpoint_id == "glm-tiny"
        assert result.confidence == LOW_CONFIDENCE  # the loop guard fired on "\n\n\n…"
        assert result.transcript == ""  # one "\n" kept, stripped
        assert result.latency is not None
        assert result.latency >= 0
    assert service.engine.loops_cut == len(finals)
    last = service.engine.last_decoded
    assert last is not None
    assert last.tokens == (TINY_LOOP_TOKEN_ID,)
    # generation stopped at the loop, far inside the duration-scaled token budget
    assert last.generated < token_budget(finals[-1].duration)
    assert transcript.duration == pytest.approx(speech.duration)
    assert service.metrics.audio_seconds == pytest.approx(speech.duration)


async def test_conformance(tiny_dir: Path) -> None:
    speech = synthetic_speech((4, 3), gap_seconds=0.6, lead_seconds=0.2)
    results = await check_stt_service(
        lambda: GLMLocalSTTService(tiny_endpoint(tiny_dir)),
        speech.pcm,
        ENGINE_FORMAT,
        expect_text=False,  # random weights: every decode is the "\n" loop, cut to nothing
    )
    assert [r.is_final for r in results] == [True, True]


async def test_decoding_runs_off_the_event_loop(tiny_dir: Path) -> None:
    engine = GLMLocalEngine(GLMLocalSettings.from_endpoint(tiny_endpoint(tiny_dir)))
    await engine.load()
    ticks = 0
    decode = asyncio.ensure_future(engine.decode(np.zeros(16000 * 5, dtype=np.float32)))
    while not decode.done():
        ticks += 1
        await asyncio.sleep(0)
    await decode
    assert ticks > 10  # the loop kept turning while the model ran in its thread


async def test_a_cancelled_decode_stops_its_thread(tiny_dir: Path) -> None:
    engine = GLMLocalEngine(GLMLocalSettings.from_endpoint(tiny_endpoint(tiny_dir)))
    model = await engine.load()
    before = model.decodes
    task = asyncio.ensure_future(engine.decode(np.zeros(16000, dtype=np.float32)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the abandoned thread finishes (or stops at its next token) and releases the model
    await asyncio.to_thread(model._lock.acquire)
    model._lock.release()
    assert model.decodes <= before + 1


async def test_wrong_segment_rate_is_refused(tiny_dir: Path) -> None:
    engine = GLMLocalEngine(GLMLocalSettings.from_endpoint(tiny_endpoint(tiny_dir)))
    with pytest.raises(ConfigError, match="16000 Hz"):
        await engine.transcribe_segment(b"\0\0" * 800, 8000)


# -- batch transcription of files --------------------------------------------------------------
async def test_transcribe_cuts_long_audio_into_windows_at_quiet_points(tiny_dir: Path) -> None:
    rate = 16000
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(40 * rate) * 3000).astype("<i2")
    noise[21 * rate : 22 * rate] = 0  # the quiet second the first cut should land in
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir), clock=FakeClock())
    # 8 kHz stereo in: converted once to the engine's 16 kHz mono
    fmt = AudioFormat(sample_rate=8000, channels=2)
    stereo = np.repeat(noise[::2, None], 2, axis=1).astype("<i2").tobytes()
    transcript = await service.transcribe(stereo, fmt)
    assert transcript.results == ()  # every window decoded to the cut "\n" loop
    assert service.engine.loops_cut == 2
    assert service.metrics.audio_seconds == pytest.approx(40.0)
    assert service.metrics.finals == 2
    assert transcript.duration == pytest.approx(40.0)


def test_windows_cover_the_clip_without_gaps() -> None:
    from sttrouter.providers.glm_local import _windows

    rate = 16000
    samples = np.full(70 * rate, 1000, dtype="<i2")
    samples[25 * rate : 25 * rate + 3200] = 0
    spans = _windows(samples.tobytes(), 30 * rate)
    assert spans[0][0] == 0
    assert spans[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(end - start <= 30 * rate for start, end in spans)
    assert 25 * rate <= spans[0][1] <= 25 * rate + 3200
    assert _windows(b"", 30 * rate) == []


async def test_transcribe_failure_is_translated(tiny_dir: Path, tmp_path: Path) -> None:
    service = GLMLocalSTTService(tiny_endpoint(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        await service.transcribe(b"\0\0" * 1600)


def test_out_of_memory_is_a_transient_streaming_failure(tiny_dir: Path) -> None:
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir))
    error = service._translate(MemoryError("cannot allocate"))
    assert error.retryable
    assert "out of memory" in str(error)
    assert service._translate(ValueError("x")).endpoint_id == "glm-tiny"


# -- the endpoint and the router ----------------------------------------------------------------
def test_endpoint_memory_is_computed_from_the_checkpoint(tiny_dir: Path) -> None:
    tiny = glm_local_endpoint(model_dir=tiny_dir, dtype="float32", device="cpu")
    assert tiny.memory_gb == pytest.approx(1.1, abs=0.01)  # 269 k parameters + runtime
    nano = glm_local_endpoint(dtype="bf16")
    assert nano.memory_gb == pytest.approx(5.37, abs=0.01)
    assert nano.connection.options["dtype"] == "bf16"
    assert glm_local_endpoint(dtype="fp32", id="g32").memory_gb == pytest.approx(9.65, abs=0.01)
    auto_cpu = glm_local_endpoint(device="cpu")
    assert auto_cpu.memory_gb in (5.37, 9.65)
    auto = glm_local_endpoint()  # torch resolves the device on this host
    assert auto.memory_gb in (5.37, 9.65)
    assert glm_local_endpoint(device="cuda", model="org/x").memory_gb == pytest.approx(5.37)
    assert not nano.needs_network
    assert nano.provider == "glm_local"
    assert nano.supports_streaming  # through the segmenter


def test_memory_estimate_helper(tiny_dir: Path) -> None:
    assert memory_estimate_gb("bf16") == pytest.approx(5.37, abs=0.01)
    assert memory_estimate_gb(Precision.INT8, NANO_2512) == pytest.approx(3.74, abs=0.01)
    assert memory_estimate_gb("fp32", tiny_dir) == pytest.approx(1.1, abs=0.01)
    with pytest.raises(ConfigError, match="concrete dtype"):
        memory_estimate_gb("auto")


def test_the_router_skips_glm_local_on_a_host_too_small() -> None:
    registry = EndpointRegistry([glm_local_endpoint(dtype="bf16")])
    router = Router(registry)
    small = router.decide(Conditions(tier="ultra", network="disconnected", memory_gb=3.0))
    assert small.skipped().get("glm-local") is SkipReason.INSUFFICIENT_MEMORY
    big = router.decide(Conditions(tier="ultra", network="disconnected", memory_gb=16.0))
    assert big.skipped().get("glm-local") is not SkipReason.INSUFFICIENT_MEMORY


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (run on a GPU host)")
async def test_streams_on_cuda_in_bfloat16(tiny_dir: Path) -> None:
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir, device="auto", dtype="auto"))
    speech = synthetic_speech((5, 4), gap_seconds=0.8, lead_seconds=0.4)
    results: list[STTResult] = []
    await stream_transcribe(service, speech.pcm, ENGINE_FORMAT, on_result=results.append)
    loaded = service.engine.loaded
    assert loaded is not None
    assert loaded.device == "cuda"
    assert loaded.precision is Precision.BFLOAT16
    assert str(loaded.model.device).startswith("cuda")
    finals = [r for r in results if r.is_final]
    assert len(finals) == 2
    for result, (start, _end) in zip(finals, speech.utterances, strict=True):
        assert result.start == pytest.approx(start - ENERGY.pad_seconds, abs=0.05)


# -- a committed speech sample, and the command line ------------------------------------------
HELLO = Path(__file__).resolve().parent.parent / "examples" / "audio" / "hello_16k.wav"


async def test_streams_a_committed_speech_sample_through_the_segmenter(tiny_dir: Path) -> None:
    from sttrouter.audio import read_audio

    data, fmt = read_audio(HELLO)
    duration = fmt.seconds(len(data))
    service = GLMLocalSTTService(tiny_endpoint(tiny_dir, vad={}))  # default VAD on real speech
    results: list[STTResult] = []
    await stream_transcribe(service, data, fmt, chunk_seconds=0.02, on_result=results.append)
    finals = [r for r in results if r.is_final]
    assert finals
    assert finals[0].start >= 0
    assert finals[-1].end <= duration + 1e-6
    assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(finals))
    assert sum(r.duration for r in finals) > 0.5 * duration  # the speech was decoded
    assert service.engine.loops_cut == len(finals)


def test_cli_transcribes_with_model_dir(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny random-weights model really runs in-process, and hears nothing in real speech.

    The CLI streams through a routed session, which counts empty finals over speech as the
    engine's failure; ``--model-dir`` pins a chain of one, so there is no backup and the
    caller is told which audio went untranscribed (exit 1) instead of getting an empty
    transcript that looks like silence.
    """
    from sttrouter.cli import main

    code = main(["transcribe", str(HELLO), "--endpoint", "glm-local", "--model-dir", str(tiny_dir)])
    err = capsys.readouterr().err
    assert code == 1
    assert "[glm-local]" in err
    assert f"audio 0.000s..{read_seconds(HELLO):.3f}s not transcribed" in err


def read_seconds(path: Path) -> float:
    from sttrouter.audio import read_audio

    data, fmt = read_audio(path)
    return fmt.seconds(len(data))


def test_cli_model_dir_refuses_another_endpoint(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sttrouter.cli import main

    code = main(["transcribe", str(HELLO), "--endpoint", "deepgram", "--model-dir", str(tiny_dir)])
    assert code == 1
    assert "--model-dir runs GLM-ASR in-process" in capsys.readouterr().err


def test_cli_model_dir_names_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sttrouter.cli import main

    code = main(["transcribe", str(HELLO), "--model-dir", str(tmp_path)])
    assert code == 1
    assert "lacks config.json, model.safetensors" in capsys.readouterr().err
