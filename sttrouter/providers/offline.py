"""The built-in offline engine: CMU PocketSphinx, in process, no network, no cost.

PocketSphinx is the only English recogniser on PyPI that ships its own model (US English
acoustic model, a 3-gram language model and CMUdict), so this engine works on any machine
with nothing downloaded. Its accuracy is modest (see ``docs/offline.md``); it is the last
resort of a routing chain, and good for plumbing, latency tests and small grammars.

How a stream is decoded
-----------------------
* PocketSphinx's :class:`~pocketsphinx.Endpointer` (WebRTC-style VAD over 30 ms frames)
  finds utterances in the stream.
* While an utterance runs, its speech is fed to the decoder in live mode and every change
  of ``hyp()`` is emitted as an interim result (``interim_results = false`` turns this off
  and halves the CPU cost).
* When the endpointer ends the utterance, the utterance's audio (with up to 0.2 s of lead-in
  and 0.1 s of tail) is decoded again in one full-utterance pass, and that is the final
  (``is_end_of_utterance = True``), with word times from ``seg()``. The second pass is much
  more accurate than the live pass: live cepstral-mean normalisation starts from a
  generic estimate, and the first seconds of a stream decode badly with it.
* An utterance longer than ``max_utterance_seconds`` is cut there (final with
  ``is_end_of_utterance = False``) and decoding goes on with the rest.
* ``stop_streaming`` flushes the endpointer and finishes the last utterance.
* ``finalize()`` finishes the current utterance at once (the final has
  ``is_end_of_utterance = True``); the speech that follows starts a new one.
* Stream options: ``language`` (English only; other languages are refused when the stream
  starts); ``interim_results = False`` also turns the live pass off. ``transcribe()``
  streams the clip finals only, so it never runs the live pass.

Decoding is CPU work: each stream has one worker task that runs the decoder in a thread
(``anyio.to_thread``), so other streams and the event loop stay responsive; results keep
their order. Loaded decoders are pooled per process (loading one takes about 0.4 s), one
decoder per running stream; every stream starts from the model's initial cepstral mean, so
results do not depend on what a pooled decoder decoded before.

Options (``endpoint.connection.options`` or keyword arguments; keywords win):

==========================  ==============================================================
``hmm``, ``lm``, ``dict``   paths to an acoustic model directory, language model and
                            pronunciation dictionary (default: the US English model in the
                            pocketsphinx wheel)
``jsgf``                    a JSGF grammar file to decode with instead of the language model
``keyphrase``               spot one key phrase instead (with ``kws_threshold``, e.g. 1e-20)
``vad_mode``                endpointer aggressiveness 0..3 (default 0, the loosest)
``vad_window``              seconds of audio the endpointer decides over (default 0.3)
``vad_ratio``               fraction of the window that must agree to switch (default 0.9)
``interim_results``         emit interims from a live pass (default true)
``max_utterance_seconds``   cut utterances longer than this (default 30)
==========================  ==============================================================
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Mapping
from typing import Any, Final, Self

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sttrouter._builtin_endpoints import offline_endpoint
from sttrouter.audio import ENGINE_FORMAT
from sttrouter.clock import Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import (
    ConfigError,
    EndpointMisconfigured,
    MissingDependency,
    StreamingFailed,
    STTError,
)
from sttrouter.results import STTResult, WordTimestamp
from sttrouter.service import BaseSTTService

__all__ = ["OfflineOptions", "OfflineSTTService", "offline_endpoint"]

SAMPLE_RATE: Final = ENGINE_FORMAT.sample_rate
_BYTES_PER_SECOND: Final = ENGINE_FORMAT.bytes_per_second
PRE_ROLL: Final = 0.2
"""Seconds of audio before the endpointer's speech start that the final pass decodes."""
POST_ROLL: Final = 0.1
"""Seconds of audio after the endpointer's speech end that the final pass decodes."""
_PRE_ROLL_BYTES: Final = int(PRE_ROLL * _BYTES_PER_SECOND) // 2 * 2
_POST_ROLL_BYTES: Final = int(POST_ROLL * _BYTES_PER_SECOND) // 2 * 2
LANGUAGE: Final = "en"
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")
_VARIANT = re.compile(r"\(\d+\)$")
_QUEUE_CHUNKS: Final = 64
_BATCH_BYTES: Final = ENGINE_FORMAT.bytes_for(0.3)
"""Audio decoded per worker-thread call when chunks queue up: small enough that interims of a
backlog still arrive every 0.3 s of audio, large enough to amortise the thread hop."""
_CUT: Final = b""
"""The audio queue's ``finalize`` marker (audio messages are never empty)."""


def _import_pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise MissingDependency("pocketsphinx", "offline") from exc
    return pocketsphinx


# -- options -----------------------------------------------------------------------------


def _path_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@attrs.frozen
class OfflineOptions:
    """Validated engine options (see the module docstring for what each one does)."""

    hmm: str | None = None
    lm: str | None = None
    dict: str | None = None
    jsgf: str | None = None
    keyphrase: str | None = None
    kws_threshold: float | None = None
    vad_mode: int = 0
    vad_window: float = 0.3
    vad_ratio: float = 0.9
    interim_results: bool = True
    max_utterance_seconds: float = 30.0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], endpoint_id: str | None = None) -> Self:
        """Validate loose options; a bad one raises :class:`ConfigError` naming the field."""
        known = {a.name for a in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in known:
                raise ConfigError(
                    f"unknown offline engine option; use one of {', '.join(sorted(known))}",
                    endpoint=endpoint_id,
                    field=name,
                )
            values[name] = _check_option(name, value, endpoint_id)
        if values.get("jsgf") and values.get("keyphrase"):
            raise ConfigError(
                "set either jsgf or keyphrase, not both", endpoint=endpoint_id, field="keyphrase"
            )
        return cls(**values)

    def decoder_config(self) -> tuple[tuple[str, Any], ...]:
        """PocketSphinx configuration parameters, as a hashable key."""
        config: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        for name in ("hmm", "lm", "dict", "jsgf", "keyphrase", "kws_threshold"):
            value = getattr(self, name)
            if value is not None:
                config[name] = value
        return tuple(sorted(config.items()))


_PATHS = frozenset({"hmm", "lm", "dict", "jsgf"})


def _check_option(name: str, value: Any, endpoint_id: str | None) -> Any:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{why}, got {value!r}", endpoint=endpoint_id, field=name)

    if name in _PATHS or name == "keyphrase":
        if not isinstance(value, str) or not value.strip():
            raise bad("must be a non-empty string" + (" (a path)" if name in _PATHS else ""))
        return value
    if name == "interim_results":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if name == "vad_mode":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            raise bad("must be an integer 0..3 (0 is the loosest)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad("must be a number")
    limits = {
        "kws_threshold": (0.0, 1.0, "lie in 0..1 (try 1e-20)"),
        "vad_window": (0.03, 5.0, "lie in 0.03..5 seconds"),
        "vad_ratio": (0.0, 1.0, "lie in 0..1"),
        "max_utterance_seconds": (1.0, 600.0, "lie in 1..600 seconds"),
    }
    lo, hi, why = limits[name]
    if not lo < value <= hi:
        raise bad(f"must {why}")
    return float(value)


# -- decoders ----------------------------------------------------------------------------

DecoderKey = tuple[tuple[str, Any], ...]


class _DecoderPool:
    """Loaded decoders, reused across streams of this process (one stream uses one)."""

    def __init__(self, max_idle: int = 4) -> None:
        self._idle: dict[DecoderKey, list[tuple[Any, str]]] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle

    def acquire(self, key: DecoderKey) -> tuple[Any, str]:
        """An idle decoder for ``key`` (or a new one) and its initial cepstral mean."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        ps = _import_pocketsphinx()
        try:
            decoder = ps.Decoder(**dict(key))
        except (RuntimeError, ValueError, OSError) as exc:
            paths = ", ".join(f"{k}={v!r}" for k, v in key if k in _PATHS or k == "keyphrase")
            raise EndpointMisconfigured(
                "pocketsphinx could not load its model"
                + (f" ({paths})" if paths else "")
                + f": {exc}; check that the model, language model and dictionary paths "
                "exist and belong together"
            ) from exc
        return decoder, str(decoder.get_cmn())

    def release(self, key: DecoderKey, decoder: Any, cmn: str) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append((decoder, cmn))

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


DECODERS: Final = _DecoderPool()
"""The process-wide pool of loaded decoders."""


def _clean_word(word: str) -> str | None:
    if _FILLER.match(word):
        return None
    return _VARIANT.sub("", word)


class Recognizer:
    """Synchronous endpointing + decoding of one stream (runs in a worker thread).

    ``feed`` takes 16 kHz mono s16le bytes and returns the results they complete; ``finish``
    ends the stream and returns the rest. Times are seconds on the stream's timeline.
    """

    def __init__(self, decoder: Any, cmn: str, options: OfflineOptions) -> None:
        ps = _import_pocketsphinx()
        self._d = decoder
        self._cmn = cmn
        self._opts = options
        self._ep = ps.Endpointer(
            window=options.vad_window,
            ratio=options.vad_ratio,
            vad_mode=options.vad_mode,
            sample_rate=SAMPLE_RATE,
        )
        self._frame_bytes: int = self._ep.frame_bytes
        self._frate = int(decoder.config["frate"])
        self._pending = bytearray()
        self._received = 0  # bytes received so far (the stream position)
        self._history = bytearray()  # audio from _history_start (bytes) on
        self._history_start = 0
        self._floor = 0  # end of the last final, bytes
        self._utt_start: int | None = None  # bytes
        self._utt_speech = 0  # speech bytes the endpointer returned for this utterance
        self._live = False
        self._interim = ""
        self._continued = False  # the utterance goes on after a max_utterance_seconds cut
        self._keep = _even(int((options.vad_window + PRE_ROLL + 0.3) * _BYTES_PER_SECOND))
        self._max_utt = _even(int(options.max_utterance_seconds * _BYTES_PER_SECOND))

    @property
    def in_utterance(self) -> bool:
        return self._utt_start is not None

    def feed(self, pcm: bytes) -> list[STTResult]:
        out: list[STTResult] = []
        self._history += pcm
        self._received += len(pcm)
        self._pending += pcm
        fb = self._frame_bytes
        whole = len(self._pending) // fb * fb
        for i in range(0, whole, fb):
            self._on_speech(self._ep.process(bytes(self._pending[i : i + fb])), out)
        del self._pending[:whole]
        self._trim()
        return out

    def finish(self) -> list[STTResult]:
        out: list[STTResult] = []
        if self._pending or self._ep.in_speech:
            # end_stream needs at least one sample; a zero sample changes nothing we report
            self._on_speech(self._ep.end_stream(bytes(self._pending) or b"\0\0"), out)
            self._pending.clear()
        if self._utt_start is not None:
            self._final(self._received, out, end_of_utterance=True, tail=False)
        return out

    def cut(self) -> list[STTResult]:
        """End the current utterance now (``finalize``) with the audio received so far; the
        speech that follows starts the next one. No utterance: nothing to return."""
        out: list[STTResult] = []
        if self._utt_start is not None:
            self._final(self._received, out, end_of_utterance=True, tail=False)
        return out

    def abandon(self) -> None:
        """Stop a live pass left open (so the decoder may be reused)."""
        if self._live:
            self._d.end_utt()
            self._live = False

    # -- internals -------------------------------------------------------------------
    def _on_speech(self, speech: bytes | None, out: list[STTResult]) -> None:
        if speech is None:
            return
        if self._utt_start is None:
            start = _even(round(self._ep.speech_start * _BYTES_PER_SECOND))
            self._begin(max(start, self._floor))
        assert self._utt_start is not None
        self._utt_speech += len(speech)
        if self._live:
            self._d.process_raw(speech, False, False)
            self._maybe_interim(out)
        if not self._ep.in_speech:
            end = _even(round(self._ep.speech_end * _BYTES_PER_SECOND))
            self._final(max(end, self._utt_start), out, end_of_utterance=True, tail=True)
        elif self._utt_speech >= self._max_utt:
            cut = min(self._utt_start + self._utt_speech, self._received)
            self._final(cut, out, end_of_utterance=False, tail=False)
            self._begin(cut)
            self._continued = True

    def _begin(self, start: int) -> None:
        self._utt_start = start
        self._utt_speech = 0
        self._interim = ""
        self._continued = False
        if self._opts.interim_results:
            self._d.set_cmn(self._cmn)
            self._d.start_utt()
            self._live = True
            lead = max(self._floor, self._history_start, start - _PRE_ROLL_BYTES)
            if lead < start:  # the lead-in silence the endpointer does not return
                i = self._history_start
                self._d.process_raw(bytes(self._history[lead - i : start - i]), False, False)

    def _maybe_interim(self, out: list[STTResult]) -> None:
        hyp = self._d.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text or text == self._interim:
            return
        self._interim = text
        assert self._utt_start is not None
        start = self._utt_start
        end = min(start + self._utt_speech, self._received)
        out.append(
            STTResult(
                text,
                is_final=False,
                start=start / _BYTES_PER_SECOND,
                duration=(end - start) / _BYTES_PER_SECOND,
                language=LANGUAGE,
            )
        )

    def _final(self, end: int, out: list[STTResult], *, end_of_utterance: bool, tail: bool) -> None:
        assert self._utt_start is not None
        self.abandon()
        post = _POST_ROLL_BYTES if tail else 0
        seg_start = max(self._floor, self._history_start, self._utt_start - _PRE_ROLL_BYTES)
        seg_end = max(seg_start, min(self._received, end + post))
        pcm = bytes(self._history[seg_start - self._history_start : seg_end - self._history_start])
        text, words, confidence = self._decode(pcm, seg_start // 2)
        # an empty final is sent only to retract an interim or to close a cut utterance
        needed = bool(text or self._interim or (self._continued and end_of_utterance))
        self._floor = seg_end
        self._utt_start = None
        self._interim = ""
        if not needed:
            return
        out.append(
            STTResult(
                text,
                is_final=True,
                is_end_of_utterance=end_of_utterance,
                confidence=confidence,
                start=seg_start / _BYTES_PER_SECOND,
                duration=(seg_end - seg_start) / _BYTES_PER_SECOND,
                words=words,
                language=LANGUAGE,
            )
        )

    def _decode(
        self, pcm: bytes, offset: int
    ) -> tuple[str, tuple[WordTimestamp, ...], float | None]:
        if not pcm:
            return "", (), None
        d = self._d
        # A live pass switches the feature pipeline to live CMN for good; reinit_feat (0.1 ms)
        # restores the configured batch CMN, which normalises over this utterance itself.
        d.reinit_feat()
        d.start_utt()
        d.process_raw(pcm, False, True)
        d.end_utt()
        self._cmn = str(d.get_cmn())  # a better start for the next live pass
        # times in whole samples, divided once: 1.11, not 1.1099999999999999
        samples = len(pcm) // 2
        per_frame = SAMPLE_RATE // self._frate
        words: list[WordTimestamp] = []
        for seg in d.seg():
            word = _clean_word(seg.word)
            if word is None:
                continue
            start = min(samples, seg.start_frame * per_frame)
            end = min(samples, max(start, (seg.end_frame + 1) * per_frame))
            prob = float(seg.prob)
            words.append(
                WordTimestamp(
                    word,
                    (offset + start) / SAMPLE_RATE,
                    (offset + end) / SAMPLE_RATE,
                    prob if 0.0 <= prob <= 1.0 else None,
                )
            )
        text = " ".join(w.word for w in words)
        known = [w.confidence for w in words if w.confidence is not None]
        confidence = sum(known) / len(known) if known else None
        return text, tuple(words), confidence

    def _trim(self) -> None:
        """Drop history no final can need any more."""
        if self._utt_start is not None:
            keep_from = max(self._floor, self._utt_start - _PRE_ROLL_BYTES)
        else:
            # the endpointer reports a start up to its window before the current position
            keep_from = max(self._floor, self._received - self._keep)
        drop = keep_from - self._history_start
        if drop > 0:
            del self._history[:drop]
            self._history_start = keep_from


def _even(n: int) -> int:
    return n - (n % 2)


# -- the service ---------------------------------------------------------------------------


class OfflineSTTService(BaseSTTService):
    """The built-in offline engine (PocketSphinx) as an :class:`~sttrouter.service.STTService`.

    Args:
        endpoint: usually :func:`offline_endpoint`; its ``connection.options`` configure the
            engine (see the module docstring).
        clock: the clock for latency accounting.
        **options: engine options that override the endpoint's.

    Raises:
        MissingDependency: pocketsphinx is not installed (``pip install 'sttrouter[offline]'``).
        ConfigError: an option is unknown or has a bad value.
    """

    supported_options = frozenset({"language"})  # English only: the endpoint's languages
    batch_chunk_seconds = 1.0  # transcribe() streams without the live pass, in 1 s chunks

    def __init__(
        self, endpoint: STTEndpoint | None = None, *, clock: Clock | None = None, **options: Any
    ) -> None:
        endpoint = endpoint or offline_endpoint()
        super().__init__(endpoint, clock=clock)
        _import_pocketsphinx()
        merged = {**endpoint.connection.options, **options}
        self.options = OfflineOptions.from_mapping(merged, endpoint.id)
        self._key = self.options.decoder_config()
        self._audio: MemoryObjectSendStream[bytes] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def probe(self) -> None:
        """Load (or borrow) a decoder to prove the model configuration works."""
        decoder, cmn = await anyio.to_thread.run_sync(DECODERS.acquire, self._key)
        DECODERS.release(self._key, decoder, cmn)

    async def _open(self) -> None:
        live = self.options.interim_results and self.stream_options.interim_results
        options = attrs.evolve(self.options, interim_results=live)
        decoder, cmn = await anyio.to_thread.run_sync(DECODERS.acquire, self._key)
        recognizer = Recognizer(decoder, cmn, options)
        send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=_QUEUE_CHUNKS)
        self._audio = send
        self._worker = self._spawn(self._run(receive, recognizer, decoder, cmn))

    async def _send(self, pcm: bytes) -> None:
        assert self._audio is not None
        try:
            await self._audio.send(pcm)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise StreamingFailed("the offline decoder stopped") from exc

    async def _finish(self) -> None:
        if self._audio is not None:
            self._audio.close()
        if self._worker is not None:
            await self._worker

    async def _abort(self) -> None:
        if self._audio is not None:
            self._audio.close()

    async def _finalize(self) -> None:
        """Cut the current utterance: an empty message in the audio queue tells the worker
        to finish it after the audio queued before it."""
        await self._send(_CUT)

    def _translate(self, exc: Exception) -> STTError:
        if isinstance(exc, STTError):
            return super()._translate(exc)
        return StreamingFailed(
            f"pocketsphinx failed: {type(exc).__name__}: {exc}", endpoint_id=self.endpoint.id
        )

    async def _run(
        self,
        audio: MemoryObjectReceiveStream[bytes],
        recognizer: Recognizer,
        decoder: Any,
        cmn: str,
    ) -> None:
        busy = False  # a decode is running in a thread (it goes on if we are cancelled)
        reusable = True
        try:
            with audio:
                async for first in audio:
                    batch, size, cut = [first], len(first), first == _CUT
                    while size < _BATCH_BYTES and not cut:
                        try:
                            chunk = audio.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                        cut = chunk == _CUT
                        batch.append(chunk)
                        size += len(chunk)
                    busy = True
                    results = await anyio.to_thread.run_sync(
                        recognizer.feed, b"".join(batch), abandon_on_cancel=True
                    )
                    if cut:
                        results += await anyio.to_thread.run_sync(
                            recognizer.cut, abandon_on_cancel=True
                        )
                    busy = False
                    for result in results:
                        await self._emit(result)
                busy = True
                results = await anyio.to_thread.run_sync(recognizer.finish, abandon_on_cancel=True)
                busy = False
                for result in results:
                    await self._emit(result)
        except Exception as exc:
            reusable = False
            self._fail(exc)
        finally:
            if reusable and not busy:
                recognizer.abandon()
                DECODERS.release(self._key, decoder, cmn)
