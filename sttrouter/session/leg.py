"""One endpoint's stream inside a routed session: a *leg*.

A leg owns its service, its reader task and its stall watchdog, and moves through an explicit
:class:`LegState`: ``OPENING`` -> ``REPLAYING`` (catching up with the replay buffer) -> ``LIVE``
-> ``FINISHING`` -> ``RETIRED``, or ``FAILED`` from any state before ``RETIRED`` (a failed leg
is retired too once the session gives it up; its ``failure`` stays). Every error an endpoint
raises goes through one classification, :func:`caller_fault`; every result it delivers passes
the sanity check (:func:`~sttrouter.session.audit.check_result`) first.

Deadlines of a leg: the stall watchdog (speech sent, no result at all), the final deadline
(speech sent, no final covering it: interims do not count), and the send deadline (one send
blocked too long). A send in flight when the leg fails is abandoned at once, so the caller's
``send_audio`` never waits for a dying connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import attrs

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    AudioFormatError,
    ConfigError,
    ConnectTimeout,
    EmptyTranscripts,
    ErrorKind,
    MalformedResponse,
    NotStreaming,
    StreamingFailed,
    StreamStalled,
    STTError,
    UnsupportedOption,
)
from sttrouter.options import StreamOptions
from sttrouter.resilience import Permit
from sttrouter.results import STTResult
from sttrouter.service import ServiceFactory, STTService
from sttrouter.session._replay import chunk_has_speech
from sttrouter.session.audit import check_result
from sttrouter.session.ledger import LegUsage, UsageLedger
from sttrouter.session.timeline import BYTES_PER_SECOND, EmptyFinals, EmptyVerdict

__all__ = [
    "Leg",
    "LegHooks",
    "LegPool",
    "LegSettings",
    "LegState",
    "OpenFailure",
    "caller_fault",
    "open_leg",
    "stall_timeout_for",
    "timeout_option",
]

log = logging.getLogger("sttrouter.session")
_current_task = asyncio.current_task
_DEFAULT_OPTIONS = StreamOptions()


def timeout_option(endpoint: STTEndpoint, name: str, default: float) -> float:
    """Option ``name`` (seconds) from the endpoint's connection options, else ``default``."""
    value = endpoint.connection.option(name)
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number of seconds, got {value!r}",
            endpoint=endpoint.id,
            field=f"connection.options.{name}",
        ) from None


def stall_timeout_for(endpoint: STTEndpoint, default: float) -> float:
    """``stall_timeout`` from the endpoint's connection options, else ``default``."""
    return timeout_option(endpoint, "stall_timeout", default)


class LegState(enum.Enum):
    OPENING = "opening"
    REPLAYING = "replaying"
    LIVE = "live"
    FINISHING = "finishing"
    RETIRED = "retired"
    FAILED = "failed"


_LISTENING = frozenset({LegState.OPENING, LegState.REPLAYING, LegState.LIVE, LegState.FINISHING})


def caller_fault(error: STTError) -> bool:
    """Whether an error an endpoint raised is the caller's mistake (it goes to the caller; no
    failover would help). Everything else is the endpoint's failure. ``NotStreaming`` is the
    endpoint's: the engine closed the stream under the session. ``AudioFormatError`` is the
    endpoint's too: the session validated the audio itself before any engine saw it (the
    session tells the caller only when a second endpoint rejects the same audio)."""
    return error.kind is ErrorKind.CALLER and not isinstance(
        error, (NotStreaming, AudioFormatError)
    )


@attrs.frozen
class LegHooks:
    """How a leg reports to its session."""

    clock: Clock
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    on_result: Callable[[Leg, STTResult], Awaitable[None]]
    on_failure: Callable[[Leg, STTError], None]
    on_caller_error: Callable[[STTError], Awaitable[None]]
    unfinalised: Callable[[int], tuple[int, int] | None]
    """``unfinalised(pos)``: the span before session position ``pos`` with speech and no
    final yet, if any (evaluated lazily, only when a final is overdue)."""
    slow_after: Callable[[Leg], float | None] | None = None
    """Hedging: seconds without a result after speech before the leg counts as slow
    (``None``: not now); asked once per wait. ``None``: the session does not hedge."""
    on_slow: Callable[[Leg], None] = lambda _leg: None
    """The leg has waited ``slow_after`` seconds for a result after speech."""
    on_response: Callable[[Leg, float], None] | None = None
    """Seconds from speech sent to the result that answered it (hedging sessions only)."""


@attrs.frozen
class LegSettings:
    """Per-endpoint thresholds of a leg."""

    stall_timeout: float
    finish_timeout: float
    speech_dbfs: float
    empty_final_limit: int
    final_timeout: float = 20.0
    send_timeout: float = 2.0


class Leg:
    """One endpoint stream of a session (see the module docstring).

    Attributes:
        offset: session byte position at which this stream's audio starts.
        fed: session byte position up to which audio has been sent to it.
        replay_end: where the buffer ended when it opened (audio after it is live).
        awaiting_since: when speech was sent that no result has answered yet.
        hedge_end: session position up to which its audio was a hedge's (the audio from
            ``offset`` to there is booked as hedged; ``offset`` for an ordinary leg).
    """

    __slots__ = (
        "abandoned",
        "awaiting_since",
        "blamed",
        "confirmed",
        "empty",
        "endpoint",
        "failure",
        "fed",
        "guard",
        "hedge_end",
        "hooks",
        "last_final_end",
        "loop",
        "offset",
        "permit",
        "reader",
        "replay_end",
        "results",
        "sender",
        "service",
        "settings",
        "slow_since",
        "state",
        "wake",
        "watchdog",
    )

    def __init__(
        self,
        endpoint: STTEndpoint,
        service: STTService,
        *,
        offset: int,
        permit: Permit,
        hooks: LegHooks,
        settings: LegSettings,
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.offset = offset
        self.fed = offset
        self.replay_end = offset
        self.permit = permit
        self.hooks = hooks
        self.settings = settings
        self.state = LegState.OPENING
        self.failure: STTError | None = None
        self.blamed = True
        self.last_final_end: float | None = None
        self.sender: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.abandoned = False
        self.confirmed = False
        self.awaiting_since: float | None = None
        self.slow_since: float | None = None
        self.hedge_end = offset
        self.wake = asyncio.Event()
        self.empty = EmptyFinals(settings.empty_final_limit)
        self.results: AsyncIterator[STTResult] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None
        self.guard: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Leg({self.endpoint.id!r}, {self.state.value}, offset={self.offset})"

    @property
    def listening(self) -> bool:
        """Its results still count (it has neither failed nor been given up)."""
        return self.state in _LISTENING

    @property
    def healthy(self) -> bool:
        """Open and not failed: audio may be sent to it."""
        return self.state is LegState.LIVE or self.state is LegState.REPLAYING

    def usage(self) -> LegUsage:
        replayed = max(0, min(self.fed, self.replay_end) - self.offset)
        hedged = max(0, min(self.fed, self.hedge_end) - self.offset)
        return LegUsage(
            self.endpoint,
            (self.fed - self.offset) / BYTES_PER_SECOND,
            replayed / BYTES_PER_SECOND,
            hedged / BYTES_PER_SECOND,
        )

    # -- life cycle -----------------------------------------------------------------------
    def start(self, results: AsyncIterator[STTResult], replay_end: int) -> None:
        """The stream is open: start reading results and watching for stalls. Audio before
        ``replay_end`` (what the buffer held when it opened) is replayed."""
        self.results = results
        self.replay_end = replay_end
        self.loop = asyncio.get_running_loop()
        self.state = LegState.REPLAYING if self.fed < self.replay_end else LegState.LIVE
        self.reader = self.hooks.spawn(self._read())
        self.watchdog = self.hooks.spawn(self._watch())
        self.guard = self.hooks.spawn(self._guard())

    async def feed(self, data: bytes, end: int) -> None:
        """Send ``data``, the session audio up to byte position ``end``.

        An endpoint failure fails the leg (the session fails over); a caller error raises."""
        self.fed = end
        if self.awaiting_since is None and chunk_has_speech(data, self.settings.speech_dbfs):
            self.awaiting_since = self.hooks.clock.now()
            self.wake.set()
        if self.state is LegState.REPLAYING and end >= self.replay_end:
            self.state = LegState.LIVE
        task = self.sender = _current_task(self.loop)
        try:
            await self.service.send_audio(data)
        except STTError as exc:
            self._endpoint_error(exc)
        except asyncio.CancelledError:
            if not self.abandoned or task is None:
                raise
            self.abandoned = False
            task.uncancel()  # the leg failed meanwhile: its send is abandoned, not the caller
        finally:
            self.sender = None

    async def finish(self) -> bool:
        """Stop the stream and wait for its last final; ``False`` when it failed instead."""
        self.state = LegState.FINISHING
        self.wake.set()
        timeout = self.settings.finish_timeout
        try:
            async with fail_after(self.hooks.clock, timeout):
                await self.service.stop_streaming()
                if self.reader is not None:
                    await self.reader
        except TimeoutError:
            self.fail(StreamStalled(f"did not deliver its last final within {timeout:g}s"))
            return False
        except STTError as exc:
            self._endpoint_error(exc)
            return False
        if self.failure is not None:
            return False
        if self.empty.pending:
            # the stream ended on empty finals over speech: the next endpoint gets to hear it
            self.fail(EmptyTranscripts("empty final over speech at the end of the stream"))
            return False
        return True

    def empty_final(self, result: STTResult, *, speech: bool) -> bool:
        """An empty final arrived (``speech``: over audio with speech energy); ``True`` when
        it is an ordinary one to deliver. A run of them over speech fails the leg."""
        verdict = self.empty.on_empty(result, speech=speech)
        if verdict is EmptyVerdict.FAIL:
            self.fail(
                EmptyTranscripts(
                    f"{self.empty.run} empty finals in a row over audio with speech energy "
                    f"(from {self.empty.withheld[0].start:.2f}s)"
                )
            )
        return verdict is EmptyVerdict.DELIVER

    def fail(self, error: STTError, *, blame: bool = True) -> None:
        """The endpoint failed: stop listening to it, abandon a send in flight and tell the
        session (once). ``blame=False``: the stream is given up without counting it against
        the endpoint (a first skipped span is replayed on a fresh stream)."""
        if not self.listening:
            return
        if error.endpoint_id is None:
            error.endpoint_id = self.endpoint.id
        self.failure = error
        self.blamed = blame
        self.state = LegState.FAILED
        self.wake.set()
        sender = self.sender
        if sender is not None and sender is not asyncio.current_task():
            self.abandoned = True
            sender.cancel()
        self.hooks.on_failure(self, error)

    def retire(self) -> bool:
        """Give the leg up: its results are ignored from now on. ``False`` if it already was."""
        if self.state is LegState.RETIRED:
            return False
        self.state = LegState.RETIRED
        self.wake.set()
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.guard is not None:
            self.guard.cancel()
        self.permit.release()
        return True

    async def finalize(self) -> None:
        """Ask the engine for the current utterance's final (the stream stays open)."""
        try:
            await self.service.finalize()
        except STTError as exc:
            self._endpoint_error(exc)

    async def close(self) -> None:
        """Retire the leg and close its stream now."""
        self.retire()
        if self.service.is_streaming:
            await quietly_cancel(self.service)

    def _endpoint_error(self, error: STTError) -> None:
        if caller_fault(error):
            raise error
        self.fail(error)

    # -- tasks ----------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self.results is not None
        respond = self.hooks.on_response
        try:
            async for r in self.results:
                if not self.listening:
                    continue
                heard = (self.fed - self.offset) / BYTES_PER_SECOND
                problem = check_result(r, heard=heard, last_final_end=self.last_final_end)
                if problem is not None:
                    self.fail(MalformedResponse(f"insane result: {problem}"))
                    return
                if r.is_final:
                    self.last_final_end = r.end
                since, self.awaiting_since = self.awaiting_since, None
                if since is not None and respond is not None:
                    respond(self, self.hooks.clock.now() - since)
                await self.hooks.on_result(self, r)
        except STTError as exc:
            if caller_fault(exc):
                await self.hooks.on_caller_error(exc)
            else:
                self.fail(exc)
            return
        if self.state is not LegState.FINISHING:
            self.fail(StreamingFailed("the engine ended the stream without an error"))

    async def _watch(self) -> None:
        """The stall watchdog; for a hedging session also the moment the leg counts as slow
        (once per wait for a result)."""
        timeout = self.settings.stall_timeout
        clock, slow_after = self.hooks.clock, self.hooks.slow_after
        while self.listening:
            since = self.awaiting_since
            if since is None or self.state is LegState.FINISHING:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = clock.now()
            remaining = since + timeout - now
            if slow_after is not None and self.slow_since != since:
                after = slow_after(self)
                if after is None or now >= since + after:
                    self.slow_since = since
                    if after is not None:
                        self.hooks.on_slow(self)
                    continue
                remaining = min(remaining, since + after - now)
            if remaining > 0:
                await clock.sleep(remaining)
                continue
            self.fail(StreamStalled(f"no result for {timeout:g}s after speech was sent"))
            return

    async def _guard(self) -> None:
        """The send and final deadlines, checked every ``tick`` (no cost per chunk): a send
        still in flight across a whole tick, or speech without a final ``final_timeout`` after
        it was sent, fails the leg."""
        settings, clock = self.settings, self.hooks.clock
        final_timeout = settings.final_timeout
        tick = min(settings.send_timeout / 2, final_timeout / 4)
        marks: deque[tuple[float, int]] = deque()  # (clock time, audio fed by then)
        seen = -1  # the audio fed at the last tick: unchanged with a send in flight = blocked
        # the first tick at a phase spread by the start time (the sub-millisecond digits), so
        # a thousand legs opened together do not all wake in the same instant
        await clock.sleep((clock.now() * 1e3) % 1.0 * tick)
        while self.listening:
            await clock.sleep(tick)
            if not self.listening or self.state is LegState.FINISHING:
                continue
            if self.sender is not None and self.fed == seen:
                self.fail(StreamStalled(f"a send blocked for over {tick:g}s"))
                return
            seen = self.fed
            now = clock.now()
            marks.append((now, self.fed))
            due: int | None = None
            while marks and now - marks[0][0] >= final_timeout:
                due = marks.popleft()[1]
            span = self.hooks.unfinalised(due) if due is not None else None
            if span is not None:
                lo, hi = span[0] / BYTES_PER_SECOND, span[1] / BYTES_PER_SECOND
                self.fail(
                    StreamStalled(
                        f"no final for {final_timeout:g}s over speech at {lo:.2f}..{hi:.2f}s "
                        "(interim results do not count)"
                    )
                )
                return


class LegPool:
    """A session's open legs, and the services of given-up legs still closing; retiring a
    leg books what it carried in the usage ledger."""

    def __init__(
        self,
        ledger: UsageLedger,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._ledger = ledger
        self._spawn = spawn
        self._open: list[Leg] = []
        self._closing: list[STTService] = []

    def add(self, leg: Leg) -> None:
        if leg not in self._open:
            self._open.append(leg)

    def usage(self) -> list[LegUsage]:
        """What the open legs carried so far."""
        return [leg.usage() for leg in self._open]

    def retire(self, leg: Leg) -> None:
        """Stop listening to ``leg`` and book what it carried."""
        if leg.retire() and leg in self._open:
            self._open.remove(leg)
            self._ledger.record_stream(leg.usage())

    async def close(self, leg: Leg) -> None:
        self.retire(leg)
        await leg.close()

    def drop(self, leg: Leg, *, background: bool) -> None:
        """Retire ``leg`` and close its connection in the background (``background``: the
        session stream is still running): a dead socket's close handshake must not delay
        the failover."""
        self.retire(leg)
        if leg.service.is_streaming and background:
            self._closing.append(leg.service)
            self._spawn(self._close_dropped(leg.service))

    async def _close_dropped(self, service: STTService) -> None:
        # a factory may hand the same instance to the next leg, which closed the old stream
        # itself before opening its own: that one must not be cancelled from here
        if service.is_streaming and not any(leg.service is service for leg in self._open):
            await quietly_cancel(service)

    async def close_all(self) -> None:
        for leg in list(self._open):
            await self.close(leg)
        closing, self._closing = self._closing, []
        for service in closing:
            await self._close_dropped(service)


@attrs.frozen
class OpenFailure:
    """Why an endpoint could not open a stream.

    Attributes:
        error: what happened.
        disqualifies: the endpoint can never serve this session, for this reason.
        endpoint_at_fault: the failure counts against the endpoint (breaker, health, ledger);
            ``False`` for an option it cannot honour, which is no fault of the endpoint.
    """

    error: STTError
    disqualifies: str | None = None
    endpoint_at_fault: bool = True


async def open_leg(
    endpoint: STTEndpoint,
    factory: ServiceFactory,
    *,
    options: StreamOptions,
    connect_timeout: float,
    offset: int,
    buffer_end: Callable[[], int],
    permit: Permit,
    hooks: LegHooks,
    settings: LegSettings,
) -> Leg | OpenFailure:
    """Build a service for ``endpoint`` and open a stream on it within ``connect_timeout``;
    the stream replays the session audio from ``offset`` to ``buffer_end()`` at open."""
    service: STTService | None = None
    try:
        service = factory(endpoint)
        if service.is_streaming:  # a reused instance still closing its last stream
            await quietly_cancel(service)
        leg = Leg(
            endpoint,
            service,
            offset=offset,
            permit=permit,
            hooks=hooks,
            settings=settings,
        )
        async with fail_after(hooks.clock, connect_timeout):
            if options == _DEFAULT_OPTIONS:
                results = await service.start_streaming(ENGINE_FORMAT)
            else:
                results = await service.start_streaming(ENGINE_FORMAT, options)
    except TimeoutError:
        failure = OpenFailure(ConnectTimeout(f"did not connect within {connect_timeout:g}s"))
    except UnsupportedOption as exc:
        failure = OpenFailure(exc, disqualifies=exc.message, endpoint_at_fault=False)
    except STTError as exc:
        failure = OpenFailure(exc)
    except Exception as exc:  # a factory or adapter bug: this endpoint is unusable
        error = StreamingFailed(f"could not build a service: {type(exc).__name__}: {exc}")
        failure = OpenFailure(error, disqualifies=error.message)
    else:
        leg.start(results, buffer_end())
        return leg
    if service is not None:
        await quietly_cancel(service)
    if failure.error.endpoint_id is None:
        failure.error.endpoint_id = endpoint.id
    return failure


async def quietly_cancel(service: STTService) -> None:
    try:
        await service.cancel_streaming()
    except Exception as exc:  # closing a broken engine may fail; nothing to report
        log.debug("cancel_streaming on %s failed: %r", service.endpoint.id, exc)
