"""sttrouter as a Pipecat STT service (``pip install "sttrouter[pipecat]"``, pipecat-ai 1.14).

Put it where a pipeline has its STT service — instead of one provider's service, or instead of a
``ServiceSwitcher`` of several::

    from sttrouter import RoutingContext
    from sttrouter.integrations.pipecat import RoutedSTTService

    context = RoutingContext.from_toml("endpoints.toml")        # once per process
    pipeline = Pipeline([transport.input(), RoutedSTTService(context, language="en"), ...])

Each pipeline run (``StartFrame`` to ``EndFrame``/``CancelFrame``) is one routed session of the
context. When the serving engine fails mid-utterance the session replays the audio that engine
had not finalised into the next one, so no word is lost; a ``ServiceSwitcher`` replays nothing
across a switch.

What the pipeline sees:

* ``InterimTranscriptionFrame`` and ``TranscriptionFrame`` with ``user_id`` (from
  ``UserAudioRawFrame``), the ISO ``timestamp``, ``language`` and the sttrouter result as
  ``result``; each frame's ``metadata`` holds ``endpoint_id`` (the endpoint that produced it)
  and ``start``/``end`` (seconds on the stream's audio timeline).
* ``VADUserStoppedSpeakingFrame`` asks the serving engine for the utterance's final
  (``finalize()``); the next ``TranscriptionFrame`` is marked ``finalized``.
  ``VADUserStartedSpeakingFrame`` resets the base class's latency tracking.
* ``EndFrame`` waits for the last final; ``CancelFrame`` closes at once.
* Usage as ``STTUsageMetricsData`` (audio seconds) at each final, as Pipecat's own services do.
* Errors through ``push_error`` with an ``ErrorCategory``: only running out of endpoints
  (``NoEndpointAvailable``, whose message names the span not transcribed) makes the service
  unusable (``force_treat_as_permanent``), so the pipeline worker applies its
  ``ProcessorUnusablePolicy``; other errors are non-fatal and the next audio opens a new
  session. The deprecated ``fatal`` flag is never set.
* Route events (selected, failed, failover, ...) are logged and passed to the
  ``on_route_event`` event handler; an endpoint failure the session survived is not an error of
  the pipeline.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from sttrouter.audio import AudioFormat
from sttrouter.context import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import CallerError, MissingDependency, NoEndpointAvailable, STTError
from sttrouter.events import RouteEvent
from sttrouter.integrations import SessionSource, http_status, open_session
from sttrouter.options import StreamOptions
from sttrouter.panel.device import Conditions
from sttrouter.results import STTResult
from sttrouter.service import STTService
from sttrouter.session import RoutedSession

try:
    with warnings.catch_warnings():
        # pipecat-ai 1.14 imports the standard library's deprecated ``audioop`` (Python < 3.13)
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        import pipecat.audio.utils  # noqa: F401
    from loguru import logger
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterimTranscriptionFrame,
        StartFrame,
        TranscriptionFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.settings import STTSettings
    from pipecat.services.stt_service import STTService as PipecatSTTService
    from pipecat.transcriptions.language import Language
    from pipecat.utils.errors import ErrorCategory, classify_http_status_code
    from pipecat.utils.time import time_now_iso8601
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("pipecat-ai", "pipecat") from exc

__all__ = ["RoutedSTTService", "error_category"]


def error_category(error: STTError) -> ErrorCategory:
    """Pipecat's category for ``error``. A caller error is the application's, never a
    permanent fault of the service; running out of endpoints is a connectivity failure."""
    if isinstance(error, CallerError):
        return ErrorCategory.APPLICATION
    status = http_status(error)
    if status is not None:
        return classify_http_status_code(status)
    return ErrorCategory.CONNECTIVITY if error.retryable else ErrorCategory.SERVER


class RoutedSTTService(PipecatSTTService):
    """A Pipecat ``STTService`` backed by a routing context.

    Args:
        source: the :class:`~sttrouter.RoutingContext` (one routed session per pipeline run),
            or a factory of fresh :class:`~sttrouter.STTService` instances.
        conditions: the device/network conditions the router decides for.
        chain: a fixed chain (endpoints or registered ids) instead of a decision.
        language: the language spoken (BCP-47), for the router and the engines.
        ttfs_p99_latency: speech end to final transcript, for Pipecat's turn strategies
            (default 1 s; set it from your endpoints' measured latency).
        **kwargs: passed to Pipecat's ``STTService`` (``audio_passthrough``, ``sample_rate``...).
    """

    def __init__(
        self,
        source: RoutingContext | SessionSource,
        *,
        conditions: Conditions | None = None,
        chain: Sequence[STTEndpoint | str] | None = None,
        language: str | None = None,
        ttfs_p99_latency: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("settings", STTSettings(model="sttrouter", language=language))
        super().__init__(ttfs_p99_latency=ttfs_p99_latency, **kwargs)
        self._source = source
        self._conditions = conditions
        self._chain = chain
        self._language = language
        self._service: STTService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finalize_asked = False
        self._reported: STTError | None = None
        self._register_event_handler("on_route_event")

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._open()

    async def stop(self, frame: EndFrame) -> None:
        service, self._service = self._service, None
        if service is not None and service.is_streaming:
            try:
                await service.stop_streaming()
            except STTError as exc:
                await self._report(exc)
        await self._drain()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        service, self._service = self._service, None
        if service is not None:
            await service.cancel_streaming()
        await self._drain(cancel=True)
        await super().cancel(frame)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        service = self._service or await self._open()
        if service is not None:
            try:
                await service.send_audio(audio)
            except STTError as exc:
                await self._fail(service, exc)
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self._service is not None:
            self.request_finalize()
            self._finalize_asked = True
            await self._service.finalize()

    # -- the routed session ---------------------------------------------------------------
    async def _open(self) -> STTService | None:
        service = open_session(
            self._source, language=self._language, conditions=self._conditions, chain=self._chain
        )
        fmt = AudioFormat(sample_rate=self.sample_rate or 16000, channels=1)
        try:
            results = await service.start_streaming(fmt, StreamOptions(language=self._language))
        except STTError as exc:
            await self._report(exc)
            return None
        self._service = service
        self._tasks.append(self.create_task(self._read(service, results), name="sttrouter_results"))
        if isinstance(service, RoutedSession):
            events = service.events()
            self._tasks.append(
                self.create_task(self._route_events(events), name="sttrouter_events")
            )
        return service

    async def _read(self, service: STTService, results: AsyncIterator[STTResult]) -> None:
        try:
            async for r in results:
                await self._push_result(r)
        except STTError as exc:
            await self._fail(service, exc)

    async def _route_events(self, events: AsyncIterator[RouteEvent]) -> None:
        async for event in events:
            logger.info(f"{self}: route {event}")
            await self._call_event_handler("on_route_event", event)

    async def _push_result(self, r: STTResult) -> None:
        if not r.transcript:
            return
        language = _language(r.language or self._language)
        if r.is_final:
            if self._finalize_asked:
                self._finalize_asked = False
                self.confirm_finalize()
            await self.emit_stt_usage_metrics()
            frame: Frame = TranscriptionFrame(
                r.transcript, self._user_id, time_now_iso8601(), language, result=r
            )
        else:
            frame = InterimTranscriptionFrame(
                r.transcript, self._user_id, time_now_iso8601(), language, result=r
            )
        frame.metadata.update(endpoint_id=r.endpoint_id, start=r.start, end=r.end)
        await self.push_frame(frame)

    async def _fail(self, service: STTService, error: STTError) -> None:
        if self._service is service:
            self._service = None  # the next audio opens a new session, if still usable
        await service.cancel_streaming()
        await self._report(error)

    async def _report(self, error: STTError) -> None:
        if error is self._reported:
            return  # the reader and stop_streaming raise the same failure
        self._reported = error
        await self.push_error(
            f"{self}: {error}",
            exception=error,
            category=error_category(error),
            force_treat_as_permanent=isinstance(error, NoEndpointAvailable),
        )

    async def _drain(self, *, cancel: bool = False) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if cancel:
                await self.cancel_task(task)
            else:
                await task


def _language(code: str | None) -> Language | None:
    if code is None:
        return None
    try:
        return Language(code)
    except ValueError:
        return None
