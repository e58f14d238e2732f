"""``FakeAssemblyAIServer``: a local server that speaks AssemblyAI's v3 streaming and v2 REST.

Real sockets on ``127.0.0.1`` port 0, so the real ``assemblyai`` SDK talks to it as to
``streaming.assemblyai.com`` / ``api.assemblyai.com``::

    async with FakeAssemblyAIServer(script=[("Hello world.", 0.3, 1.0)], api_key="k") as srv:
        endpoint = assemblyai_endpoint(base_url=srv.base_url)  # ASSEMBLYAI_API_KEY=k
        ...

What it serves:

* ``WS /v3/ws``: the raw key in ``Authorization``; a wrong key is answered the way AssemblyAI
  documents it, *after* the upgrade: ``Error`` 1008 then close 1008. Otherwise ``Begin``,
  then, as the audio received passes each scripted word, an unformatted partial ``Turn``; at
  each utterance end a ``Turn`` with ``end_of_turn`` and, with ``format_turns=true``, the
  formatted one. ``ForceEndpoint`` ends the current turn with the words heard so far;
  ``Terminate`` does the same, sends ``Termination`` and closes with 1000. Every audio message
  must last 50–1000 ms (error 3007 otherwise), like the real service. ``sample_rate`` is
  required.
* ``POST /v2/upload``, ``POST /v2/transcript``, ``GET /v2/transcript/{id}`` (``processing``
  for ``polls_until_done`` polls, then ``completed`` with the scripted words inside the
  audio), and ``GET /v2/transcript`` (the list ``probe()`` uses; it bills nothing).

Faults: a :class:`~sttrouter.testing.FaultPlan` (auth → ``Error`` + close 1008, quota → 1008
"Insufficient account balance", rate limit → 3009, drop → close 3005 without an Error frame,
connect fail → HTTP 503, malformed → a non-JSON frame, stall, empty finals) or a list of
:class:`~sttrouter.testing.ServerFault` (an ``http_status`` also applies to the REST routes).
"""

from __future__ import annotations

import itertools
import time
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
    WordHeard,
    normalise_script,
    vendor_faults,
    wav_seconds,
)
from sttrouter.testing._faults import FaultKind
from sttrouter.wire import assemblyai as aai

__all__ = ["ASSEMBLYAI_FAULTS", "FakeAssemblyAIServer"]

ASSEMBLYAI_FAULTS: dict[FaultKind, ServerFault] = {
    FaultKind.AUTH: ServerFault(close_code=1008, reason="Unauthorized Connection: Invalid API key"),
    FaultKind.QUOTA: ServerFault(
        close_code=1008, reason="Unauthorized Connection: Insufficient account balance"
    ),
    FaultKind.RATE_LIMIT: ServerFault(close_code=3009, reason="Too many concurrent sessions"),
    FaultKind.DROP: ServerFault(close_code=3005, reason="Server error", in_band=False),
    FaultKind.CONNECT_FAIL: ServerFault(http_status=503, reason="Service Unavailable"),
    FaultKind.MALFORMED: ServerFault(malformed=True),
    FaultKind.STALL: ServerFault(stall=True),
    FaultKind.EMPTY_FINALS: ServerFault(empty=True),
}
"""How each :class:`~sttrouter.testing.FaultKind` shows on AssemblyAI's wire."""


def _json(body: str, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(body, status_code=status, media_type="application/json")


def _aai_words(utt: ScriptedUtterance, count: int, *, formatted: bool) -> tuple[aai.Word, ...]:
    return tuple(
        aai.Word(
            text=w.text if formatted else w.plain,
            start=round(w.start * 1000),
            end=round(w.end * 1000),
            confidence=0.98,
            word_is_final=True,
        )
        for w in utt.words[:count]
    )


class _Session(FakeStreamSession):
    """One ``/v3/ws`` stream."""

    MALFORMED = '{"type": "Turn", "transcript": '

    def __init__(self, server: FakeAssemblyAIServer, ws: Any, record: SessionRecord) -> None:
        self.sample_rate = int(record.query.get("sample_rate", "16000"))
        super().__init__(
            server.script, server.faults, len(server.sessions) - 1, ws, record,
            2 * self.sample_rate,
        )  # fmt: skip
        self.server = server
        self.format_turns = aai.parse_bool(record.query.get("format_turns", "false"))
        self.started = time.monotonic()

    async def reject(self, code: int, reason: str, *, in_band: bool) -> None:
        await self.error(code, reason, in_band=in_band)

    async def send(self, msg: aai.ServerMessage) -> None:
        if not self.stalled:
            await self.ws.send_text(aai.serialize_server_message(msg))

    async def error(self, code: int, reason: str, *, in_band: bool = True) -> None:
        if in_band:
            await self.ws.send_text(
                aai.serialize_server_message(aai.Error(error=reason, error_code=code))
            )
        self.record.close_code = code
        await self.ws.close(code=code, reason=reason[:120])

    async def play(self, events: list[Any]) -> None:
        for ev in events:
            utt = self.server.script[ev.index]
            if isinstance(ev, WordHeard):
                words = _aai_words(utt, ev.count, formatted=False)
                await self.send(
                    aai.Turn(
                        turn_order=ev.index,
                        transcript=" ".join(w.text for w in words),
                        words=words,
                        end_of_turn_confidence=0.1,
                    )
                )
            elif isinstance(ev, UtteranceDone):
                for formatted in (False, True) if self.format_turns else (False,):
                    words = () if self.empty else _aai_words(utt, ev.count, formatted=formatted)
                    await self.send(
                        aai.Turn(
                            turn_order=ev.index,
                            transcript=" ".join(w.text for w in words),
                            end_of_turn=True,
                            turn_is_formatted=formatted,
                            end_of_turn_confidence=0.9,
                            words=words,
                            language_code="en",
                        )
                    )

    async def audio(self, data: bytes) -> bool:
        self.record.chunk_sizes.append(len(data))
        violation = aai.chunk_violation(len(data), self.bytes_per_second)
        if violation is not None:
            await self.error(3007, violation)
            return False
        self.record.audio_bytes += len(data)
        await self.play(self.player.advance(self.seconds))
        return await self.check_faults()

    async def control(self, text: str) -> bool:
        try:
            msg = aai.parse_client_message(text)
        except MalformedResponse as exc:
            self.record.controls.append("<invalid>")
            await self.error(3006, f"Input validation error: {exc}")
            return False
        self.record.controls.append(msg.type)
        if msg.type in ("ForceEndpoint", "Terminate"):
            await self.play(self.player.flush())
        if msg.type == "Terminate":
            await self.send(
                aai.Termination(
                    audio_duration_seconds=int(self.seconds),
                    session_duration_seconds=int(time.monotonic() - self.started),
                )
            )
            self.record.close_code = 1000
            await self.ws.close(code=1000)
            return False
        return True


class FakeAssemblyAIServer(FakeVendorServer):
    """A local AssemblyAI (v3 streaming, v2 batch) for tests.

    Args:
        script: utterances (:class:`~sttrouter.testing.ScriptedUtterance` or
            ``(text, start, end)``), in audio seconds.
        faults: a :class:`~sttrouter.testing.FaultPlan` or a list of
            :class:`~sttrouter.testing.ServerFault`.
        api_key: the raw key clients must send in ``Authorization``; ``None`` accepts any.
        polls_until_done: how many ``GET /v2/transcript/{id}`` answer ``processing`` first.
        batch_error: when set, batch transcripts end with ``status: error`` and this text.
        send_begin: ``False`` to accept the socket and never send ``Begin``.

    Attributes:
        sessions: a :class:`~sttrouter.testing.SessionRecord` per stream.
        requests: every REST request answered.
        uploads: the bodies received on ``/v2/upload``.
    """

    def __init__(
        self,
        script: ScriptInput = (),
        *,
        faults: FaultsInput = None,
        api_key: str | None = "test-key",
        polls_until_done: int = 1,
        batch_error: str | None = None,
        send_begin: bool = True,
    ) -> None:
        super().__init__()
        self.script = normalise_script(script)
        self.faults = vendor_faults(faults, ASSEMBLYAI_FAULTS)
        self.api_key = api_key
        self.polls_until_done = polls_until_done
        self.batch_error = batch_error
        self.send_begin = send_begin
        self.uploads: dict[str, bytes] = {}
        self._transcripts: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def _authorized(self, headers: Any) -> bool:
        return self.api_key is None or headers.get("authorization", "") == self.api_key

    def routes(self) -> list[Any]:
        from starlette.routing import Route, WebSocketRoute

        return [
            WebSocketRoute("/v3/ws", self._stream),
            Route("/v2/upload", self._upload, methods=["POST"]),
            Route("/v2/transcript", self._create, methods=["POST"]),
            Route("/v2/transcript", self._list, methods=["GET"]),
            Route("/v2/transcript/{tid}", self._get, methods=["GET"]),
        ]

    # -- REST ---------------------------------------------------------------------------------
    async def _guard(self, request: Any, body: bytes = b"") -> Any:
        status, text = 200, ""
        fault = self._handshake_fault()
        if not self._authorized(request.headers):
            status, text = 401, "Authentication error, API token missing/invalid"
        elif fault is not None and fault.http_status is not None:
            status, text = fault.http_status, fault.reason
        self.requests.append(
            RequestRecord(
                request.method, request.url.path, dict(request.query_params), status, len(body)
            )
        )
        if status != 200:
            import json

            return _json(json.dumps({"error": text}), status)
        return None

    async def _upload(self, request: Any) -> Any:
        body = await request.body()
        if (denied := await self._guard(request, body)) is not None:
            return denied
        uid = f"upload-{next(self._ids)}"
        self.uploads[uid] = body
        return _json(f'{{"upload_url": "{self.base_url}/files/{uid}"}}')

    async def _create(self, request: Any) -> Any:
        import json

        body = await request.body()
        if (denied := await self._guard(request, body)) is not None:
            return denied
        config = json.loads(body)
        tid = str(uuid.uuid4())
        self._transcripts[tid] = {"config": config, "polls": 0}
        t = aai.Transcript(
            id=tid, status=aai.TranscriptStatus.QUEUED, audio_url=config["audio_url"]
        )
        return _json(aai.serialize_transcript(t))

    async def _list(self, request: Any) -> Any:
        if (denied := await self._guard(request)) is not None:
            return denied
        limit = request.query_params.get("limit", "10")
        url = f"{self.base_url}/v2/transcript?limit={limit}"
        return _json(
            f'{{"page_details": {{"limit": {int(limit)}, "result_count": 0, '
            f'"current_url": "{url}", "prev_url": null, "next_url": null}}, "transcripts": []}}'
        )

    async def _get(self, request: Any) -> Any:
        if (denied := await self._guard(request)) is not None:
            return denied
        tid = request.path_params["tid"]
        entry = self._transcripts.get(tid)
        if entry is None:
            return _json('{"error": "Transcript not found"}', 404)
        audio_url: str = entry["config"]["audio_url"]
        entry["polls"] += 1
        if entry["polls"] <= self.polls_until_done:
            t = aai.Transcript(id=tid, status=aai.TranscriptStatus.PROCESSING, audio_url=audio_url)
            return _json(aai.serialize_transcript(t))
        if self.batch_error is not None:
            t = aai.Transcript(
                id=tid,
                status=aai.TranscriptStatus.ERROR,
                audio_url=audio_url,
                error=self.batch_error,
            )
            return _json(aai.serialize_transcript(t))
        body = self.uploads.get(audio_url.rsplit("/", 1)[-1], b"")
        try:
            duration = wav_seconds(body, 16000)
        except (wave.Error, EOFError):
            t = aai.Transcript(
                id=tid,
                status=aai.TranscriptStatus.ERROR,
                audio_url=audio_url,
                error="Transcoding failed. File does not appear to contain audio.",
            )
            return _json(aai.serialize_transcript(t))
        words = tuple(
            aai.Word(w.text, round(w.start * 1000), round(w.end * 1000), 0.98)
            for utt in self.script
            for w in utt.words
            if w.end <= duration + 1e-9
        )
        t = aai.Transcript(
            id=tid,
            status=aai.TranscriptStatus.COMPLETED,
            audio_url=audio_url,
            text=" ".join(w.text for w in words),
            words=words,
            confidence=0.98,
            audio_duration=duration,
            language_code="en_us",
        )
        return _json(aai.serialize_transcript(t))

    # -- streaming ----------------------------------------------------------------------------
    async def _stream(self, ws: Any) -> None:
        from starlette.responses import Response

        record = SessionRecord.of(ws)
        self.sessions.append(record)
        record.authorized = self._authorized(ws.headers)
        fault = self._handshake_fault(len(self.sessions) - 1)
        if fault is not None and fault.http_status is not None:
            await ws.send_denial_response(Response(fault.reason, status_code=fault.http_status))
            return
        await ws.accept()
        session = _Session(self, ws, record)
        if not record.authorized:
            await session.error(1008, "Unauthorized Connection: Invalid API key")
            return
        if "sample_rate" not in record.query:
            await session.error(3006, "Input validation error: sample_rate is required")
            return
        if fault is not None and not await session.apply(fault):
            return
        if self.send_begin:
            await session.send(aai.Begin(id=str(uuid.uuid4()), expires_at=int(time.time()) + 3600))
        if not await session.check_faults():
            return
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                record.close_code = message.get("code")
                return
            data = message.get("bytes")
            keep = (
                await session.audio(data)
                if data is not None
                else await session.control(message.get("text") or "")
            )
            if not keep:
                return
