"""sttrouter as a LiveKit Agents STT plugin (``pip install "sttrouter[livekit]"``, 1.8.x).

Use it where an agent takes an STT — instead of one provider's plugin, or instead of
``stt.FallbackAdapter``::

    from sttrouter import RoutingContext
    from sttrouter.integrations.livekit import STT

    context = RoutingContext.from_toml("endpoints.toml")       # once per process
    session = AgentSession(stt=STT(context, language="en"), ...)

Every stream the agent opens becomes one routed session of the context. When the serving engine
fails mid-utterance, the routed session replays the audio that engine had not finalised into
the next one, so every word is transcribed once; LiveKit's ``FallbackAdapter`` drops that audio.

What LiveKit sees:

* ``SpeechEvent``\\ s: ``START_OF_SPEECH`` before the first words of an utterance,
  ``INTERIM_TRANSCRIPT``, ``FINAL_TRANSCRIPT``, ``END_OF_SPEECH`` after an utterance's last final,
  and ``RECOGNITION_USAGE`` (audio seconds) after each utterance and at the end, so the
  ``metrics_collected`` event reports usage as for any plugin. Times are seconds on the stream's
  timeline (``start_time_offset`` included); each ``SpeechData.metadata["endpoint_id"]`` names
  the endpoint that produced it.
* Frames at any sample rate and channel count (converted once, inside the session); a flush
  asks the serving engine for the current utterance's final (``finalize()``); ``end_input``
  waits for the last final. A single-engine source must connect within ``conn_options.timeout``;
  a routed session applies its own ``connect_timeout`` to each endpoint of its chain.
* ``language`` goes to the router and to the engine as the stream's ``StreamOptions``.
* Errors: an error that reaches the agent is an ``APIError``. Running out of endpoints is an
  ``APIConnectionError`` (not retryable: the routed session already walked its chain and retry
  policy) whose ``body`` holds ``uncovered`` (the span of audio not transcribed) and
  ``attempts``; an authentication, quota, rate-limit or caller error of a single-engine source
  is an ``APIStatusError`` with the matching status (401, 402, 429, 400).
* Route events (selected, failed, failover, switched back, ...) are logged on the
  ``livekit.plugins.sttrouter`` logger and emitted as the STT's ``"route_event"`` event; an
  endpoint failure that the session survived is also emitted as a recoverable ``"error"`` (the
  agent session ignores those, as it does for retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from sttrouter.audio import AudioFormat
from sttrouter.context import RoutingContext
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConnectTimeout, MissingDependency, NoEndpointAvailable, STTError
from sttrouter.events import RouteEvent, RouteEventKind
from sttrouter.integrations import SessionSource, http_status, open_session
from sttrouter.options import StreamOptions
from sttrouter.panel.device import Conditions
from sttrouter.results import STTResult
from sttrouter.service import STTService
from sttrouter.session import RoutedSession

try:
    from livekit import rtc
    from livekit.agents import (
        DEFAULT_API_CONNECT_OPTIONS,
        NOT_GIVEN,
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APIStatusError,
        NotGivenOr,
        stt,
        utils,
    )
    from livekit.agents.language import LanguageCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("livekit-agents", "livekit") from exc

__all__ = ["STT", "RecognizeStream", "api_error"]

log = logging.getLogger("livekit.plugins.sttrouter")


def api_error(error: STTError) -> APIError:
    """The LiveKit error that says what ``error`` says (the original is its ``__cause__``
    once raised ``from`` it)."""
    if isinstance(error, NoEndpointAvailable):
        out = APIConnectionError(str(error), retryable=False)
        out.body = {"uncovered": error.uncovered, "attempts": list(error.attempts)}
        return out
    status = http_status(error)
    if status is not None:
        return APIStatusError(str(error), status_code=status, retryable=error.retryable)
    return APIConnectionError(str(error), retryable=error.retryable)


class STT(stt.STT[Literal["route_event"]]):
    """A LiveKit ``stt.STT`` backed by a routing context.

    Args:
        source: the :class:`~sttrouter.RoutingContext` (one routed session per stream), or a
            factory of fresh :class:`~sttrouter.STTService` instances.
        conditions: the device/network conditions the router decides for.
        chain: a fixed chain (endpoints or registered ids) instead of a decision.
        language: default language of every stream (a stream's own ``language`` wins).
    """

    def __init__(
        self,
        source: RoutingContext | SessionSource,
        *,
        conditions: Conditions | None = None,
        chain: Sequence[STTEndpoint | str] | None = None,
        language: str | None = None,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, manual_flush=True
            )
        )
        self._source = source
        self._conditions = conditions
        self._chain = chain
        self._language = language
        self._serving: str | None = None

    @property
    def model(self) -> str:
        """The endpoint that served the latest result (``"routed"`` before any)."""
        return self._serving or "routed"

    @property
    def provider(self) -> str:
        return "sttrouter"

    def open_service(self, language: str | None) -> STTService:
        """The service for one stream or clip (a routed session of the context)."""
        return open_session(
            self._source, language=language, conditions=self._conditions, chain=self._chain
        )

    def language_for(self, language: NotGivenOr[str]) -> str | None:
        return language if isinstance(language, str) else self._language

    def served(self, endpoint_id: str | None) -> None:
        if endpoint_id:
            self._serving = endpoint_id

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        lang = self.language_for(language)
        service = self.open_service(lang)
        fmt = AudioFormat(sample_rate=frame.sample_rate, channels=frame.num_channels)
        try:
            transcript = await service.transcribe(bytes(frame.data), fmt)
        except STTError as exc:
            raise api_error(exc) from exc
        ids = transcript.endpoint_ids
        self.served(ids[-1] if ids else None)
        results = transcript.results
        confidences = [r.confidence for r in results if r.confidence is not None]
        data = stt.SpeechData(
            language=LanguageCode(transcript.language or lang or ""),
            text=transcript.text,
            start_time=results[0].start if results else 0.0,
            end_time=results[-1].end if results else transcript.duration,
            confidence=min(confidences) if confidences else 0.0,
            metadata={"endpoint_ids": list(ids)},
        )
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex,
            alternatives=[data],
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> RecognizeStream:
        return RecognizeStream(
            stt=self, language=self.language_for(language), conn_options=conn_options
        )


class RecognizeStream(stt.RecognizeStream):
    """One agent stream over one routed session (a fresh session for each LiveKit retry).

    A feeder turns the input channel into ``send_audio``/``finalize`` calls while a reader
    turns the session's results into speech events; whichever fails first ends both.
    """

    def __init__(self, *, stt: STT, language: str | None, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._routed = stt
        self._language = language
        self._request_id = uuid.uuid4().hex
        self._speaking = False
        self._pushed = 0.0
        self._reported = 0.0
        self._service: STTService | None = None
        self._failure: STTError | None = None
        self._failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self) -> None:
        self._service, self._failure, self._failed = None, None, asyncio.Event()
        try:
            await self._execute()
        except STTError as exc:
            raise api_error(exc) from exc
        finally:
            await self._close_service()
            self._report_usage()

    async def _execute(self) -> None:
        feed = asyncio.ensure_future(self._feed())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({feed, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not feed.done():
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed
        if self._failure is not None:
            raise self._failure
        feed.result()
        service = self._service
        if service is not None and service.is_streaming:
            await service.stop_streaming()
            for task in self._tasks:
                await task  # results and route events end with the stream
        if self._failure is not None:
            raise self._failure

    async def _feed(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                service = self._service or await self._open(item)
                self._pushed += item.samples_per_channel / item.sample_rate
                await service.send_audio(bytes(item.data))
            elif self._service is not None:
                await self._service.finalize()

    async def _open(self, first: rtc.AudioFrame) -> STTService:
        service = self._routed.open_service(self._language)
        fmt = AudioFormat(sample_rate=first.sample_rate, channels=first.num_channels)
        opening = service.start_streaming(fmt, StreamOptions(language=self._language))
        if isinstance(service, RoutedSession):
            results = await opening  # its own connect deadline holds per endpoint of the chain
        else:
            try:
                results = await asyncio.wait_for(opening, self._conn_options.timeout)
            except TimeoutError as exc:
                raise ConnectTimeout(
                    f"did not connect within {self._conn_options.timeout:g}s",
                    endpoint_id=service.endpoint.id,
                ) from exc
        self._service = service
        self._tasks.append(asyncio.ensure_future(self._read(results)))
        if isinstance(service, RoutedSession):
            self._tasks.append(asyncio.ensure_future(self._route_events(service.events())))
        return service

    async def _read(self, results: AsyncIterator[STTResult]) -> None:
        try:
            async for r in results:
                self._on_result(r)
        except STTError as exc:
            self._failure = exc
            self._failed.set()

    async def _route_events(self, events: AsyncIterator[RouteEvent]) -> None:
        async for event in events:
            self._on_route_event(event)

    async def _close_service(self) -> None:
        if self._service is not None and self._service.is_streaming:
            await self._service.cancel_streaming()
        for task in self._tasks:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- events ---------------------------------------------------------------------------
    def _send(self, kind: stt.SpeechEventType, data: stt.SpeechData | None = None) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=kind, request_id=self._request_id, alternatives=[data] if data else []
            )
        )

    def _on_result(self, r: STTResult) -> None:
        self._routed.served(r.endpoint_id)
        if r.transcript:
            if not self._speaking:
                self._speaking = True
                self._send(stt.SpeechEventType.START_OF_SPEECH)
            offset = self.start_time_offset
            data = stt.SpeechData(
                language=LanguageCode(r.language or self._language or ""),
                text=r.transcript,
                start_time=r.start + offset,
                end_time=r.end + offset,
                confidence=r.confidence if r.confidence is not None else 0.0,
                metadata={"endpoint_id": r.endpoint_id},
            )
            kind = (
                stt.SpeechEventType.FINAL_TRANSCRIPT
                if r.is_final
                else stt.SpeechEventType.INTERIM_TRANSCRIPT
            )
            self._send(kind, data)
        if r.is_final and r.is_end_of_utterance:
            if self._speaking:
                self._speaking = False
                self._send(stt.SpeechEventType.END_OF_SPEECH)
            self._report_usage()

    def _report_usage(self) -> None:
        seconds = self._pushed - self._reported
        if seconds <= 0 or self._event_ch.closed:
            return
        self._reported = self._pushed
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE,
                request_id=self._request_id,
                recognition_usage=stt.RecognitionUsage(audio_duration=seconds),
            )
        )

    def _on_route_event(self, event: RouteEvent) -> None:
        log.info("route %s", event, extra={"stt": self._routed.label, **event.to_dict()})
        self._routed.emit("route_event", event)
        if event.kind is RouteEventKind.FAILED:
            error = APIConnectionError(f"{event.endpoint_id} failed: {event.reason}")
            self._emit_error(error, recoverable=True)
