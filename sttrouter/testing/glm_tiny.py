"""Build a tiny random-weights GLM-ASR checkpoint, fully offline, for tests.

The checkpoint has the real architecture (``GlmAsrForConditionalGeneration``: Whisper-style
encoder with partial RoPE, 4-frame merge, projector, Llama decoder) and the real processor
(``GlmAsrProcessor`` = 128-bin ``WhisperFeatureExtractor`` + a byte-level BPE tokenizer with
GLM's chat tokens + the chat template), shrunk to ≈0.27 M parameters. It is written with
``save_pretrained`` into a directory holding exactly the files a real checkpoint has
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja``, ``processor_config.json``, ``generation_config.json``), so it loads
through the same code path as ``zai-org/GLM-ASR-Nano-2512``::

    from sttrouter.testing.glm_tiny import build_tiny_glm_asr
    from sttrouter.providers.glm_local import glm_local_endpoint

    model_dir = build_tiny_glm_asr(tmp_path / "glm-tiny")
    endpoint = glm_local_endpoint(model_dir=model_dir, device="cpu")

Its text is noise: with the default seed the random decoder emits token 198 (``"\\n"``) over
and over, which is exactly the kind of loop the adapter's repetition guard must cut.

Needs the ``glm-local`` extra (torch, transformers >= 5); building takes well under a second
after the torch import and touches no network.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Final

from sttrouter.errors import MissingDependency
from sttrouter.providers._glm_model import EXTRA, import_glm

__all__ = [
    "TINY_AUDIO_TOKEN_ID",
    "TINY_EOS_TOKEN_IDS",
    "TINY_LOOP_TOKEN_ID",
    "TINY_SPECIAL_TOKENS",
    "build_tiny_glm_asr",
]

TINY_SPECIAL_TOKENS: Final = (
    "<|endoftext|>",
    "<|pad|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
)
"""GLM's chat tokens, added after the 256 byte-level symbols (ids 256..262)."""

TINY_AUDIO_TOKEN_ID: Final = 257
"""Id of ``<|pad|>``, the audio placeholder (it must differ from the text pad id 256)."""

TINY_EOS_TOKEN_IDS: Final = (256, 258)
"""``<|endoftext|>`` and ``<|user|>`` end generation, as the real model's eos list does."""

TINY_LOOP_TOKEN_ID: Final = 198
"""The token (``"\\n"``) the default-seed random decoder repeats."""

CHAT_TEMPLATE: Final = (
    "{%- for m in messages -%}{%- if m.content is string -%}<|{{ m.role }}|>\n{{ m.content }}"
    "{%- else -%}{%- for c in m.content -%}{%- if c.type == 'audio' -%}"
    "<|{{ m.role }}|>\n<|begin_of_audio|><|pad|><|end_of_audio|>"
    "{%- elif c.type == 'text' -%}<|{{ m.role }}|>\n{{ c.text }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)
"""The official prompt shape: ``<|user|>\\n<|begin_of_audio|><|pad|>…<|end_of_audio|>
<|user|>\\n{prompt}<|assistant|>\\n``."""


def _tiny_config(transformers: Any) -> Any:
    return transformers.GlmAsrConfig(
        audio_config={
            "hidden_size": 64,
            "intermediate_size": 256,  # must be 4 x hidden_size: the 4-frame merge
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
            "max_position_embeddings": 1500,
        },
        text_config={
            "vocab_size": 256 + len(TINY_SPECIAL_TOKENS),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 2048,
            "eos_token_id": list(TINY_EOS_TOKEN_IDS),
            "pad_token_id": TINY_EOS_TOKEN_IDS[0],
            "bos_token_id": None,
        },
        audio_token_id=TINY_AUDIO_TOKEN_ID,
    )


def _tiny_processor(transformers: Any, tokenizers: Any) -> Any:
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    core = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[])
    )
    core.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = tokenizers.decoders.ByteLevel()
    core.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    features = transformers.WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    return transformers.GlmAsrProcessor(
        feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_tiny_glm_asr(directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weights GLM-ASR checkpoint and processor into ``directory``.

    Args:
        directory: where to save (created if missing; existing files are overwritten).
        seed: seeds the random weights; the global torch RNG is left as it was.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        MissingDependency: torch, tokenizers or transformers >= 5 is not installed.
    """
    torch, transformers = import_glm()
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - a dependency of transformers
        raise MissingDependency("tokenizers", EXTRA) from exc

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.GlmAsrForConditionalGeneration(_tiny_config(transformers)).eval()
    processor = _tiny_processor(transformers, tokenizers)
    # save_pretrained draws a progress bar on stderr; keep test output clean.
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out
