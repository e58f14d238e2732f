"""``sttrouter transcribe``: transcribe audio files through a routed session, with failover.

Examples::

    sttrouter transcribe examples/audio/hello_16k.wav
    sttrouter transcribe a.wav b.flac --language en
    sttrouter transcribe meeting.flac --partials
    sttrouter transcribe call.wav --config examples/endpoints.toml -v --json -
    sttrouter transcribe call.wav --config endpoints.toml --endpoint deepgram --json out.json
    sttrouter transcribe call.wav --endpoint glm-local --model-dir ~/models/GLM-ASR-Nano-2512

With no ``--config`` (and no ``--endpoint``) the built-in offline engine (pocketsphinx)
transcribes, and a note on stderr says so. With ``--config`` the router picks the chain for this
host from the file's endpoints (tier and memory measured, network assumed up, endpoints whose
API key is not set left out) and the session fails over along it: an endpoint that cannot load,
connect or keep up hands the stream to the next one without losing audio. ``-v`` prints every
route event (selected, failed, failover) on stderr. ``--endpoint`` pins one endpoint instead.

Exit status: 0 when every file was transcribed, 1 when any failed (each failure is named on
stderr, the other files are still transcribed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from sttrouter.audio import AudioFormat, read_audio
from sttrouter.cli._progress import AudioBar, audio_bar, wants_bar
from sttrouter.context import RoutingContext
from sttrouter.convenience import host_session, routing_context, stream_file
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import AudioFormatError, ConfigError, STTError
from sttrouter.events import RouteEvent
from sttrouter.panel.device import Conditions
from sttrouter.results import STTResult, Transcript
from sttrouter.session import RoutedSession

__all__ = ["OFFLINE_NOTE", "pinned_endpoint", "register", "run"]

OFFLINE_NOTE = "no endpoint configured; using the built-in offline engine (pocketsphinx)"
LONG_FILE_SECONDS = 10.0
"""Files at least this long get a progress bar when stderr is a terminal."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files (WAV, FLAC, OGG, MP3), routed with failover",
        description="Transcribe audio files through a routed session: with --config the "
        "router picks the chain for this host and the stream fails over along it; without "
        "--config the built-in offline engine (pocketsphinx) is used. Exit status 1 when any "
        "file failed.",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="audio files: WAV (16-bit or float), FLAC, OGG, MP3",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="OUT",
        help="write every result (text, times, words, confidence), the route events and the "
        "metrics as JSON to OUT, or to stdout with '-' or no OUT (an object for one file, a "
        "list for several)",
    )
    p.add_argument(
        "--language",
        metavar="CODE",
        help="BCP-47 language spoken in the files (e.g. en, de, zh): only endpoints that "
        "transcribe it are routed to, and the engine is told",
    )
    p.add_argument(
        "--partials",
        action="store_true",
        help="print interim results to stderr as they arrive",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print route events (endpoint selected, failed, failover) to stderr",
    )
    p.add_argument("--config", metavar="FILE", help="endpoint registry TOML to route over")
    p.add_argument(
        "--endpoint",
        metavar="ID",
        help="use only this endpoint of --config (or of the built-in registry); no failover",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="GLM-ASR checkpoint directory: transcribe in-process with --endpoint glm-local "
        "(implied), needs the glm-local extra",
    )
    p.set_defaults(func=run)


def pinned_endpoint(args: argparse.Namespace) -> STTEndpoint | None:
    """The one endpoint ``--endpoint`` or ``--model-dir`` pins, or ``None`` to route.

    Raises:
        ConfigError: the id is not registered, or ``--model-dir`` is combined with another
            endpoint or a config.
    """
    if getattr(args, "model_dir", None):
        if args.endpoint not in (None, "glm-local") or args.config is not None:
            raise ConfigError(
                "--model-dir runs GLM-ASR in-process; use it with --endpoint glm-local and "
                "without --config",
                field="--model-dir",
            )
        from sttrouter.providers.glm_local import glm_local_endpoint

        return glm_local_endpoint(model_dir=args.model_dir)
    if args.endpoint is None:
        return None
    from sttrouter.panel.registry import EndpointRegistry, default_registry
    from sttrouter.providers.offline import offline_endpoint

    registry = default_registry() if args.config is None else EndpointRegistry.load(args.config)
    endpoint = registry.get(args.endpoint)
    if endpoint is None and args.endpoint == "offline":
        return offline_endpoint()  # the built-in engine, even where a config does not list it
    if endpoint is None:
        known = ", ".join(ep.id for ep in registry) or "none"
        raise ConfigError(
            f"no endpoint {args.endpoint!r}; the registry has: {known}",
            source=registry.source,
            field="--endpoint",
        )
    return endpoint


def run(args: argparse.Namespace) -> int:
    pinned = pinned_endpoint(args)
    notes = [OFFLINE_NOTE] if args.config is None and pinned is None else []
    context = routing_context(args.config, on_event=_show_event if args.verbose else None)
    docs: list[dict[str, Any]] = []
    failed = 0
    for file in args.files:
        try:
            doc = _transcribe_one(context, file, pinned, args, notes)
        except AudioFormatError as exc:
            if len(args.files) == 1:
                raise
            print(f"sttrouter: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except STTError as exc:
            if len(args.files) == 1 or isinstance(exc, ConfigError):
                raise
            print(f"sttrouter: error: {file}: {exc}", file=sys.stderr)
            failed += 1
            continue
        docs.append(doc)
        if args.json != "-":
            if len(args.files) > 1:
                print(f"==> {file} <==")
            print(doc["text"])
        if not doc["text"]:
            print(f"{file}: no speech was recognised", file=sys.stderr)
    if args.json is not None and docs:
        _write_json(docs[0] if len(args.files) == 1 else docs, args.json)
    if failed:
        print(
            f"sttrouter: transcribe: {failed} of {len(args.files)} file(s) failed",
            file=sys.stderr,
        )
        return 1
    return 0


def _transcribe_one(
    context: RoutingContext,
    file: str,
    pinned: STTEndpoint | None,
    args: argparse.Namespace,
    notes: list[str],
) -> dict[str, Any]:
    data, fmt = read_audio(file)  # a missing or bad file fails before any engine loads
    while notes:  # said once, before the first file is transcribed
        print(notes.pop(), file=sys.stderr)
    routed = args.config is not None and pinned is None
    session = host_session(
        context,
        language=args.language,
        # only a routed decision needs this host measured
        conditions=None if routed else Conditions(),
        chain=None if pinned is None else [pinned],
    )
    results: list[STTResult] = []

    def show(result: STTResult) -> None:
        if result.is_final or args.partials:
            results.append(result)
        if args.partials:
            kind = "final" if result.is_final else "partial"
            print(
                f"[{result.start:7.2f}s {result.end:7.2f}s] {kind}: {result.transcript}",
                file=sys.stderr,
                flush=True,
            )

    with _bar(file, fmt.seconds(len(data)), args) as update:
        transcript = anyio.run(_stream, session, data, fmt, args, show, update)
    return {
        "file": str(Path(file)),
        "endpoint": session.endpoint.id,
        "endpoints": list(transcript.endpoint_ids),
        "text": transcript.text,
        "duration": transcript.duration,
        "language": transcript.language,
        "results": [r.to_dict() for r in results],
        "route_events": [e.to_dict() for e in session.history],
        "metrics": session.metrics.to_dict(),
    }


async def _stream(
    session: RoutedSession,
    data: bytes,
    fmt: AudioFormat,
    args: argparse.Namespace,
    show: Callable[[STTResult], None],
    update: AudioBar | None,
) -> Transcript:
    return await stream_file(
        session,
        data,
        fmt,
        language=args.language,
        chunk_seconds=0.02 if args.partials else 0.1,
        on_result=show,
        on_progress=update,
    )


@contextlib.contextmanager
def _bar(file: str, seconds: float, args: argparse.Namespace) -> Iterator[AudioBar | None]:
    if args.partials or seconds < LONG_FILE_SECONDS or not wants_bar():
        yield None
        return
    with audio_bar(Path(file).name, seconds) as bar:
        yield bar.update


def _show_event(event: RouteEvent) -> None:
    print(f"route: {event}", file=sys.stderr, flush=True)


def _write_json(doc: object, out: str) -> None:
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if out == "-":
        print(text)
        return
    Path(out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
