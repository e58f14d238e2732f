"""What the fake vendor servers share: a real HTTP + WebSocket server, scripts and faults.

:class:`FakeVendorServer` runs a Starlette app under uvicorn on ``127.0.0.1`` port 0 inside the
test's event loop, so vendor SDKs talk to it over real sockets. A :class:`ScriptPlayer` turns a
scripted transcript into word and utterance events as the *received* audio passes them, so
what a client gets depends on how much audio it really sent. :class:`ServerFault` is one fault
on the wire (an HTTP rejection of the upgrade, an in-band error, a close code, a malformed
message); each vendor server also maps the engine-neutral
:class:`~sttrouter.testing.FaultPlan` onto its own wire behaviour.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import wave
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from sttrouter.errors import ConfigError, MissingDependency
from sttrouter.testing._faults import FaultKind, FaultPlan
from sttrouter.testing._quiet import MANGLED

__all__ = [
    "FakeStreamSession",
    "FakeVendorServer",
    "ScriptPlayer",
    "ScriptedUtterance",
    "ScriptedWord",
    "ServerFault",
    "SessionRecord",
    "normalise_script",
    "plain_word",
    "wav_seconds",
]

ScriptInput = Iterable["ScriptedUtterance | tuple[str, float, float]"]


def wav_seconds(body: bytes, sample_rate: int, channels: int = 1) -> float:
    """Duration of a WAV body, or of raw s16le at ``sample_rate``."""
    if body[:4] == b"RIFF":
        with wave.open(io.BytesIO(body)) as w:
            return float(w.getnframes() / w.getframerate())
    return len(body) / (2 * channels * sample_rate)


def plain_word(text: str) -> str:
    """A word as an engine reports it unformatted: lower case, no surrounding punctuation."""
    return text.strip(".,!?;:\"'()").lower()


@attrs.frozen
class ScriptedWord:
    """One scripted word: its text as formatted (``"Hello,"``) and where it lies in the audio."""

    text: str
    start: float
    end: float

    @property
    def plain(self) -> str:
        return plain_word(self.text)


def _scripted_words(value: Iterable[ScriptedWord]) -> tuple[ScriptedWord, ...]:
    return tuple(value)


@attrs.frozen
class ScriptedUtterance:
    """One scripted utterance (a Deepgram endpoint, an AssemblyAI turn)."""

    words: tuple[ScriptedWord, ...] = attrs.field(converter=_scripted_words)

    def __attrs_post_init__(self) -> None:
        if not self.words:
            raise ConfigError("a scripted utterance needs at least one word")

    @classmethod
    def spread(cls, text: str, start: float, end: float) -> ScriptedUtterance:
        """Spread the words of ``text`` evenly over ``start..end`` seconds."""
        parts = text.split()
        if not parts or end <= start:
            raise ConfigError(
                f"scripted utterance {text!r} at {start}..{end}s needs words and end > start"
            )
        step = (end - start) / len(parts)
        return cls(
            tuple(
                ScriptedWord(w, round(start + i * step, 6), round(start + (i + 1) * step, 6))
                for i, w in enumerate(parts)
            )
        )

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def plain_text(self) -> str:
        return " ".join(w.plain for w in self.words)


def normalise_script(script: ScriptInput) -> tuple[ScriptedUtterance, ...]:
    """Accept utterances or ``(text, start, end)`` tuples; check they are in time order."""
    out: list[ScriptedUtterance] = []
    for item in script:
        utt = item if isinstance(item, ScriptedUtterance) else ScriptedUtterance.spread(*item)
        if out and utt.start < out[-1].end:
            raise ConfigError(
                f"scripted utterance {utt.text!r} starts at {utt.start}s, before the previous "
                f"one ends at {out[-1].end}s; list utterances in time order"
            )
        out.append(utt)
    return tuple(out)


@attrs.frozen
class WordHeard:
    """The audio received passed the end of word ``count`` of utterance ``index``."""

    index: int
    count: int


@attrs.frozen
class UtteranceStarted:
    index: int


@attrs.frozen
class UtteranceDone:
    """The audio received passed the end of utterance ``index`` (or a flush ended it early)."""

    index: int
    count: int
    forced: bool = False


ScriptEvent = WordHeard | UtteranceStarted | UtteranceDone


class ScriptPlayer:
    """Pure: turns seconds of received audio into script events, each exactly once."""

    def __init__(self, script: Sequence[ScriptedUtterance]) -> None:
        self.script = tuple(script)
        self._index = 0  # current utterance
        self._heard = 0  # words of it heard so far
        self._started = False

    def advance(self, audio_seconds: float) -> list[ScriptEvent]:
        """Events for the audio received up to ``audio_seconds``."""
        events: list[ScriptEvent] = []
        eps = 1e-9
        while self._index < len(self.script):
            utt = self.script[self._index]
            if not self._started and audio_seconds + eps >= utt.start:
                self._started = True
                events.append(UtteranceStarted(self._index))
            progressed = False
            while (
                self._heard < len(utt.words) and audio_seconds + eps >= utt.words[self._heard].end
            ):
                self._heard += 1
                progressed = True
            if self._heard == len(utt.words):
                events.append(UtteranceDone(self._index, self._heard))
                self._next()
                continue
            if progressed:
                events.append(WordHeard(self._index, self._heard))
            break
        return events

    def flush(self) -> list[ScriptEvent]:
        """End the current utterance with the words heard so far (Finalize, ForceEndpoint)."""
        if self._index >= len(self.script) or self._heard == 0:
            return []
        done = UtteranceDone(self._index, self._heard, forced=True)
        self._next()
        return [done]

    def _next(self) -> None:
        self._index += 1
        self._heard = 0
        self._started = False


@attrs.frozen
class ServerFault:
    """One fault on the wire, in a vendor-neutral form.

    Attributes:
        after: seconds of audio the session must have received first; ``None`` means at the
            WebSocket handshake.
        http_status: reject the handshake with this HTTP status (only with ``after=None``).
        close_code: close the socket with this code (after an in-band error when
            ``in_band``).
        reason: the message of the in-band error and the close reason.
        in_band: send the vendor's Error message before closing.
        malformed: send a text frame that is not JSON instead of an error.
        text: send this text frame as it is (an unknown message type, say).
        stall: stop answering (keep the socket open, accept audio, send nothing).
        empty: from now on, finals carry no words.
        session: which streaming session it hits (0 = the first); ``None`` hits every one.
        final: a quiet fault on the ``nth`` final (a :class:`~sttrouter.testing.FaultKind`
            of :data:`~sttrouter.testing.FINAL_FAULTS`, or ``BAD_AUDIO``: the close above
            comes instead of that final).
        nth: which final of the session ``final`` hits (0 = the first).
        echo_key: the error text repeats the client's ``Authorization`` value.
        read_stall: stop reading the socket, close, and hold the connection open.
    """

    after: float | None = None
    http_status: int | None = None
    close_code: int | None = None
    reason: str = ""
    in_band: bool = True
    malformed: bool = False
    text: str | None = None
    stall: bool = False
    empty: bool = False
    session: int | None = None
    final: FaultKind | None = None
    nth: int = 0
    echo_key: bool = False
    read_stall: bool = False

    def applies_to(self, index: int) -> bool:
        return self.session is None or self.session == index

    def __attrs_post_init__(self) -> None:
        if self.http_status is not None and self.after is not None:
            raise ConfigError("an HTTP rejection happens at the handshake; leave after=None")


FaultsInput = FaultPlan | Iterable[ServerFault] | None


@attrs.define
class SessionRecord:
    """What one streaming session received, for assertions.

    Attributes:
        path: the request path.
        query: query parameters (last value per key).
        query_lists: every value of every query parameter, in order (a repeated key such as
            Deepgram's ``keyterm`` has several).
        headers: request headers, lower-case names, the authorization header removed.
        authorized: whether the credentials matched.
        audio_bytes: binary payload received.
        chunk_sizes: size of every binary message.
        controls: the ``type`` of every text message, in order.
        close_code: the code the server closed with.
    """

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    authorized: bool = False
    audio_bytes: int = 0
    chunk_sizes: list[int] = attrs.Factory(list)
    controls: list[str] = attrs.Factory(list)
    close_code: int | None = None
    query_lists: dict[str, list[str]] = attrs.Factory(dict)

    @classmethod
    def of(cls, ws: Any) -> SessionRecord:
        """The record of a Starlette WebSocket's request (credentials left out)."""
        headers = {k: v for k, v in ws.headers.items() if k.lower() != "authorization"}
        lists: dict[str, list[str]] = {}
        for key, value in ws.query_params.multi_items():
            lists.setdefault(key, []).append(value)
        return cls(ws.url.path, dict(ws.query_params), headers, query_lists=lists)


@attrs.frozen
class RequestRecord:
    """One plain HTTP request the server answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    body_bytes: int


def vendor_faults(
    faults: FaultsInput, table: dict[FaultKind, ServerFault]
) -> tuple[ServerFault, ...]:
    """Map a :class:`FaultPlan` onto a vendor's wire faults; pass ``ServerFault`` lists through.

    ``table`` gives each vendor's wire behaviour for a fault kind at the handshake
    (``after=None``); with ``after`` set, the same fault happens in band once that much audio
    has been received (an HTTP status becomes the vendor's close code). A fault's ``stream``
    picks the streaming session it hits.
    """
    if faults is None:
        return ()
    if not isinstance(faults, FaultPlan):
        return tuple(faults)
    out: list[ServerFault] = []
    for f in faults.faults:
        wire = table.get(f.kind)
        if wire is None:
            raise ConfigError(
                f"fault {f.kind.value!r} is not supported by this fake server; "
                f"use one of {', '.join(sorted(k.value for k in table))} or a ServerFault"
            )
        if f.on_final:
            wire = attrs.evolve(wire, final=f.kind, nth=f.nth, http_status=None)
        elif f.after is not None:
            wire = attrs.evolve(wire, after=f.after, http_status=None)
        out.append(attrs.evolve(wire, session=f.stream))
    return tuple(out)


class FakeStreamSession:
    """What every fake vendor stream shares: its script player, its faults and when they fire.

    A vendor's session subclasses it and supplies :attr:`MALFORMED` (a truncated message in
    the vendor's shape) and :meth:`reject` (how the vendor reports an error and closes).
    """

    MALFORMED = "{"

    def __init__(
        self, script: Sequence[ScriptedUtterance], faults: Sequence[ServerFault], index: int,
        ws: Any, record: SessionRecord, bytes_per_second: int,
    ) -> None:  # fmt: skip
        self.ws = ws
        self.record = record
        self.index = index
        self.player = ScriptPlayer(script)
        self.faults = [f for f in faults if f.after is not None and f.applies_to(index)]
        self.final_faults = [f for f in faults if f.final is not None and f.applies_to(index)]
        self.bytes_per_second = bytes_per_second
        self.stalled = False
        self.empty = False
        self.over = False
        self.stopping = False
        self.finals = 0
        self.hold: asyncio.Event | None = None
        """Set by the server: a read-stalled session waits for it before it ends."""

    @property
    def seconds(self) -> float:
        """Seconds of audio this stream has received."""
        return self.record.audio_bytes / self.bytes_per_second

    async def reject(self, code: int, reason: str, *, in_band: bool) -> None:
        raise NotImplementedError

    async def check_faults(self) -> bool:
        """Fire the faults now due; False once one has ended the session."""
        for fault in list(self.faults):
            assert fault.after is not None
            if self.seconds + 1e-9 < fault.after:
                continue
            self.faults.remove(fault)
            if not await self.apply(fault):
                return False
        return True

    def final_fault(self) -> ServerFault | None:
        """The quiet fault that hits the final about to be sent, if any (counts it)."""
        n = self.finals
        self.finals += 1
        for f in self.final_faults:
            if f.final is FaultKind.INTERIMS_ONLY and n >= f.nth:
                return f
            if f.final is FaultKind.NO_LAST_FINAL and self.stopping:
                return f
            if f.final not in (FaultKind.INTERIMS_ONLY, FaultKind.NO_LAST_FINAL) and n == f.nth:
                return f
        return None

    async def send_final(self, message: dict[str, Any], fault: ServerFault | None) -> None:
        """Send a final (its wire dict), as ``fault`` mangles it, withholds it, or replaces
        it with a close."""
        if fault is None:
            await self.send_json(message)
            return
        kind = fault.final
        if kind is FaultKind.BAD_AUDIO:
            self.over = True
            await self.apply(attrs.evolve(fault, final=None))
            return
        if kind is FaultKind.UNPARSEABLE_FINAL:
            await self.send_json(self.unparseable(message))
        elif kind in MANGLED:
            fields = {k: v for k, v in MANGLED[kind].items() if k in message}
            await self.send_json({**message, **fields})
        # SKIP_FINAL, INTERIMS_ONLY, NO_LAST_FINAL: nothing is sent

    def unparseable(self, message: dict[str, Any]) -> dict[str, Any]:
        """A final the vendor's SDK cannot fit to its schema."""
        return {**message, "channel": "garbage"}

    async def send_json(self, message: dict[str, Any]) -> None:
        if not self.stalled:
            await self.ws.send_text(json.dumps(message))

    def echo(self, text: str) -> str:
        """``text`` followed by the client's Authorization value (a server that echoes it)."""
        return f"{text}: {self.ws.headers.get('authorization', '')}"

    async def apply(self, fault: ServerFault) -> bool:
        if fault.echo_key:
            fault = attrs.evolve(fault, reason=self.echo(fault.reason), echo_key=False)
        if fault.read_stall:
            self.over = True
            await self.reject(fault.close_code or 1008, fault.reason, in_band=False)
            if self.hold is not None:
                await self.hold.wait()  # never read again until the server stops
            return False
        if fault.stall:
            self.stalled = True
        if fault.empty:
            self.empty = True
        if fault.malformed:
            await self.ws.send_text(self.MALFORMED)
        if fault.text is not None:
            await self.ws.send_text(fault.text)
        if fault.close_code is not None:
            await self.reject(fault.close_code, fault.reason, in_band=fault.in_band)
            return False
        return True


class FakeVendorServer:
    """Base of the fake vendor servers: one uvicorn server on 127.0.0.1, port 0.

    Subclasses implement :meth:`routes`. Use as an async context manager; ``base_url`` is
    ``http://127.0.0.1:<port>`` and ``ws_url`` is ``ws://127.0.0.1:<port>``.
    """

    def __init__(self) -> None:
        self.sessions: list[SessionRecord] = []
        self.requests: list[RequestRecord] = []
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = 0
        self.faults: tuple[ServerFault, ...] = ()
        self.released = asyncio.Event()
        """Set when the server stops: read-stalled sessions end then."""

    def _handshake_fault(self, session: int | None = None) -> ServerFault | None:
        """The fault at connect for streaming session ``session`` (``None``: a REST call)."""
        return next(
            (
                f
                for f in self.faults
                if f.after is None and f.final is None and f.session in (None, session)
            ),
            None,
        )

    def routes(self) -> list[Any]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeVendorServer:
        try:
            import uvicorn
            from starlette.applications import Starlette
        except ImportError as exc:  # pragma: no cover - both ship with the server extra
            raise MissingDependency(exc.name or "starlette", "server") from exc
        app = Starlette(routes=self.routes())
        config = uvicorn.Config(
            app,
            log_level="critical",
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():  # pragma: no cover - startup failed
                self._task.result()
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await self._task
        if self._socket is not None:
            self._socket.close()
