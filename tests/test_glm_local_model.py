"""GLM-ASR in-process, the parts that need no model: files, precision, device, memory, loops."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttrouter.errors import ConfigError, EndpointMisconfigured, ErrorKind, MissingDependency
from sttrouter.providers._decoding import find_repetition
from sttrouter.providers._glm_model import (
    NANO_2512,
    REQUIRED_FILES,
    ParameterCount,
    Precision,
    check_model_dir,
    cpu_supports_bf16,
    cut_token_loop,
    estimate_memory_gb,
    import_glm,
    loop_at_end,
    parse_precision,
    resolve_model_dir,
    select_device,
    select_precision,
)

GLM_CONFIG = {"model_type": "glmasr", "architectures": ["GlmAsrForConditionalGeneration"]}


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file whose header lists ``shapes`` (float32, zero-filled data)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def fake_checkpoint(root: Path, *, config: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_FILES:
        (root / name).write_text("{}")
    (root / "config.json").write_text(json.dumps(config or GLM_CONFIG))
    write_safetensors(
        root / "model.safetensors",
        {
            "model.language_model.embed_tokens.weight": [10, 4],
            "model.language_model.layers.0.mlp.up_proj.weight": [8, 4],
            "model.audio_tower.conv1.weight": [4, 2, 3],
            "model.audio_tower.conv1.bias": [4],
        },
    )
    return root


# -- missing dependencies ---------------------------------------------------------------------
@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(MissingDependency) as info:
        import_glm()
    assert info.value.package == package
    assert info.value.extra == "glm-local"
    assert "pip install 'sttrouter[glm-local]'" in str(info.value)
    assert info.value.kind is ErrorKind.CALLER


def test_transformers_without_glm_asr_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (import_glm imports it first)

    old = types.ModuleType("transformers")
    old.__version__ = "4.57.3"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", old)
    with pytest.raises(MissingDependency, match=r"transformers>=5\.0 \(found 4\.57\.3"):
        import_glm()


# -- precision and device ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, None),
        ("auto", None),
        ("AUTO", None),
        ("bf16", Precision.BFLOAT16),
        ("torch.bfloat16", Precision.BFLOAT16),
        ("fp16", Precision.FLOAT16),
        ("half", Precision.FLOAT16),
        ("float32", Precision.FLOAT32),
        ("fp32", Precision.FLOAT32),
        ("int8", Precision.INT8),
        ("qint8", Precision.INT8),
    ],
)
def test_parse_precision(name: str | None, expected: Precision | None) -> None:
    assert parse_precision(name) is expected


@pytest.mark.parametrize("bad", ["float64", "int4", "fp8", ""])
def test_unsupported_dtype_is_a_clear_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_precision(bad, endpoint="glm")
    assert info.value.field == "dtype"
    assert repr(bad) in str(info.value)
    assert "bfloat16" in str(info.value)
    assert "int8" in str(info.value)


X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_BF16 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
X86_AMX = "flags\t\t: avx2 amx_tile amx_bf16\n"
ARM_BF16 = "Features\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(X86_AVX2, False), (X86_BF16, True), (X86_AMX, True), (ARM_BF16, True), ("", False)],
)
def test_cpu_bf16_detection(cpuinfo: str, expected: bool) -> None:
    assert cpu_supports_bf16(cpuinfo) is expected


def test_cpu_bf16_detection_reads_this_host() -> None:
    assert isinstance(cpu_supports_bf16(), bool)


@pytest.mark.parametrize(
    ("device", "kw", "expected"),
    [
        ("cuda", {}, Precision.BFLOAT16),
        ("cuda:1", {"cuda_bf16": False}, Precision.FLOAT16),
        ("mps", {}, Precision.FLOAT16),
        ("cpu", {"cpu_bf16": True}, Precision.BFLOAT16),
        ("cpu", {"cpu_bf16": False}, Precision.FLOAT32),
    ],
)
def test_auto_precision_per_device(device: str, kw: dict[str, bool], expected: Precision) -> None:
    assert select_precision(device, None, **kw) is expected


def test_requested_precision_wins_and_int8_is_cpu_only() -> None:
    assert select_precision("cuda", Precision.FLOAT32) is Precision.FLOAT32
    assert select_precision("cpu", Precision.INT8) is Precision.INT8
    assert select_precision("cpu", None) in (Precision.BFLOAT16, Precision.FLOAT32)
    with pytest.raises(ConfigError, match="CPU only"):
        select_precision("cuda", Precision.INT8)


def fake_torch(cuda: int = 0, mps: bool = False) -> Any:
    """The two torch questions select_device asks, answered as a host with ``cuda`` GPUs would
    (no GPU exists here to ask for real)."""
    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(is_available=lambda: cuda > 0, device_count=lambda: cuda),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps)),
    )


def test_select_device_auto_prefers_cuda_then_mps() -> None:
    assert select_device("auto", fake_torch(cuda=1, mps=True)) == "cuda"
    assert select_device(None, fake_torch(mps=True)) == "mps"
    assert select_device("auto", fake_torch()) == "cpu"
    assert select_device("CUDA:1", fake_torch(cuda=2)) == "cuda:1"
    assert select_device("mps", fake_torch(mps=True)) == "mps"


@pytest.mark.parametrize(
    ("device", "torch_", "error"),
    [
        ("tpu", fake_torch(), ConfigError),
        ("cuda:x", fake_torch(cuda=1), ConfigError),
        ("cuda", fake_torch(), EndpointMisconfigured),
        ("cuda:2", fake_torch(cuda=2), EndpointMisconfigured),
        ("mps", fake_torch(), EndpointMisconfigured),
    ],
)
def test_select_device_refuses(device: str, torch_: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=device.split(":")[0]):
        select_device(device, torch_, endpoint="glm")


# -- files ------------------------------------------------------------------------------------
def test_missing_files_are_all_named(tmp_path: Path) -> None:
    root = fake_checkpoint(tmp_path / "ckpt")
    (root / "tokenizer.json").unlink()
    (root / "chat_template.jinja").unlink()
    with pytest.raises(ConfigError) as info:
        resolve_model_dir(root, endpoint="glm")
    message = str(info.value)
    assert "lacks tokenizer.json, chat_template.jinja" in message
    assert info.value.field == "model_dir"
    assert info.value.endpoint == "glm"
    assert info.value.kind is ErrorKind.CALLER


def test_empty_directory_names_every_required_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model_dir(tmp_path)
    for name in REQUIRED_FILES:
        assert name in str(info.value)


def test_sharded_weights_stand_in_for_model_safetensors(tmp_path: Path) -> None:
    root = fake_checkpoint(tmp_path / "ckpt")
    whole = ParameterCount.from_safetensors(root)
    (root / "model.safetensors").rename(root / "model-00001-of-00002.safetensors")
    write_safetensors(root / "model-00002-of-00002.safetensors", {"lm_head.weight": [10, 4]})
    index = {
        "weight_map": {
            "model.language_model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        }
    }
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    assert resolve_model_dir(root) == root
    sharded = ParameterCount.from_safetensors(root)
    assert sharded.linear == whole.linear + 40
    assert not sharded.tied


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir("./org/model")


def test_wrong_model_type(tmp_path: Path) -> None:
    root = fake_checkpoint(tmp_path / "w", config={"model_type": "whisper"})
    with pytest.raises(ConfigError, match=r"model_type 'whisper', not 'glmasr'"):
        resolve_model_dir(root)


def test_legacy_remote_code_checkpoint_gets_a_hint(tmp_path: Path) -> None:
    legacy = {"model_type": "glm_asr", "whisper_config": {"d_model": 1280}, "auto_map": {}}
    root = fake_checkpoint(tmp_path / "old", config=legacy)
    with pytest.raises(ConfigError, match="pre-2025-12-27 remote-code format"):
        check_model_dir(root)


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_unreadable_config(tmp_path: Path, text: str) -> None:
    root = fake_checkpoint(tmp_path / "bad")
    (root / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="not a readable JSON object"):
        check_model_dir(root)


def test_repo_id_missing_from_the_cache_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model_dir("zai-org/GLM-ASR-Nano-2512", cache_dir=tmp_path)
    message = str(info.value)
    assert "not in the Hugging Face cache" in message
    assert "hf download zai-org/GLM-ASR-Nano-2512" in message
    assert "never downloads" in message


# -- memory -----------------------------------------------------------------------------------
def test_parameter_count_from_header(tmp_path: Path) -> None:
    count = ParameterCount.from_safetensors(fake_checkpoint(tmp_path / "c"))
    assert count == ParameterCount(linear=32, embedding=40, other=28, tied=True)
    assert count.total == 100


def test_absurd_safetensors_header_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12))
    with pytest.raises(ValueError, match="implausible"):
        ParameterCount.from_safetensors(tmp_path)


def test_nano_parameter_count_matches_the_real_architecture() -> None:
    """NANO_2512 is GlmAsrConfig()'s defaults counted on a meta-device instance."""
    torch, transformers = import_glm()
    with torch.device("meta"):
        model = transformers.GlmAsrForConditionalGeneration(transformers.GlmAsrConfig())
    assert sum(p.numel() for p in model.parameters()) == NANO_2512.total == 2_136_470_528
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    assert linear == NANO_2512.linear
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert NANO_2512.tied


def test_memory_estimates_for_nano() -> None:
    fp32 = estimate_memory_gb(NANO_2512, Precision.FLOAT32)
    bf16 = estimate_memory_gb(NANO_2512, Precision.BFLOAT16)
    fp16 = estimate_memory_gb(NANO_2512, Precision.FLOAT16)
    int8 = estimate_memory_gb(NANO_2512, Precision.INT8)
    assert fp32 == pytest.approx(2_136_470_528 * 4 / 1e9 + 1.1, abs=0.01)  # 9.65
    assert bf16 == fp16 == pytest.approx(5.37, abs=0.01)
    # int8: 2.01 B linear weights in int8, embedding + rest in float32, int8 copy of lm_head
    assert int8 == pytest.approx(2.64 + 1.1, abs=0.01)
    # a model mostly of embeddings is bigger in int8 (float32 rest) than in bf16
    odd = ParameterCount(linear=10**8, embedding=10**9, other=0, tied=False)
    assert estimate_memory_gb(odd, Precision.INT8) > estimate_memory_gb(odd, Precision.BFLOAT16)


# -- the repetition guard on tokens -----------------------------------------------------------
def test_the_tiny_models_newline_loop_is_cut() -> None:
    assert loop_at_end([198] * 12)
    assert not loop_at_end([198] * 11)
    assert cut_token_loop([5, 6, *[198] * 20]) == ([5, 6, 198], True)


def test_phrase_loops_and_their_tails() -> None:
    loop = [1, 2, 3] * 5
    assert loop_at_end(loop)
    assert loop_at_end([*loop, 1, 2])
    assert cut_token_loop([9, *loop, 1, 2]) == ([9, 1, 2, 3], True)  # partial repeat dropped
    assert cut_token_loop([9, *loop, 7, 8]) == ([9, 1, 2, 3, 7, 8], True)  # escaped loop kept
    assert not loop_at_end([*loop, 7, 8, 9, 10])
    assert cut_token_loop([1, 2, 3, 4]) == ([1, 2, 3, 4], False)


@given(
    prefix=st.lists(st.integers(0, 50), max_size=20),
    unit=st.lists(st.integers(51, 60), min_size=1, max_size=6),
    repeats=st.integers(12, 20),
)
def test_a_loop_is_always_cut_to_at_most_one_unit(
    prefix: list[int], unit: list[int], repeats: int
) -> None:
    tokens = prefix + unit * repeats
    kept, cut = cut_token_loop(tokens)
    assert cut
    assert loop_at_end(tokens)
    assert kept == tokens[: len(kept)]
    assert len(prefix) < len(kept) <= len(prefix) + len(unit)
    assert find_repetition(kept) is None or len(kept) < len(tokens)


@given(st.lists(st.integers(0, 3), max_size=40))
def test_cutting_never_grows_and_only_cuts_loops(tokens: list[int]) -> None:
    kept, cut = cut_token_loop(tokens)
    assert cut == (find_repetition(tokens) is not None)
    assert len(kept) <= len(tokens)
    if not cut:
        assert kept == tokens
