"""``FakeDeepgramServer``: a local server that speaks Deepgram's listen v1 protocol.

Real sockets on ``127.0.0.1`` port 0, so the real ``deepgram-sdk`` (or any client) talks to it
exactly as to ``api.deepgram.com``::

    async with FakeDeepgramServer(script=[("Hello world.", 0.3, 1.0)], api_key="k") as server:
        endpoint = deepgram_endpoint(base_url=server.base_url)  # DEEPGRAM_API_KEY=k
        ...

What it serves:

* ``WS /v1/listen``: checks ``Authorization: Token <key>`` (401 on a wrong key), records the
  query, counts the audio it receives and, as that audio passes each scripted word, sends an
  interim ``Results`` (with ``interim_results=true``), a ``SpeechStarted`` (with
  ``vad_events=true``), a final ``Results`` with ``speech_final`` at each utterance end, and
  ``UtteranceEnd`` once ``utterance_end_ms`` of audio passed the last word (with
  ``utterance_end_ms``). ``Finalize`` flushes the words heard so far (``from_finalize``);
  ``CloseStream`` flushes, sends ``Metadata`` and closes with 1000; ``KeepAlive`` is recorded.
* ``POST /v1/listen``: prerecorded transcription of a WAV body (or raw ``linear16`` with
  ``sample_rate``): the scripted words that lie inside the audio.
* ``GET /v1/projects``: the cheap authenticated call ``probe()`` uses.

Faults: a :class:`~sttrouter.testing.FaultPlan` (auth → 401 / close 1008, quota → 402,
rate limit → 429 / close 1013, drop → close 1011 ``NET-0000``, connect fail → 503, malformed
→ a non-JSON frame, stall, empty finals, bad audio → close 1002 ``DATA-0000``, key echo →
401 / close 1008 repeating the ``Authorization`` value, read stall → close 1008 and no more
reading; and the quiet liars on the ``nth`` final: skipped, unparseable for deepgram-sdk
(it yields ``None``), NaN / infinite / 1e12 / negative times, ``"is_final": "false"``,
interims only, no final for ``Finalize`` / ``CloseStream``) or a list of
:class:`~sttrouter.testing.ServerFault` for anything else (in-band ``Error``, 1002
``DATA-0000``...).
"""

from __future__ import annotations

import json
import uuid
import wave
from typing import Any

from sttrouter.errors import MalformedResponse
from sttrouter.testing._fake_server import (
    FakeStreamSession,
    FakeVendorServer,
    FaultsInput,
    RequestRecord,
    ScriptedUtterance,
    ScriptInput,
    ServerFault,
    SessionRecord,
    UtteranceDone,
    UtteranceStarted,
    WordHeard,
    normalise_script,
    vendor_faults,
    wav_seconds,
)
from sttrouter.testing._faults import FINAL_FAULTS, FaultKind
from sttrouter.wire import deepgram as dg

__all__ = ["DEEPGRAM_FAULTS", "FakeDeepgramServer"]

DEEPGRAM_FAULTS: dict[FaultKind, ServerFault] = {
    FaultKind.AUTH: ServerFault(
        http_status=401, close_code=1008, reason="Invalid credentials", in_band=False
    ),
    FaultKind.QUOTA: ServerFault(
        http_status=402, close_code=1008, reason="Insufficient balance", in_band=False
    ),
    FaultKind.RATE_LIMIT: ServerFault(
        http_status=429, close_code=1013, reason="Too many requests", in_band=False
    ),
    FaultKind.DROP: ServerFault(close_code=1011, reason="NET-0000", in_band=False),
    FaultKind.CONNECT_FAIL: ServerFault(http_status=503, close_code=1011, reason="unavailable"),
    FaultKind.MALFORMED: ServerFault(malformed=True),
    FaultKind.STALL: ServerFault(stall=True),
    FaultKind.EMPTY_FINALS: ServerFault(empty=True),
    FaultKind.BAD_AUDIO: ServerFault(close_code=1002, reason="DATA-0000"),
    FaultKind.KEY_ECHO: ServerFault(
        http_status=401,
        close_code=1008,
        reason="Invalid credentials",
        in_band=False,
        echo_key=True,
    ),
    FaultKind.READ_STALL_CLOSE: ServerFault(
        close_code=1008, reason="Policy violation", read_stall=True
    ),
    **{kind: ServerFault(final=kind) for kind in FINAL_FAULTS if kind is not FaultKind.DEAF},
}
"""How each :class:`~sttrouter.testing.FaultKind` shows on Deepgram's wire."""


def _json_response(body: str | bytes, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(body, status_code=status, media_type="application/json")


class _Session(FakeStreamSession):
    """One ``/v1/listen`` stream: audio in, scripted messages out."""

    MALFORMED = '{"type": "Results", "channel": '

    def __init__(self, server: FakeDeepgramServer, ws: Any, record: SessionRecord) -> None:
        self.options = dg.ListenOptions.from_query(record.query)
        super().__init__(
            server.script, server.faults, len(server.sessions) - 1, ws, record,
            2 * self.options.channels * self.options.sample_rate,
        )  # fmt: skip
        self.server = server
        self.request_id = str(uuid.uuid4())
        self.pending_utterance_end: float | None = None
        self._last_word_end = 0.0

    async def reject(self, code: int, reason: str, *, in_band: bool) -> None:
        if in_band:
            await self.send(dg.Error(description=reason, variant="ServerError"))
        await self.close(code, reason)

    async def send(self, msg: dg.ServerMessage) -> None:
        if not self.stalled:
            await self.ws.send_text(dg.serialize_server_message(msg))

    async def close(self, code: int, reason: str = "") -> None:
        self.record.close_code = code
        await self.ws.close(code=code, reason=reason)

    def _words(self, utt: ScriptedUtterance, count: int) -> tuple[dg.Word, ...]:
        punct = bool(self.options.punctuate or self.options.smart_format)
        return tuple(
            dg.Word(
                word=w.plain,
                start=w.start,
                end=w.end,
                confidence=0.99,
                punctuated_word=w.text if punct else None,
            )
            for w in utt.words[:count]
        )

    def _results(
        self,
        utt: ScriptedUtterance,
        count: int,
        *,
        is_final: bool = False,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dg.Results:
        words = () if self.empty and is_final else self._words(utt, count)
        return dg.Results(
            transcript=" ".join(w.text for w in words),
            start=utt.start,
            duration=round(utt.words[count - 1].end - utt.start, 6),
            confidence=0.99 if words else 0.0,
            words=words,
            request_id=self.request_id,
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
        )

    async def play(self, events: list[Any], *, finalize: bool = False) -> None:
        script = self.server.script
        for ev in events:
            utt = script[ev.index]
            if isinstance(ev, UtteranceStarted):
                if self.options.vad_events:
                    await self.send(dg.SpeechStarted(timestamp=utt.start))
            elif isinstance(ev, WordHeard):
                if self.options.interim_results:
                    await self.send(self._results(utt, ev.count))
            elif isinstance(ev, UtteranceDone):
                speech_final = not ev.forced and self.options.endpointing is not False
                final = self._results(
                    utt, ev.count, is_final=True, speech_final=speech_final, from_finalize=finalize
                )
                await self.send_final(dg.server_message_dict(final), self.final_fault())
                if self.over:
                    return
                if self.options.utterance_end_ms is not None and not ev.forced:
                    last = utt.words[ev.count - 1].end
                    self.pending_utterance_end = last + self.options.utterance_end_ms / 1000
                    self._last_word_end = last

    async def audio(self, data: bytes) -> bool:
        """Take one binary message; return False once the session is over."""
        self.record.audio_bytes += len(data)
        self.record.chunk_sizes.append(len(data))
        await self.play(self.player.advance(self.seconds))
        if self.over:
            return False
        if self.pending_utterance_end is not None and self.seconds >= self.pending_utterance_end:
            self.pending_utterance_end = None
            await self.send(dg.UtteranceEnd(last_word_end=self._last_word_end))
        return await self.check_faults()

    async def control(self, text: str) -> bool:
        try:
            msg = dg.parse_client_message(text)
        except MalformedResponse as exc:
            self.record.controls.append("<invalid>")
            await self.send(dg.Error(description=str(exc), variant="SchemaError"))
            return True
        self.record.controls.append(msg.type)
        # NO_LAST_FINAL: the finals a flush forces (the adapter sends Finalize, then
        # CloseStream, when it stops) never come
        self.stopping = msg.type in ("Finalize", "CloseStream")
        if msg.type in ("Finalize", "CloseStream"):
            await self.play(self.player.flush(), finalize=msg.type == "Finalize")
        if self.over:
            return False
        if msg.type == "CloseStream":
            await self.send(
                dg.Metadata(
                    request_id=self.request_id,
                    duration=round(self.seconds, 6),
                    channels=self.options.channels,
                    created="2026-01-01T00:00:00.000Z",
                )
            )
            await self.close(1000)
            return False
        return True


class FakeDeepgramServer(FakeVendorServer):
    """A local Deepgram (listen v1 streaming, prerecorded, projects) for tests.

    Args:
        script: utterances as :class:`~sttrouter.testing.ScriptedUtterance` or
            ``(text, start, end)`` tuples (words spread evenly), in audio seconds.
        faults: a :class:`~sttrouter.testing.FaultPlan` (a fault's ``stream`` picks the
            session it hits; ``None`` hits every one) or a
            :class:`~sttrouter.testing.ServerFault` list.
        api_key: the key clients must send as ``Authorization: Token <key>``; ``None``
            accepts any.
        idle_timeout: close with 1011 ``NET-0001`` after this many (real) seconds without
            audio or ``KeepAlive``, like Deepgram's 10 s; ``None`` never.

    Attributes:
        sessions: a :class:`~sttrouter.testing.SessionRecord` per stream, in order.
        requests: every plain HTTP request answered.
    """

    def __init__(
        self,
        script: ScriptInput = (),
        *,
        faults: FaultsInput = None,
        api_key: str | None = "test-key",
        idle_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.script = normalise_script(script)
        self.faults = vendor_faults(faults, DEEPGRAM_FAULTS)
        self.api_key = api_key
        self.idle_timeout = idle_timeout

    def _authorized(self, headers: Any) -> bool:
        if self.api_key is None:
            return True
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() in ("token", "bearer") and token == self.api_key

    def routes(self) -> list[Any]:
        from starlette.routing import Route, WebSocketRoute

        return [
            WebSocketRoute("/v1/listen", self._listen),
            Route("/v1/listen", self._prerecorded, methods=["POST"]),
            Route("/v1/projects", self._projects, methods=["GET"]),
        ]

    # -- HTTP -------------------------------------------------------------------------------
    def _http_error(self, request: Any) -> tuple[int, str] | None:
        if not self._authorized(request.headers):
            return 401, '{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}'
        fault = self._handshake_fault()
        if fault is not None and fault.http_status is not None:
            body = {"err_code": "FAULT", "err_msg": self._echo(fault, request.headers)}
            return fault.http_status, json.dumps(body)
        return None

    @staticmethod
    def _echo(fault: ServerFault, headers: Any) -> str:
        """The fault's reason, with the client's Authorization value when it echoes it."""
        if not fault.echo_key:
            return fault.reason
        return f"{fault.reason}: {headers.get('authorization', '')}"

    def _remember(self, request: Any, status: int, body: bytes = b"") -> None:
        self.requests.append(
            RequestRecord(
                request.method, request.url.path, dict(request.query_params), status, len(body)
            )
        )

    async def _projects(self, request: Any) -> Any:
        err = self._http_error(request)
        self._remember(request, err[0] if err else 200)
        if err:
            return _json_response(err[1], err[0])
        return _json_response('{"projects":[{"project_id":"fake-project","name":"fake"}]}')

    async def _prerecorded(self, request: Any) -> Any:
        body = await request.body()
        err = self._http_error(request)
        self._remember(request, err[0] if err else 200, body)
        if err:
            return _json_response(err[1], err[0])
        query = dict(request.query_params)
        try:
            duration = wav_seconds(body, int(query.get("sample_rate", 16000)))
        except (wave.Error, EOFError, ValueError):
            return _json_response(
                '{"err_code":"Bad Request","err_msg":"Bad Request: failed to process audio: '
                'corrupt or unsupported data"}',
                400,
            )
        punct = query.get("punctuate") == "true" or query.get("smart_format") == "true"
        words = tuple(
            dg.Word(w.plain, w.start, w.end, 0.99, w.text if punct else None)
            for utt in self.script
            for w in utt.words
            if w.end <= duration + 1e-9
        )
        resp = dg.PrerecordedResponse(
            request_id=str(uuid.uuid4()),
            duration=duration,
            channels=((" ".join(w.text for w in words), 0.99, words),),
        )
        return _json_response(dg.serialize_prerecorded(resp))

    # -- streaming --------------------------------------------------------------------------
    async def _listen(self, ws: Any) -> None:
        from starlette.responses import Response

        record = SessionRecord.of(ws)
        self.sessions.append(record)
        record.authorized = self._authorized(ws.headers)
        if not record.authorized:
            await ws.send_denial_response(
                Response("Websocket initialized with invalid credentials.", status_code=401)
            )
            return
        fault = self._handshake_fault(len(self.sessions) - 1)
        if fault is not None and fault.http_status is not None:
            reason = self._echo(fault, ws.headers)
            await ws.send_denial_response(Response(reason, status_code=fault.http_status))
            return
        await ws.accept()
        session = _Session(self, ws, record)
        session.hold = self.released
        if fault is not None and not await session.apply(fault):
            return
        if not await session.check_faults():
            return
        await self._serve(ws, session)

    async def _serve(self, ws: Any, session: _Session) -> None:
        import anyio

        while True:
            with anyio.move_on_after(self.idle_timeout) as scope:
                message = await ws.receive()
            if scope.cancelled_caught:
                await session.close(1011, "NET-0001")
                return
            if message["type"] == "websocket.disconnect":
                session.record.close_code = message.get("code")
                return
            data = message.get("bytes")
            if data is not None:
                if not data:  # an empty frame ends the stream, like CloseStream
                    keep = await session.control('{"type": "CloseStream"}')
                else:
                    keep = await session.audio(data)
            else:
                keep = await session.control(message.get("text") or "")
            if not keep:
                return
