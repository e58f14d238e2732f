"""``check_stt_service``: the behaviour every :class:`~sttrouter.service.STTService` owes."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal

import anyio

from sttrouter.audio import ENGINE_FORMAT, AudioFormat
from sttrouter.errors import (
    AlreadyStreaming,
    AudioFormatError,
    NotStreaming,
    STTError,
    UnsupportedOption,
)
from sttrouter.options import OPTION_NAMES, StreamOptions
from sttrouter.results import STTResult
from sttrouter.service import STTService, iter_chunks

__all__ = ["ServiceMaker", "check_stt_service"]

ServiceMaker = Callable[[], STTService | Awaitable[STTService]]


class ConformanceError(AssertionError):
    """A service broke the contract; the message says which rule."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConformanceError(message)


async def _make(factory: ServiceMaker) -> STTService:
    made = factory()
    if inspect.isawaitable(made):
        return await made
    return made


async def _expect(
    exc_type: type[BaseException], what: str, fn: Callable[[], Awaitable[object]]
) -> None:
    try:
        await fn()
    except exc_type:
        return
    except BaseException as exc:
        raise ConformanceError(f"{what}: expected {exc_type.__name__}, got {exc!r}") from exc
    raise ConformanceError(f"{what}: expected {exc_type.__name__}, nothing was raised")


async def _run_stream(
    service: STTService, audio: bytes, fmt: AudioFormat, chunk_seconds: float
) -> tuple[list[STTResult], STTResult | None]:
    results = await service.start_streaming(fmt)
    collected: list[STTResult] = []

    async def consume() -> None:
        async for r in results:
            collected.append(r)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for chunk in iter_chunks(audio, fmt, chunk_seconds):
            await service.send_audio(chunk)
        last = await service.stop_streaming()
    return collected, last


_SAMPLE_OPTIONS: dict[str, StreamOptions] = {
    "language": StreamOptions(language="en"),
    "keywords": StreamOptions(keywords=("sttrouter",)),
    "prompt": StreamOptions(prompt="A conversation."),
    "punctuate": StreamOptions(punctuate=True),
}


async def _check_unsupported_option(service: STTService, fmt: AudioFormat) -> None:
    """An option the service does not list is refused at start, and nothing is left open."""
    supported: frozenset[str] = getattr(service, "supported_options", frozenset())
    refused = sorted(OPTION_NAMES - supported)
    if not refused:
        return
    options = _SAMPLE_OPTIONS[refused[0]]
    await _expect(
        UnsupportedOption,
        f"start_streaming with the unsupported option {refused[0]!r}",
        lambda: service.start_streaming(fmt, options),
    )
    _check(not service.is_streaming, "a refused start_streaming must leave the service idle")


def _finalize_point(finals: list[STTResult]) -> float | None:
    """Seconds into the clip where speech is surely going on, late in the first utterance
    with text: just into its last word (three quarters of the way through when it has no
    word times); ``None`` without such a final."""
    first = next((r for r in finals if r.transcript.strip()), None)
    if first is None:
        return None
    if len(first.words) >= 2:
        last = first.words[-1]
        return last.start + (last.end - last.start) / 4
    return first.start + first.duration * 3 / 4


async def _check_finalize(
    service: STTService, fmt: AudioFormat, chunks: list[bytes], cut: float | None
) -> None:
    """``finalize()``: a no-op without a stream and before any audio; after speech, a final
    comes without more audio, and the stream goes on to a normal stop."""
    await service.finalize()  # no stream: nothing to do
    _check(not service.is_streaming, "finalize() without a stream must not start one")
    results = await service.start_streaming(fmt)
    got_text = anyio.Event()
    collected: list[STTResult] = []

    async def consume() -> None:
        async for r in results:
            collected.append(r)
            if r.is_final and r.transcript.strip():
                got_text.set()

    async def drive() -> str | None:
        await service.finalize()  # nothing sent yet: nothing to finalise
        sent = 0
        if cut is not None:
            for chunk in chunks:
                await service.send_audio(chunk)
                sent += 1
                if fmt.seconds(sent * len(chunks[0])) > cut:
                    break
            await service.finalize()
            with anyio.move_on_after(30):  # a guard, not a measure: the final is due now
                await got_text.wait()
            if not got_text.is_set():
                await service.cancel_streaming()
                return (
                    f"finalize() after {fmt.seconds(sent * len(chunks[0])):.2f}s of speech "
                    "brought no final with text"
                )
            await service.finalize()  # again at once: at most an empty final
            if not service.is_streaming:
                await service.cancel_streaming()
                return "the stream must stay open after finalize()"
        for chunk in chunks[sent:]:
            await service.send_audio(chunk)
        await service.stop_streaming()
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        missing = await drive()
    _check(missing is None, str(missing))
    finals = [r for r in collected if r.is_final]
    for before, after in itertools.pairwise(finals):
        _check(after.start >= before.start - 1e-6, "finals after finalize() must stay in order")


async def check_stt_service(
    factory: ServiceMaker,
    audio: bytes,
    audio_format: AudioFormat = ENGINE_FORMAT,
    *,
    chunk_seconds: float = 0.02,
    expect_text: bool = True,
    time_tolerance: float = 0.5,
) -> list[STTResult]:
    """Run the :class:`STTService` contract against services made by ``factory``.

    Checks start/send/stop/cancel semantics, ``AlreadyStreaming``/``NotStreaming``, that a
    stream option the service does not list in ``supported_options`` is refused with
    :class:`UnsupportedOption` at start, that a bad chunk raises :class:`AudioFormatError`
    and leaves the stream usable, result ordering and timeline (times inside the audio sent,
    finals in order, words inside their result), ``endpoint_id`` on every result, metrics
    (audio seconds, cost), ``finalize()`` (a no-op with nothing open, a final with text after
    speech without more audio, the stream still open), reuse after stop and cleanup after
    cancel. Raises ``AssertionError`` naming the broken rule.

    Args:
        factory: makes a fresh service (sync or async callable).
        audio: a clip in ``audio_format`` with speech in it.
        expect_text: require at least one final with text.
        time_tolerance: seconds results may reach past the audio sent (engines pad).

    Returns:
        The results of the main stream, for further assertions.
    """
    duration = audio_format.seconds(len(audio))
    service = await _make(factory)
    eid = service.endpoint.id

    # -- state machine on a fresh service
    _check(not service.is_streaming, "a new service must not be streaming")
    await _expect(NotStreaming, "send_audio before start", lambda: service.send_audio(audio[:4]))
    await _expect(NotStreaming, "stop_streaming before start", service.stop_streaming)
    await service.cancel_streaming()  # must be a harmless no-op
    await _check_unsupported_option(service, audio_format)

    # -- a whole stream, with one bad chunk in the middle
    results = await service.start_streaming(audio_format)
    _check(service.is_streaming, "is_streaming must be true after start_streaming")
    await _expect(
        AlreadyStreaming, "start_streaming twice", lambda: service.start_streaming(audio_format)
    )
    collected: list[STTResult] = []

    async def consume() -> None:
        async for r in results:
            collected.append(r)

    chunks = iter_chunks(audio, audio_format, chunk_seconds)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for i, chunk in enumerate(chunks):
            if i == len(chunks) // 2 and audio_format.encoding.sample_bytes == 2:
                await _expect(
                    AudioFormatError,
                    "a chunk with an odd byte count",
                    lambda: service.send_audio(b"\x00"),
                )
            await service.send_audio(chunk)
        last = await service.stop_streaming()
    _check(not service.is_streaming, "is_streaming must be false after stop_streaming")

    finals = [r for r in collected if r.is_final]
    if expect_text:
        _check(any(r.transcript.strip() for r in finals), "no final result carried text")
    _check(last is None or last.is_final, "stop_streaming must return a final result or None")
    if finals:
        _check(last == finals[-1], "stop_streaming must return the last final result")
    prev_start = -math.inf
    for r in collected:
        _check(
            r.endpoint_id == eid,
            f"result {r.transcript!r} has endpoint_id {r.endpoint_id!r}, not {eid!r}",
        )
        _check(r.start >= -1e-6 and r.duration >= -1e-6, f"result {r!r} has a negative time")
        _check(
            r.end <= duration + time_tolerance,
            f"result ends at {r.end:.3f}s, past the {duration:.3f}s of audio sent",
        )
        for w in r.words:
            _check(w.start <= w.end + 1e-6, f"word {w.word!r} ends before it starts")
            _check(
                w.start >= -1e-6 and w.end <= duration + time_tolerance,
                f"word {w.word!r} at {w.start:.3f}..{w.end:.3f}s lies outside the audio",
            )
    for r in finals:
        _check(r.start >= prev_start - 1e-6, "finals must arrive in timeline order")
        prev_start = r.start
    # -- metrics
    m = service.metrics
    _check(
        abs(m.audio_seconds - duration) < 1e-6,
        f"metrics.audio_seconds is {m.audio_seconds}, expected {duration}",
    )
    expected_cost = service.cost_per_hour * Decimal(repr(duration)) / Decimal(3600)
    _check(
        abs(m.cost - expected_cost) < Decimal("0.00001"),
        f"metrics.cost is {m.cost}, expected about {expected_cost}",
    )
    if collected:
        _check(m.time_to_first_result is not None, "metrics.time_to_first_result not set")

    # -- finalize: idle no-op, then a final after speech on a stream that goes on
    cut = _finalize_point(finals) if expect_text else None
    await _check_finalize(service, audio_format, chunks, cut)

    # -- reuse, then cancel mid-stream: the iterator ends, the service is idle
    results2 = await service.start_streaming(audio_format)
    for chunk in chunks[: max(1, len(chunks) // 3)]:
        await service.send_audio(chunk)
    await service.cancel_streaming()
    _check(not service.is_streaming, "is_streaming must be false after cancel_streaming")
    try:
        with anyio.fail_after(5):
            async for _ in results2:
                pass
    except STTError:
        pass  # a cancelled stream may end with its error; it must end, though
    await _expect(NotStreaming, "send_audio after cancel", lambda: service.send_audio(chunks[0]))

    # -- the context manager cleans up when the body raises
    class _Boom(Exception):
        pass

    try:
        async with service.stream(audio_format) as s:
            await s.send(chunks[0])
            raise _Boom
    except _Boom:
        pass
    _check(not service.is_streaming, "stream() must cancel the stream when its body raises")

    # -- a fresh instance's transcribe() works through the same contract
    fresh = await _make(factory)
    transcript = await fresh.transcribe(audio, audio_format)
    if expect_text:
        _check(bool(transcript.text), "transcribe() returned no text")
    _check(not fresh.is_streaming, "transcribe() must leave the service idle")
    return collected
