"""GLM-ASR-Nano-2512 in-process, on transformers (``pip install 'sttrouter[glm-local]'``).

GLM-ASR has no streaming mode: it encodes 30 s windows and decodes whole utterances with an
LLM. :class:`GLMLocalSTTService` therefore streams through the
:class:`~sttrouter.providers.segmenter.SegmentedSTTService`: a VAD cuts utterances (at most
30 s), :class:`GLMLocalEngine` decodes each in a worker thread (the event loop, and every
other stream on it, stays responsive), and one final per utterance comes back on the stream's
timeline. ``transcribe()`` of a file skips the VAD: the clip is cut into ≤ 30 s windows at
their quietest point, decoded one by one and joined.

Every decode is greedy with ``max_new_tokens`` scaled to the audio's duration
(:func:`~sttrouter.providers._decoding.token_budget`) and a repetition-loop guard that stops
generation as soon as the output starts looping and cuts the loop back to one copy (the
result is then marked low-confidence).

Endpoint options (``connection.options``, or keyword arguments to the constructor):

=====================  ========================================================================
``model_dir``          directory with the checkpoint files (see :data:`REQUIRED_FILES`)
``model``              or a Hugging Face repo id already in the local cache (default
                       ``zai-org/GLM-ASR-Nano-2512``); nothing is ever downloaded
``cache_dir``          the Hugging Face cache to look in; ``revision`` a cached revision
``device``             ``auto`` (cuda → mps → cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``
``dtype``              ``auto`` (cuda → bf16, mps → fp16, cpu → bf16 where the CPU has
                       native bf16, else fp32), ``bfloat16``, ``float16``, ``float32``, or
                       ``int8`` (dynamic int8 linear layers, CPU only)
``prompt``             the user prompt (default "Please transcribe this audio into text")
``max_segment_seconds`` longest utterance decoded at once (1..30, default 30)
``interim_interval``   seconds of audio between interim re-decodes (default none)
``tokens_per_second``  the token budget's rate (default 10 tokens per audio second)
``vad``                a table of :class:`~sttrouter.providers.vad.VADConfig` fields
=====================  ========================================================================

Stream options: ``prompt`` replaces the user prompt for one stream (the processor takes a
prompt; it has no language field, so ``language`` and ``keywords`` are refused).
``finalize()`` cuts the current segment.

One copy of the weights per process: every service on the same (model, device, dtype)
shares it, and decodes on it run one at a time.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
import numpy as np

from sttrouter._builtin_endpoints import builtin_endpoint
from sttrouter.audio import ENGINE_FORMAT, AudioConverter, AudioFormat, pcm16_to_float
from sttrouter.clock import Clock
from sttrouter.endpoint import ConnectionConfig, Provider, STTEndpoint
from sttrouter.errors import ConfigError, MissingDependency, StreamingFailed, STTError
from sttrouter.providers._decoding import token_budget
from sttrouter.providers._glm_model import (
    EXTRA,
    NANO_2512,
    NANO_2512_REPO,
    REQUIRED_FILES,
    Decoded,
    LoadedGlm,
    ParameterCount,
    Precision,
    estimate_memory_gb,
    import_glm,
    load_model,
    parse_precision,
    resolve_model_dir,
    select_device,
    select_precision,
)
from sttrouter.providers.segmenter import (
    LOW_CONFIDENCE,
    EngineLike,
    SegmentedSTTService,
    SegmentResult,
    quietest_cut,
)
from sttrouter.providers.vad import VADConfig
from sttrouter.results import STTResult, Transcript

__all__ = [
    "REQUIRED_FILES",
    "GLMLocalEngine",
    "GLMLocalSTTService",
    "GLMLocalSettings",
    "glm_local_endpoint",
    "memory_estimate_gb",
]

MAX_WINDOW_SECONDS: Final = 30.0
"""GLM-ASR's encoder window: no decode is given more audio than this."""

_OPTION_NAMES: Final = frozenset(
    {
        "model_dir",
        "model",
        "cache_dir",
        "revision",
        "device",
        "dtype",
        "prompt",
        "max_segment_seconds",
        "interim_interval",
        "tokens_per_second",
        "vad",
    }
)


def _installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_installed() -> None:
    """Cheap check (no import) that the extra is there; the real import runs in a thread."""
    for package in ("torch", "transformers"):
        if not _installed(package):
            raise MissingDependency(package, EXTRA)


def _float_option(
    options: Mapping[str, Any], name: str, default: float | None, endpoint: str
) -> float | None:
    value = options.get(name, default)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number, got {value!r}", endpoint=endpoint, field=name
        ) from None
    return number


@attrs.frozen
class GLMLocalSettings:
    """The ``glm_local`` options of one endpoint, checked (see the module docstring)."""

    model: str | Path = NANO_2512_REPO
    cache_dir: str | None = None
    revision: str | None = None
    device: str = "auto"
    precision: Precision | None = None
    prompt: str | None = None
    max_segment_seconds: float = MAX_WINDOW_SECONDS
    interim_interval: float | None = None
    tokens_per_second: float = 10.0
    vad: VADConfig = attrs.field(factory=VADConfig)

    @classmethod
    def from_endpoint(cls, endpoint: STTEndpoint, **overrides: Any) -> GLMLocalSettings:
        """Read ``endpoint.connection.options`` (``overrides`` win).

        Raises:
            ConfigError: an unknown option, a bad dtype/device name, or a number out of range.
        """
        eid = endpoint.id
        options = {**endpoint.connection.options, **overrides}
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown glm_local option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OPTION_NAMES))}",
                endpoint=eid,
                field=unknown[0],
            )
        model = options.get("model_dir") or options.get("model") or NANO_2512_REPO
        device = str(options.get("device") or "auto").strip().lower()
        if device != "auto" and not (
            device in ("cpu", "mps", "cuda")
            or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ConfigError(
                f"unsupported device {options['device']!r}; use auto, cpu, cuda, cuda:N or mps",
                endpoint=eid,
                field="device",
            )
        precision = parse_precision(options.get("dtype"), endpoint=eid)
        if precision is Precision.INT8 and device not in ("cpu", "auto"):
            select_precision(device, precision, endpoint=eid)  # raises the int8-on-GPU error
        max_seg = _float_option(options, "max_segment_seconds", MAX_WINDOW_SECONDS, eid)
        assert max_seg is not None
        if not 1.0 <= max_seg <= MAX_WINDOW_SECONDS:
            raise ConfigError(
                f"max_segment_seconds must lie in 1..{MAX_WINDOW_SECONDS:g} (GLM-ASR encodes "
                f"30 s windows), got {max_seg}",
                endpoint=eid,
                field="max_segment_seconds",
            )
        tps = _float_option(options, "tokens_per_second", 10.0, eid)
        assert tps is not None
        if tps <= 0:
            raise ConfigError(
                f"tokens_per_second must be positive, got {tps}",
                endpoint=eid,
                field="tokens_per_second",
            )
        vad = options.get("vad") or {}
        if not isinstance(vad, VADConfig):
            if not isinstance(vad, Mapping):
                raise ConfigError(
                    f"vad must be a table of VAD settings, got {vad!r}", endpoint=eid, field="vad"
                )
            try:
                vad = VADConfig(**vad)
            except TypeError as exc:
                raise ConfigError(f"bad vad settings: {exc}", endpoint=eid, field="vad") from None
        return cls(
            model=model if isinstance(model, Path) else str(model),
            cache_dir=None if options.get("cache_dir") is None else str(options["cache_dir"]),
            revision=options.get("revision"),
            device=device,
            precision=precision,
            prompt=options.get("prompt"),
            max_segment_seconds=max_seg,
            interim_interval=_float_option(options, "interim_interval", None, eid),
            tokens_per_second=tps,
            vad=vad,
        )


class GLMLocalEngine:
    """The batch engine: loads the model on first use, decodes segments in a worker thread.

    Args:
        settings: the endpoint's checked options.
        endpoint_id: for error messages.
    """

    def __init__(self, settings: GLMLocalSettings, *, endpoint_id: str | None = None) -> None:
        self.settings = settings
        self.endpoint_id = endpoint_id
        self.loaded: LoadedGlm | None = None
        self.loops_cut = 0
        """Decodes of this engine whose repetition guard fired."""
        self.last_decoded: Decoded | None = None

    async def load(self) -> LoadedGlm:
        """Load (or fetch from the per-process cache) the model, off the event loop."""
        if self.loaded is None:
            self.loaded = await anyio.to_thread.run_sync(self._load_blocking)
        return self.loaded

    def _load_blocking(self) -> LoadedGlm:
        s = self.settings
        torch, _ = import_glm()
        eid = self.endpoint_id
        model_dir = resolve_model_dir(
            s.model, cache_dir=s.cache_dir, revision=s.revision, endpoint=eid
        )
        wanted = "cpu" if s.precision is Precision.INT8 and s.device == "auto" else s.device
        device = select_device(wanted, torch, endpoint=eid)  # int8 runs on the CPU
        cuda_bf16 = device.startswith("cuda") and bool(torch.cuda.is_bf16_supported())
        precision = select_precision(device, s.precision, cuda_bf16=cuda_bf16, endpoint=eid)
        return load_model(model_dir, device, precision)

    async def decode(
        self, samples: np.ndarray[Any, np.dtype[np.float32]], *, prompt: str | None = None
    ) -> Decoded:
        """Decode ≤ 30 s of 16 kHz mono float audio in a worker thread (``prompt``, when
        given, replaces the endpoint's)."""
        loaded = await self.load()
        budget = token_budget(
            len(samples) / loaded.sample_rate, tokens_per_second=self.settings.tokens_per_second
        )
        cancelled = threading.Event()
        try:
            decoded = await anyio.to_thread.run_sync(
                lambda: loaded.decode(
                    samples,
                    max_new_tokens=budget,
                    prompt=prompt or self.settings.prompt,
                    cancelled=cancelled.is_set,
                ),
                abandon_on_cancel=True,
            )
        except BaseException:
            cancelled.set()  # a decode left running in its thread stops at the next token
            raise
        if decoded.loop_cut:
            self.loops_cut += 1
        self.last_decoded = decoded
        return decoded

    async def transcribe_segment(
        self, pcm: bytes, sample_rate: int, *, prompt: str | None = None
    ) -> SegmentResult:
        """The segmenter's hook: one utterance of mono s16le audio → its text."""
        if sample_rate != ENGINE_FORMAT.sample_rate:
            raise ConfigError(
                f"GLM-ASR takes 16000 Hz audio, got {sample_rate} Hz", endpoint=self.endpoint_id
            )
        decoded = await self.decode(_floats(pcm), prompt=prompt)
        return SegmentResult(text=decoded.text, low_confidence=decoded.loop_cut)


class GLMLocalSTTService(SegmentedSTTService):
    """GLM-ASR in this process, streamed through the segmenter (see the module docstring).

    Args:
        endpoint: a ``glm_local`` endpoint (see :func:`glm_local_endpoint`).
        clock: the clock for latency metrics.
        **options: override ``endpoint.connection.options``.

    Raises:
        MissingDependency: torch or transformers is not installed (extra ``glm-local``).
        ConfigError: a bad option.
    """

    engine: GLMLocalEngine
    supported_options = frozenset({"prompt"})

    def __init__(self, endpoint: STTEndpoint, *, clock: Clock | None = None, **options: Any):
        _check_installed()
        settings = GLMLocalSettings.from_endpoint(endpoint, **options)
        super().__init__(
            endpoint,
            GLMLocalEngine(settings, endpoint_id=endpoint.id),
            vad=settings.vad,
            max_segment_seconds=settings.max_segment_seconds,
            interim_interval=settings.interim_interval,
            clock=clock,
        )
        self.settings = settings

    async def _open(self) -> None:
        await self.engine.load()  # load errors surface at start_streaming, not mid-stream
        await super()._open()

    def _stream_engine(self) -> EngineLike:
        prompt = self.stream_options.prompt
        if prompt is None:
            return self.engine
        return functools.partial(self.engine.transcribe_segment, prompt=prompt)

    def _translate(self, exc: Exception) -> STTError:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            return StreamingFailed(
                f"GLM-ASR ran out of memory ({exc}); use a smaller dtype or a bigger host",
                endpoint_id=self.endpoint.id,
            )
        return super()._translate(exc)

    async def _transcribe(self, data: bytes, fmt: AudioFormat) -> Transcript:
        """Batch: ≤ 30 s windows cut at their quietest point, decoded in order, joined."""
        await self.engine.load()
        converter = AudioConverter(fmt, ENGINE_FORMAT)
        pcm = converter.convert(data) + converter.flush()
        rate = ENGINE_FORMAT.sample_rate
        samples = _floats(pcm)
        results: list[STTResult] = []
        for start, end in _windows(pcm, round(self.settings.max_segment_seconds * rate)):
            sent_at = self.clock.now()
            decoded = await self.engine.decode(samples[start:end])
            result = STTResult(
                transcript=decoded.text,
                is_final=True,
                is_end_of_utterance=end == len(samples),
                confidence=LOW_CONFIDENCE if decoded.loop_cut else None,
                start=start / rate,
                duration=(end - start) / rate,
                latency=self.clock.now() - sent_at,  # each window's own decode time
            )
            results.append(result)
        return Transcript(tuple(results), duration=len(samples) / rate)


def _floats(pcm: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return pcm16_to_float(np.frombuffer(pcm, dtype="<i2"))


def _windows(pcm: bytes, limit: int) -> list[tuple[int, int]]:
    """``[start, end)`` sample spans of at most ``limit``, cut at the quietest 100 ms in the
    second half of each window (the segmenter's rule)."""
    n = len(pcm) // 2
    spans: list[tuple[int, int]] = []
    start = 0
    while n - start > limit:
        cut = quietest_cut(pcm, start + limit // 2, start + limit)
        spans.append((start, cut))
        start = cut
    if n > start:
        spans.append((start, n))
    return spans


def memory_estimate_gb(
    precision: Precision | str, params: ParameterCount | str | Path | None = None
) -> float:
    """GB a host needs to run GLM-ASR at ``precision`` (see :func:`estimate_memory_gb`).

    Args:
        precision: ``float32``, ``bfloat16``, ``float16``, ``int8`` (or bf16/fp16/fp32).
        params: a :class:`ParameterCount`, a checkpoint directory to count from, or ``None``
            for GLM-ASR-Nano-2512.
    """
    parsed = parse_precision(precision) if isinstance(precision, str) else precision
    if parsed is None:
        raise ConfigError("memory_estimate_gb needs a concrete dtype, not 'auto'", field="dtype")
    if params is None:
        params = NANO_2512
    elif not isinstance(params, ParameterCount):
        params = ParameterCount.from_safetensors(params)
    return estimate_memory_gb(params, parsed)


def _resolve_auto_precision(device: str, precision: Precision | None) -> Precision:
    if precision is not None:
        return precision
    if device == "auto" and _installed("torch"):
        try:
            torch, _ = import_glm()
            device = select_device("auto", torch)
            cuda_bf16 = device.startswith("cuda") and bool(torch.cuda.is_bf16_supported())
            return select_precision(device, None, cuda_bf16=cuda_bf16)
        except MissingDependency:
            pass
    if device.startswith("cuda") or device == "mps":
        return select_precision(device, None)
    return select_precision("cpu", None)


def glm_local_endpoint(
    model_dir: str | Path | None = None,
    *,
    model: str | None = None,
    id: str = "glm-local",
    device: str = "auto",
    dtype: str = "auto",
    **fields: Any,
) -> STTEndpoint:
    """An endpoint for in-process GLM-ASR whose ``memory_gb`` is computed, not guessed.

    The parameter count comes from the checkpoint's safetensors header when ``model_dir``
    holds one (else GLM-ASR-Nano-2512's 2.14 B), the precision from ``dtype`` (``auto``
    resolves as the adapter will on this host: torch is imported to look for a GPU), so
    the router can skip the endpoint on a host with too little memory.

    Args:
        model_dir: checkpoint directory; or give ``model``, a repo id in the HF cache.
        id: the endpoint id.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: ``auto``, ``bfloat16``, ``float16``, ``float32`` or ``int8``.
        **fields: other :class:`STTEndpoint` fields; ``options`` (a dict) adds adapter options.

    Raises:
        ConfigError: a bad dtype or device name.
    """
    options: dict[str, Any] = dict(fields.pop("options", None) or {})
    if model_dir is not None:
        options["model_dir"] = str(model_dir)
    elif model is not None:
        options["model"] = model
    options["device"] = device
    options["dtype"] = dtype
    precision = parse_precision(dtype, endpoint=id)
    params = NANO_2512
    root = None if model_dir is None else Path(model_dir).expanduser()
    if root is not None and any(
        (root / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")
    ):
        params = ParameterCount.from_safetensors(root)
    defaults: dict[str, Any] = {
        "id": id,
        "connection": ConnectionConfig(options=options),
        "memory_gb": estimate_memory_gb(params, _resolve_auto_precision(device, precision)),
    }
    defaults.update(fields)
    endpoint = builtin_endpoint(Provider.GLM_LOCAL, **defaults)
    GLMLocalSettings.from_endpoint(endpoint)  # fail now on a bad option, not at first use
    return endpoint
