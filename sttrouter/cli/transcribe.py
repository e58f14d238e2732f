"""``sttrouter transcribe``: transcribe an audio file with one engine.

Examples::

    sttrouter transcribe examples/audio/hello_16k.wav
    sttrouter transcribe meeting.flac --partials
    sttrouter transcribe call.wav --json --config endpoints.toml --endpoint deepgram
    sttrouter transcribe call.wav --endpoint glm-local --model-dir ~/models/GLM-ASR-Nano-2512

With no ``--config`` (and no ``--endpoint``) the built-in offline engine (pocketsphinx)
transcribes, and a note on stderr says so. With ``--config`` the endpoint named by
``--endpoint`` is used, or else the first endpoint of the file whose API key is set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from sttrouter.audio import AudioFormat, read_audio
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.results import STTResult, Transcript

__all__ = ["choose_endpoint", "register", "run"]

OFFLINE_NOTE = "no endpoint configured; using the built-in offline engine (pocketsphinx)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe an audio file (WAV, FLAC, OGG, MP3)",
        description="Transcribe an audio file with one engine. Without --config the built-in "
        "offline engine (pocketsphinx) is used.",
    )
    p.add_argument("file", metavar="FILE", help="audio file: WAV (16-bit or float), FLAC, OGG, MP3")
    p.add_argument(
        "--json",
        action="store_true",
        help="print every result (text, times, words, confidence) and metrics as one JSON document",
    )
    p.add_argument(
        "--partials",
        action="store_true",
        help="stream the file and print interim results to stderr as they arrive",
    )
    p.add_argument("--config", metavar="FILE", help="endpoint registry TOML")
    p.add_argument(
        "--endpoint",
        metavar="ID",
        help="endpoint id to use (default: the first endpoint of --config whose key is set)",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="GLM-ASR checkpoint directory: transcribe in-process with --endpoint glm-local "
        "(implied), needs the glm-local extra",
    )
    p.set_defaults(func=run)


def glm_local_from_args(args: argparse.Namespace) -> STTEndpoint:
    """The in-process GLM-ASR endpoint for ``--model-dir`` (with ``--endpoint glm-local``)."""
    if args.endpoint not in (None, "glm-local") or args.config is not None:
        raise ConfigError(
            "--model-dir runs GLM-ASR in-process; use it with --endpoint glm-local and "
            "without --config",
            field="--model-dir",
        )
    from sttrouter.providers.glm_local import glm_local_endpoint

    return glm_local_endpoint(model_dir=args.model_dir)


def choose_endpoint(config: str | None, endpoint_id: str | None) -> tuple[STTEndpoint, str | None]:
    """The endpoint to transcribe with, and a note for stderr when it is a fallback.

    Raises:
        ConfigError: ``endpoint_id`` is not in the registry.
    """
    from sttrouter.providers.offline import offline_endpoint

    if config is None and endpoint_id in (None, "offline"):
        return offline_endpoint(), OFFLINE_NOTE if endpoint_id is None else None
    from sttrouter.panel.registry import EndpointRegistry, default_registry

    registry = default_registry() if config is None else EndpointRegistry.load(config)
    if endpoint_id is not None:
        endpoint = registry.get(endpoint_id)
        if endpoint is None:
            if endpoint_id == "offline":
                return offline_endpoint(), None
            known = ", ".join(ep.id for ep in registry) or "none"
            raise ConfigError(
                f"no endpoint {endpoint_id!r}; the registry has: {known}",
                source=registry.source,
                field="--endpoint",
            )
        return endpoint, None
    for endpoint in registry:
        if endpoint.connection.has_api_key():
            return endpoint, None
    return offline_endpoint(), (
        f"no usable endpoint in {config} (no API key set); "
        "using the built-in offline engine (pocketsphinx)"
    )


def run(args: argparse.Namespace) -> int:
    data, fmt = read_audio(args.file)  # a missing or bad file fails before any engine loads
    if getattr(args, "model_dir", None):
        endpoint, note = glm_local_from_args(args), None
    else:
        endpoint, note = choose_endpoint(args.config, args.endpoint)
    if note:
        print(note, file=sys.stderr)
    transcript, results, metrics = anyio.run(_transcribe, endpoint, data, fmt, args.partials)
    if args.json:
        doc: dict[str, Any] = {
            "file": str(Path(args.file)),
            "endpoint": endpoint.id,
            "text": transcript.text,
            "duration": transcript.duration,
            "language": transcript.language,
            "results": [r.to_dict() for r in results],
            "metrics": metrics,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(transcript.text)
    if not transcript.text:
        print("no speech was recognised", file=sys.stderr)
    return 0


async def _transcribe(
    endpoint: STTEndpoint, data: bytes, fmt: AudioFormat, partials: bool
) -> tuple[Transcript, list[STTResult], dict[str, Any]]:
    from sttrouter.providers import create_service
    from sttrouter.service import stream_transcribe

    service = create_service(endpoint)
    if not partials:
        transcript = await service.transcribe(data, fmt)
        return transcript, list(transcript.results), service.metrics.to_dict()
    results: list[STTResult] = []

    def show(result: STTResult) -> None:
        results.append(result)
        kind = "final" if result.is_final else "partial"
        print(
            f"[{result.start:7.2f}s {result.end:7.2f}s] {kind}: {result.transcript}",
            file=sys.stderr,
            flush=True,
        )

    transcript = await stream_transcribe(service, data, fmt, chunk_seconds=0.02, on_result=show)
    return transcript, results, service.metrics.to_dict()
