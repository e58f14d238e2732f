"""Transcribe audio files in one call, routed the way ``sttrouter transcribe`` routes them.

:func:`transcribe_file` is for scripts: it reads a file, opens a routed session over the
endpoints of a registry TOML file (or, without one, the built-in offline engine), streams the
file through it with failover, and returns the :class:`~sttrouter.Transcript`::

    from sttrouter import transcribe_file

    print(transcribe_file("examples/audio/water_16k.wav").text)
    print(transcribe_file("call.wav", config="examples/endpoints.toml", language="en").text)

It runs its own event loop, so call it from synchronous code; async code builds a
:class:`~sttrouter.RoutingContext` once and streams through ``context.session(...)``.

The pieces below it (:func:`routing_context`, :func:`host_session`, :func:`stream_file`) are
what the command line uses too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from sttrouter.audio import AudioFormat, read_audio
from sttrouter.context import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import NoEndpointAvailable
from sttrouter.events import EventListener
from sttrouter.options import StreamOptions
from sttrouter.panel.device import Conditions, host_conditions
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.results import STTResult, Transcript
from sttrouter.service import stream_transcribe
from sttrouter.session import RoutedSession, SessionConfig

__all__ = [
    "FILE_SESSION_CONFIG",
    "host_session",
    "routing_context",
    "stream_file",
    "transcribe_file",
]

ConfigPath = str | os.PathLike[str]

FILE_SESSION_CONFIG = SessionConfig(connect_timeout=30.0, stall_timeout=20.0, finish_timeout=60.0)
"""Session settings for files streamed as fast as the engine accepts them: an in-process model
may take many seconds to load, and an engine fed faster than real time on a busy machine may
take a while to answer, which on a live stream would be a stall."""


def routing_context(
    config: ConfigPath | None, *, on_event: EventListener | None = None
) -> RoutingContext:
    """A context over the registry TOML file ``config``, or, when it is ``None``, over the
    built-in offline engine (pocketsphinx) alone; its sessions use :data:`FILE_SESSION_CONFIG`."""
    if config is not None:
        return RoutingContext.from_toml(
            config, session_config=FILE_SESSION_CONFIG, on_event=on_event
        )
    from sttrouter.providers.offline import offline_endpoint

    return RoutingContext(
        EndpointRegistry([offline_endpoint()]),
        session_config=FILE_SESSION_CONFIG,
        on_event=on_event,
    )


def host_session(
    context: RoutingContext,
    *,
    language: str | None = None,
    conditions: Conditions | None = None,
    chain: Sequence[STTEndpoint | str] | None = None,
    on_event: EventListener | None = None,
) -> RoutedSession:
    """A routed session for an engine run from this process.

    Without ``chain`` the router decides for ``conditions`` (default: this host's tier and
    memory, network connected); when it can choose nothing the error names every endpoint and
    why it was left out, instead of a failure at the first audio.

    Raises:
        NoEndpointAvailable: no endpoint of the registry can serve ``language`` here.
    """
    if chain is None:
        conditions = conditions or host_conditions()
        decision = context.decide(conditions, language)
        if not decision.chain:
            reasons = "; ".join(
                f"{eid}: {decision.describe(eid) or reason.value}"
                for eid, reason in decision.skipped().items()
            )
            what = f"language {language!r}" if language else "this request"
            raise NoEndpointAvailable(
                f"no endpoint can serve {what} "
                f"(tier {conditions.tier.value}, network {conditions.network.value}): "
                f"{reasons or 'the registry is empty'}"
            )
    return context.session(conditions, language=language, chain=chain, on_event=on_event)


async def stream_file(
    session: RoutedSession,
    data: bytes,
    fmt: AudioFormat,
    *,
    language: str | None = None,
    chunk_seconds: float = 0.1,
    on_result: Callable[[STTResult], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Transcript:
    """Stream a clip through ``session`` as fast as it accepts audio.

    Args:
        language: passed to the engine as ``StreamOptions(language=...)``.
        on_result: every result, interim and final, on the session's timeline.
        on_progress: seconds of the clip transcribed so far (the end of the latest result),
            each time it grows.
    """
    duration = fmt.seconds(len(data))
    done = 0.0

    def seen(result: STTResult) -> None:
        nonlocal done
        if on_progress is not None and result.end > done:
            done = min(result.end, duration)
            on_progress(done)
        if on_result is not None:
            on_result(result)

    transcript = await stream_transcribe(
        session,
        data,
        fmt,
        chunk_seconds=chunk_seconds,
        on_result=seen,
        options=StreamOptions(language=language) if language else None,
    )
    if on_progress is not None and done < duration:
        on_progress(duration)
    return transcript


def transcribe_file(
    path: str | Path, *, config: ConfigPath | None = None, language: str | None = None
) -> Transcript:
    """Transcribe an audio file (WAV, FLAC, OGG, MP3) and return its transcript.

    Args:
        path: the audio file.
        config: an endpoint registry TOML file: the router picks the chain for this host and
            the session fails over along it. ``None`` uses the built-in offline engine.
        language: BCP-47 code spoken in the file; the router keeps only endpoints that
            transcribe it, and each engine is told (``StreamOptions(language=...)``).

    Raises:
        AudioFormatError: the file is missing, a directory, empty or not audio.
        ConfigError: ``config`` is not a valid registry.
        NoEndpointAvailable: no endpoint could serve the file, with the reasons.
        STTError: the stream failed on every endpoint of the chain.
    """
    data, fmt = read_audio(path)
    context = routing_context(config)
    # the offline engine alone runs on any device: no need to measure this one
    conditions = Conditions() if config is None else None

    async def run() -> Transcript:
        session = host_session(context, language=language, conditions=conditions)
        return await stream_file(session, data, fmt, language=language)

    return anyio.run(run)
