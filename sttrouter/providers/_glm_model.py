"""GLM-ASR in-process: finding the files, choosing device and precision, sizing, loading, decoding.

Everything that touches torch or transformers for the ``glm_local`` adapter lives here; the
adapter (:mod:`sttrouter.providers.glm_local`) is the async shell around it. The pure parts
(file checks, precision names, the memory estimate from a safetensors header, cutting a
token loop with the shared :mod:`~sttrouter.providers._decoding` guard) import neither torch
nor transformers, so a router can size the
endpoint on a host that cannot run it.

Loading is one per process: :func:`load_model` keeps a cache keyed by (model directory,
device, precision) behind a lock, so every session of every service shares one copy of the
weights and two sessions starting together wait for one load. Calls that block (load,
decode) are meant to run in a worker thread; :class:`LoadedGlm` serialises decodes of one
model with its own lock.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import math
import re
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from sttrouter.errors import ConfigError, EndpointMisconfigured, MissingDependency
from sttrouter.providers._decoding import find_repetition, trim_repetition

__all__ = [
    "EXTRA",
    "NANO_2512",
    "NANO_2512_REPO",
    "REQUIRED_FILES",
    "RUNTIME_OVERHEAD_GB",
    "Decoded",
    "LoadedGlm",
    "ParameterCount",
    "Precision",
    "clear_model_cache",
    "cpu_supports_bf16",
    "cut_token_loop",
    "estimate_memory_gb",
    "import_glm",
    "load_model",
    "loop_at_end",
    "parse_precision",
    "quantize_int8",
    "resolve_model_dir",
    "select_device",
    "select_precision",
]

log = logging.getLogger("sttrouter.glm_local")

EXTRA: Final = "glm-local"
NANO_2512_REPO: Final = "zai-org/GLM-ASR-Nano-2512"
MODEL_TYPE: Final = "glmasr"

REQUIRED_FILES: Final = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
)
"""What a checkpoint directory must hold (``model.safetensors.index.json`` plus its shards
may stand in for ``model.safetensors``)."""

_SHARD_INDEX: Final = "model.safetensors.index.json"

RUNTIME_OVERHEAD_GB: Final = 1.1
"""Memory beyond the weights: the torch runtime and thread pools, one 30 s window's
activations, the KV cache. Fitted to the full-size architecture on a 16-core CPU: bf16 peak RSS
5.38 GB for 4.27 GB of weights (docs/glm-local.md has the measurements)."""


def import_glm() -> tuple[Any, Any]:
    """Import torch and transformers (>= 5, with GLM-ASR), or name the extra to install.

    Returns:
        ``(torch, transformers)``.

    Raises:
        MissingDependency: either is missing, or transformers is too old for GLM-ASR.
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingDependency("torch", EXTRA) from exc
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependency("transformers", EXTRA) from exc
    if not hasattr(transformers, "GlmAsrForConditionalGeneration"):
        version = getattr(transformers, "__version__", "?")
        raise MissingDependency(f"transformers>=5.0 (found {version}, without GLM-ASR)", EXTRA)
    return torch, transformers


# -- precision ------------------------------------------------------------------------------


class Precision(enum.StrEnum):
    """How the weights are held. ``INT8`` = dynamic int8 quantisation of every linear layer
    (CPU only; activations and the other weights stay float32)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    INT8 = "int8"

    @property
    def bytes_per_parameter(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}[self.value]


_PRECISION_ALIASES: Final = {
    "fp32": Precision.FLOAT32,
    "float": Precision.FLOAT32,
    "bf16": Precision.BFLOAT16,
    "fp16": Precision.FLOAT16,
    "half": Precision.FLOAT16,
    "qint8": Precision.INT8,
}


def parse_precision(value: object, *, endpoint: str | None = None) -> Precision | None:
    """Normalise a ``dtype`` option: ``None``/``"auto"`` → ``None`` (choose per device).

    Raises:
        ConfigError: the name is not a supported precision.
    """
    if value is None:
        return None
    name = str(value).strip().lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name in _PRECISION_ALIASES:
        return _PRECISION_ALIASES[name]
    try:
        return Precision(name)
    except ValueError:
        choices = "auto, " + ", ".join(p.value for p in Precision) + " (or bf16, fp16, fp32)"
        raise ConfigError(
            f"unsupported dtype {value!r}; use one of {choices}", endpoint=endpoint, field="dtype"
        ) from None


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX on x86, BF16 on Arm).

    Without it torch emulates bf16 and runs slower than float32. Reads ``/proc/cpuinfo`` when
    ``cpuinfo`` is not given; on other systems it answers False except on Apple silicon.
    """
    if cpuinfo is None:
        if sys.platform == "darwin":
            import platform

            return platform.machine() == "arm64"
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


_DEVICE_RE: Final = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def select_device(requested: object, torch: Any, *, endpoint: str | None = None) -> str:
    """``"auto"``/``None`` → cuda, else mps, else cpu; an explicit device must be available.

    Raises:
        ConfigError: the device name is not cpu, mps, cuda or cuda:N.
        EndpointMisconfigured: the device exists as a name but not on this host.
    """
    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not _DEVICE_RE.match(name):
        raise ConfigError(
            f"unsupported device {requested!r}; use auto, cpu, cuda, cuda:N or mps",
            endpoint=endpoint,
            field="device",
        )
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise EndpointMisconfigured(
                f"device {name!r} was asked for but torch sees no such CUDA device "
                f"({torch.cuda.device_count()} visible); use device = 'cpu' or 'auto'",
                endpoint_id=endpoint,
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise EndpointMisconfigured(
            "device 'mps' was asked for but the Metal backend is not available here; "
            "use device = 'cpu' or 'auto'",
            endpoint_id=endpoint,
        )
    return name


def select_precision(
    device: str,
    requested: Precision | None,
    *,
    cpu_bf16: bool | None = None,
    cuda_bf16: bool = True,
    endpoint: str | None = None,
) -> Precision:
    """The precision to load with: the requested one, or cuda → bf16 (fp16 on GPUs without
    bf16), mps → fp16, cpu → bf16 where the CPU has it, else fp32.

    Raises:
        ConfigError: int8 was asked for on a GPU (dynamic quantisation runs on the CPU).
    """
    if requested is Precision.INT8 and device != "cpu":
        raise ConfigError(
            f"dtype 'int8' (dynamic quantisation) runs on the CPU only, not on {device!r}; "
            "use bfloat16 or float16 there, or device = 'cpu'",
            endpoint=endpoint,
            field="dtype",
        )
    if requested is not None:
        return requested
    if device.startswith("cuda"):
        return Precision.BFLOAT16 if cuda_bf16 else Precision.FLOAT16
    if device == "mps":
        return Precision.FLOAT16
    if cpu_bf16 is None:
        cpu_bf16 = cpu_supports_bf16()
    return Precision.BFLOAT16 if cpu_bf16 else Precision.FLOAT32


# -- files ----------------------------------------------------------------------------------


def _looks_like_repo_id(model: str) -> bool:
    return bool(re.match(r"^[\w.-]+/[\w.-]+$", model)) and not model.startswith((".", "/", "~"))


def resolve_model_dir(
    model: str | Path,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Find a checkpoint on disk, never on the network, and check it is a GLM-ASR one.

    Args:
        model: a directory, or a Hugging Face repo id (``zai-org/GLM-ASR-Nano-2512``) already
            in the local cache.
        cache_dir: the Hugging Face cache to look in (default: ``HF_HUB_CACHE``).
        revision: branch, tag or commit of a cached repo (default ``main``).

    Returns:
        The directory holding the files.

    Raises:
        ConfigError: the directory or cache entry is missing, a required file is missing,
            ``config.json`` is unreadable or is not a ``glmasr`` model.
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        if isinstance(model, str) and _looks_like_repo_id(model) and not path.exists():
            path = _from_hf_cache(model, cache_dir, revision, endpoint)
        else:
            raise ConfigError(
                f"model directory {str(model)!r} does not exist; pass the directory that holds "
                f"{', '.join(REQUIRED_FILES)} (or a repo id already in the Hugging Face cache)",
                endpoint=endpoint,
                field="model_dir",
            )
    check_model_dir(path, endpoint=endpoint)
    return path


def _from_hf_cache(
    repo_id: str, cache_dir: str | Path | None, revision: str | None, endpoint: str | None
) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise MissingDependency("huggingface_hub", EXTRA) from exc
    try:
        found = snapshot_download(
            repo_id, cache_dir=cache_dir, revision=revision, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise ConfigError(
            f"{repo_id!r} is not in the Hugging Face cache"
            f"{f' at {cache_dir}' if cache_dir else ''} and sttrouter never downloads; on a "
            f"machine with network run `hf download {repo_id}` (then copy the cache), or copy "
            f"{', '.join(REQUIRED_FILES)} into a directory and pass it as model_dir",
            endpoint=endpoint,
            field="model",
        ) from exc
    return Path(str(found))


def check_model_dir(path: Path, *, endpoint: str | None = None) -> dict[str, Any]:
    """Check ``path`` holds a loadable GLM-ASR checkpoint; return its ``config.json``.

    Raises:
        ConfigError: files missing (all of them named), config unreadable, wrong model type.
    """
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if "model.safetensors" in missing and (path / _SHARD_INDEX).is_file():
        missing.remove("model.safetensors")
    if missing:
        raise ConfigError(
            f"model directory {str(path)!r} lacks {', '.join(missing)}; a GLM-ASR checkpoint "
            f"needs {', '.join(REQUIRED_FILES)} (from {NANO_2512_REPO} on Hugging Face)",
            endpoint=endpoint,
            field="model_dir",
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path / 'config.json'} is not a readable JSON object: {exc}",
            endpoint=endpoint,
            field="model_dir",
        ) from exc
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        hint = ""
        if "whisper_config" in config or config.get("auto_map"):
            hint = (
                "; this looks like the pre-2025-12-27 remote-code format: download the "
                "current weights, which transformers >= 5 loads natively"
            )
        raise ConfigError(
            f"{path / 'config.json'} has model_type {model_type!r}, not {MODEL_TYPE!r}: "
            f"this is not a GLM-ASR checkpoint{hint}",
            endpoint=endpoint,
            field="model_dir",
        )
    return config


# -- memory ---------------------------------------------------------------------------------


@attrs.frozen
class ParameterCount:
    """Parameters of a checkpoint, split by how int8 dynamic quantisation treats them.

    Attributes:
        linear: weights of linear layers (quantised to int8).
        embedding: the token embedding (stays float; when ``tied``, the output layer shares
            it and int8 adds a quantised copy of it).
        other: biases, norms, convolutions (stay float).
        tied: the output layer reuses the embedding matrix.
    """

    linear: int
    embedding: int
    other: int
    tied: bool = True

    @property
    def total(self) -> int:
        return self.linear + self.embedding + self.other

    @classmethod
    def from_safetensors(cls, model_dir: str | Path) -> ParameterCount:
        """Count from the safetensors headers alone (no torch, no weights read)."""
        root = Path(model_dir)
        index = root / _SHARD_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({root / name for name in weight_map.values()})
        else:
            files = [root / "model.safetensors"]
        shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            shapes.update(_safetensors_shapes(file))
        linear = embedding = other = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            if "embed_tokens" in name:
                embedding += n
            elif len(shape) == 2 and name.endswith(".weight"):
                linear += n
            else:
                other += n
        return cls(linear, embedding, other, tied="lm_head.weight" not in shapes)


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100_000_000:
            raise ValueError(f"{file}: safetensors header of {size} bytes is implausible")
        header = json.loads(f.read(size))
    return {
        name: tuple(int(d) for d in meta["shape"])
        for name, meta in header.items()
        if name != "__metadata__"
    }


NANO_2512: Final = ParameterCount(
    linear=2_009_071_616, embedding=121_372_672, other=6_026_240, tied=True
)
"""GLM-ASR-Nano-2512 (the ``GlmAsrConfig()`` defaults): 2,136,470,528 parameters; encoder
635 M, projector 29 M, LLM 1,472 M. The card's "1.5B" is the decoder alone. Checked against a
meta-device instance in the tests."""


def estimate_memory_gb(params: ParameterCount, precision: Precision) -> float:
    """Memory (GB = 10⁹ bytes) the host needs to run the model at ``precision``.

    Weights at their precision plus :data:`RUNTIME_OVERHEAD_GB`. For int8 the weights are
    what stays resident: int8 linear layers, the embedding and the rest in float32, and an
    int8 copy of a tied output layer. (Loading passes through the memory-mapped bf16
    checkpoint, one layer in float32 at a time; those file pages are clean page cache the
    kernel can drop, so they are not counted.)
    """
    if precision is Precision.INT8:
        weights = params.linear + 4 * (params.embedding + params.other)
        if params.tied:
            weights += params.embedding
    else:
        weights = params.total * precision.bytes_per_parameter
    return round(weights / 1e9 + RUNTIME_OVERHEAD_GB, 2)


# -- loading and decoding ---------------------------------------------------------------------


@attrs.frozen
class Decoded:
    """What one decode of one window produced.

    Attributes:
        text: the transcript, loop cut, special tokens removed, stripped.
        tokens: the generated ids kept (after the loop cut).
        loop_cut: the repetition guard fired and the tail was cut.
        generated: how many tokens the model generated before it stopped.
        seconds: wall time of the decode.
    """

    text: str
    tokens: tuple[int, ...]
    loop_cut: bool
    generated: int
    seconds: float


class LoadedGlm:
    """One loaded model + processor on one device. Blocking: call from a worker thread.

    Attributes:
        model_dir: where it was loaded from.
        device: ``cpu``, ``cuda[:N]`` or ``mps``.
        precision: how its weights are held.
        parameters: parameter count of the checkpoint (before any quantisation).
        load_seconds: how long loading took.
        decodes: decodes run so far (all sessions).
        loops_cut: decodes whose repetition guard fired (all sessions).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        torch: Any,
        transformers: Any,
        model_dir: Path,
        device: str,
        precision: Precision,
        load_seconds: float,
        parameters: int | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_dir = model_dir
        self.device = device
        self.precision = precision
        self.load_seconds = load_seconds
        self.parameters = parameters or sum(int(p.numel()) for p in model.parameters())
        self.decodes = 0
        self.loops_cut = 0
        self._torch = torch
        self._transformers = transformers
        self._lock = threading.Lock()
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.max_window_seconds = float(processor.feature_extractor.chunk_length)
        self._input_dtype = (
            torch.float32 if precision is Precision.INT8 else getattr(torch, precision.value)
        )

    def __repr__(self) -> str:
        return (
            f"LoadedGlm({str(self.model_dir)!r}, device={self.device!r}, "
            f"precision={self.precision.value!r}, parameters={self.parameters})"
        )

    def decode(
        self,
        audio: npt.NDArray[np.float32],
        *,
        max_new_tokens: int,
        prompt: str | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Decoded:
        """Transcribe one window (≤ the processor's 30 s) of 16 kHz mono float audio.

        Generation is greedy, stops at ``max_new_tokens``, at an end token, when the
        repetition guard sees a loop (the loop is then cut to one copy), or when
        ``cancelled()`` turns true.
        """
        torch = self._torch
        loop = _LoopStop(self._transformers, cancelled)
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            inputs = self.processor.apply_transcription_request(audio, prompt=prompt)
            inputs = inputs.to(self.model.device, dtype=self._input_dtype)
            prompt_len = int(inputs["input_ids"].shape[1])
            out = self.model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max(1, int(max_new_tokens)),
                stopping_criteria=self._transformers.StoppingCriteriaList([loop.criterion]),
            )
            generated = [int(t) for t in out[0, prompt_len:].tolist()]
            self.decodes += 1
        produced = len(generated)
        generated, loop_cut = cut_token_loop(generated)
        text = " ".join(
            str(self.processor.batch_decode([generated], skip_special_tokens=True)[0]).split()
        )
        trimmed = trim_repetition(text)
        loop_cut = loop_cut or trimmed != text
        if loop_cut:
            self.loops_cut += 1
            log.warning(
                "GLM-ASR repetition loop cut: kept %d of %d tokens (%s)",
                len(generated),
                produced,
                self.model_dir,
            )
        return Decoded(
            text=trimmed,
            tokens=tuple(generated),
            loop_cut=loop_cut,
            generated=produced,
            seconds=time.perf_counter() - started,
        )


class _LoopStop:
    """A transformers stopping criterion: stop once :func:`find_loop` sees a loop."""

    def __init__(self, transformers: Any, cancelled: Callable[[], bool] | None) -> None:
        outer = self
        self.prompt_len: int | None = None
        self.cancelled = cancelled

        class Criterion(transformers.StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return outer.check(input_ids)

        self.criterion = Criterion()

    def check(self, input_ids: Any) -> Any:
        import torch

        if self.prompt_len is None:
            self.prompt_len = int(input_ids.shape[1]) - 1
        stop = bool(self.cancelled and self.cancelled())
        if not stop:
            start = max(self.prompt_len, int(input_ids.shape[1]) - _LOOP_WINDOW)
            stop = loop_at_end([int(t) for t in input_ids[0, start:].tolist()])
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


_LOOP_WINDOW: Final = 96
"""Generated tokens the per-step loop check looks back over."""


def loop_at_end(tokens: Sequence[int]) -> bool:
    """True when ``tokens`` end inside a repetition loop (generation should stop)."""
    rep = find_repetition(tokens)
    return rep is not None and len(tokens) - rep.end < rep.period


def cut_token_loop(tokens: Sequence[int]) -> tuple[list[int], bool]:
    """``tokens`` with a repetition loop cut back to one copy of its unit, and whether one was.

    What follows the loop is kept unless it is only the start of another repeat (a loop
    stopped mid-unit).
    """
    rep = find_repetition(tokens)
    if rep is None:
        return list(tokens), False
    unit = list(tokens[rep.start : rep.start + rep.period])
    tail = list(tokens[rep.end :])
    if tail == unit[: len(tail)]:
        tail = []
    return [*tokens[: rep.start + rep.period], *tail], True


_cache: dict[tuple[str, str, str], LoadedGlm] = {}
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}
_cache_lock = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded model (their memory is freed once no session holds them)."""
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()


def load_model(model_dir: Path, device: str, precision: Precision) -> LoadedGlm:
    """Load (once per process) the checkpoint in ``model_dir`` on ``device`` at ``precision``.

    Blocking; run it in a worker thread. ``model_dir`` must have passed
    :func:`resolve_model_dir`. Concurrent calls for the same key wait for one load.
    """
    key = (str(model_dir.resolve()), device, precision.value)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        loaded = _load(model_dir, device, precision)
        with _cache_lock:
            _cache[key] = loaded
        return loaded


def _load(model_dir: Path, device: str, precision: Precision) -> LoadedGlm:
    torch, transformers = import_glm()
    started = time.perf_counter()
    load_dtype = torch.bfloat16 if precision is Precision.INT8 else getattr(torch, precision.value)
    with _quiet(transformers):
        processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        model = transformers.GlmAsrForConditionalGeneration.from_pretrained(
            model_dir, dtype=load_dtype, local_files_only=True
        )
    model = model.to(device).eval()
    parameters = sum(int(p.numel()) for p in model.parameters())
    if precision is Precision.INT8:
        quantize_int8(model, torch)
    return LoadedGlm(
        model,
        processor,
        torch=torch,
        transformers=transformers,
        model_dir=model_dir,
        device=device,
        precision=precision,
        load_seconds=time.perf_counter() - started,
        parameters=parameters,
    )


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """Load without progress bars on stderr."""
    utils = transformers.utils.logging
    was_enabled = utils.is_progress_bar_enabled()
    utils.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_enabled:
            utils.enable_progress_bar()


def quantize_int8(model: Any, torch: Any) -> None:
    """Swap every ``nn.Linear`` for a dynamically quantised int8 one, in place, one at a time.

    Each layer is converted to float32 just before it is quantised, so the peak stays near
    the bfloat16 model's size instead of the float32 one's; the remaining weights end in
    float32. Uses ``torch.ao.quantization`` (deprecated in torch 2.10+ in favour of torchao,
    which is not a dependency here; its deprecation warnings are silenced).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
        qconfig = torch.ao.quantization.default_dynamic_qconfig
        # (parent, name) only: holding the Linear modules themselves would keep every
        # float32 copy alive until the end and put the peak at the float32 model's size.
        targets = [
            (parent, name)
            for parent in model.modules()
            for name, child in parent.named_children()
            if type(child) is torch.nn.Linear
        ]
        for parent, name in targets:
            child = getattr(parent, name)
            child.float()
            child.qconfig = qconfig
            setattr(parent, name, dynamic_linear.from_float(child))
            del child
        model.float()
