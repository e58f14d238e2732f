"""Quiet and hostile engines through the real adapters: deepgram-sdk against
FakeDeepgramServer, the GLM-server adapter against FakeOpenAITranscriptionServer.

Each test failed before its fix: a NaN start raised ValueError inside the session, a final the
SDK could not parse vanished without a log line, a key echoed in a close reason or a 401 body
reached the error, the event and the log, a 45 s chunk went out as one frame, a stop cut short
left the socket open, an HTML 200 became the transcript, a huge body froze the loop, and an
engine's claim of bad audio ended the session."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sttrouter.audio import ENGINE_FORMAT
from sttrouter.endpoint import ConnectionConfig, Location, STTEndpoint
from sttrouter.errors import AuthenticationFailed, MalformedResponse, STTError
from sttrouter.events import RouteEvent
from sttrouter.providers.deepgram import DeepgramSTTService, deepgram_endpoint
from sttrouter.providers.glm_server import GLMServerSTTService
from sttrouter.results import STTResult
from sttrouter.service import STTService, iter_chunks, stream_transcribe
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.testing import (
    FakeDeepgramServer,
    FakeSTTService,
    Fault,
    FaultKind,
    FaultPlan,
    ScriptedUtterance,
    ScriptedWord,
    fake_endpoint,
    synthetic_speech,
)
from sttrouter.testing.openai_server import FakeOpenAITranscriptionServer
from sttrouter.wire.errors import REDACTED

pytestmark = pytest.mark.anyio

KEY = "dg-secret-0123456789"
SPEECH = synthetic_speech((4, 5, 4), word_seconds=0.15, lead_seconds=0.3)
# the scripted Deepgram says the marks' own words at their own times, so a backup that
# decodes the marks (FakeSTTService) continues it word for word after a failover
SCRIPT = [
    ScriptedUtterance(ScriptedWord(w, a, b) for w, a, b in SPEECH.words if lo <= a < hi)
    for lo, hi in SPEECH.utterances
]
WORDS = SPEECH.text.split()
# a scripted server plays its script from 0 on every stream, so a replay to it would repeat
# the first words: the primary refuses later streams, and the (decoding) backup replays
LATER_STREAMS_REFUSED = FaultPlan([Fault(FaultKind.CONNECT_FAIL, stream=i) for i in range(1, 6)])


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)


def deepgram(server: FakeDeepgramServer, id: str = "deepgram", **options: Any) -> STTService:
    endpoint = deepgram_endpoint(id=id, base_url=server.base_url, options=options)
    return DeepgramSTTService(endpoint)


async def collect(service: STTService, pcm: bytes = SPEECH.pcm) -> list[STTResult]:
    return list((await stream_transcribe(service, pcm, ENGINE_FORMAT)).results)


def words_of(results: list[STTResult]) -> Counter[str]:
    return Counter(w.word for r in results if r.is_final for w in r.words)


# -- wire sanity through deepgram-sdk -----------------------------------------------------------
@pytest.mark.parametrize(
    "kind", [FaultKind.NAN_TIME, FaultKind.INFINITE_TIME, FaultKind.NEGATIVE_DURATION]
)
async def test_insane_times_are_malformed_not_value_errors(kind: FaultKind) -> None:
    async with FakeDeepgramServer(SCRIPT, faults=FaultPlan.quiet(kind, 1), api_key=KEY) as srv:
        with pytest.raises(MalformedResponse, match=r"not finite|negative time"):
            await collect(deepgram(srv))


async def test_a_final_the_sdk_cannot_parse_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = FaultPlan.quiet(FaultKind.UNPARSEABLE_FINAL, 1)
    async with FakeDeepgramServer(SCRIPT, faults=plan, api_key=KEY) as srv:
        service = deepgram(srv)
        with caplog.at_level(logging.WARNING, logger="sttrouter.service"):
            results = await collect(service)
    assert service.dropped_messages == 1  # type: ignore[attr-defined]
    assert "deepgram-sdk yielded None" in caplog.text
    assert "w5" not in words_of(results)  # the adapter alone cannot know what it held


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan.skip_final(1),
        FaultPlan.quiet(FaultKind.UNPARSEABLE_FINAL, 1),
        FaultPlan.quiet(FaultKind.NOT_BOOL_FINAL, 1),  # the SDK coerces "false" to False
        FaultPlan.quiet(FaultKind.NAN_TIME, 1),
        FaultPlan.quiet(FaultKind.NEGATIVE_DURATION, 1),
        FaultPlan.bad_audio(nth=1),  # close 1002 DATA-0000 on audio the session validated
    ],
    ids=lambda p: p.faults[0].kind.value,
)
async def test_a_session_over_a_quiet_deepgram_loses_no_word(plan: FaultPlan) -> None:
    events: list[RouteEvent] = []
    plan = plan | LATER_STREAMS_REFUSED
    async with FakeDeepgramServer(SCRIPT, faults=plan, api_key=KEY) as bad:
        primary = deepgram(bad, "primary")
        backup = FakeSTTService(fake_endpoint("backup"))
        session = RoutedSession(
            [primary.endpoint, backup.endpoint],
            service_factory=lambda ep: primary if ep.id == "primary" else backup,
            config=SessionConfig(final_timeout=5.0, stop_timeout=10.0),
            on_event=events.append,
        )
        results = await collect(session)
    counts = words_of(results)
    assert all(counts[w] == 1 for w in WORDS), counts
    assert not session.uncovered
    assert any(e.kind.value in ("failover", "failed") for e in events)


async def test_a_last_final_that_never_comes_is_replayed() -> None:
    """Speech still running at stop: Deepgram's closing final is missing (a clean close)."""
    cut = SPEECH.pcm[: ENGINE_FORMAT.bytes_for(3.1)]  # w13 (3.10..3.25 s) is not sent
    plan = FaultPlan.quiet(FaultKind.NO_LAST_FINAL) | LATER_STREAMS_REFUSED
    async with FakeDeepgramServer(SCRIPT, faults=plan, api_key=KEY) as bad:
        primary = deepgram(bad, "primary")
        backup = FakeSTTService(fake_endpoint("backup"))
        session = RoutedSession(
            [primary.endpoint, backup.endpoint],
            service_factory=lambda ep: primary if ep.id == "primary" else backup,
        )
        results = await collect(session, cut)
    assert words_of(results) == Counter(WORDS[:-1])
    assert backup.streams_started == 1


# -- secrets ------------------------------------------------------------------------------------
async def test_a_key_echoed_in_a_close_reason_is_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[RouteEvent] = []
    async with FakeDeepgramServer(SCRIPT, faults=FaultPlan.key_echo(after=0.5), api_key=KEY) as bad:
        with pytest.raises(AuthenticationFailed) as info:
            await collect(deepgram(bad))
        primary = deepgram(bad, "primary")
        backup = FakeSTTService(fake_endpoint("backup"))
        session = RoutedSession(
            [primary.endpoint, backup.endpoint],
            service_factory=lambda ep: primary if ep.id == "primary" else backup,
            on_event=events.append,
        )
        with caplog.at_level(logging.DEBUG, logger="sttrouter"):
            results = await collect(session)
    assert KEY not in str(info.value)
    assert REDACTED in str(info.value)
    assert info.value.__cause__ is None  # the SDK's exception holds the key
    assert words_of(results) == Counter(WORDS)
    reasons = " ".join(e.reason or "" for e in events)
    assert "Invalid credentials" in reasons
    assert KEY not in reasons
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sttrouter")]
    assert ours
    assert not [m for m in ours if KEY in m]  # (websockets' own DEBUG lines show frames)


async def test_a_key_echoed_in_a_401_body_is_scrubbed() -> None:
    async with FakeDeepgramServer(SCRIPT, faults=FaultPlan.key_echo(), api_key=KEY) as srv:
        service = deepgram(srv)
        with pytest.raises(AuthenticationFailed) as info:
            await service.probe()
        assert KEY not in str(info.value)
        with pytest.raises(AuthenticationFailed) as info:
            await service.transcribe(SPEECH.pcm)
        assert KEY not in str(info.value)


async def test_the_fake_service_echoes_a_key_and_the_base_scrubs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", "fake-secret-42")
    endpoint = fake_endpoint("f", connection=ConnectionConfig(api_key_env="FAKE_KEY"))
    service = FakeSTTService(endpoint, faults=FaultPlan.key_echo())
    with pytest.raises(AuthenticationFailed, match=REDACTED) as info:
        await service.start_streaming()
    assert "fake-secret-42" not in str(info.value)


# -- frames and cleanup -------------------------------------------------------------------------
async def test_a_long_chunk_goes_out_in_frames_of_at_most_one_second() -> None:
    async with FakeDeepgramServer(SCRIPT, api_key=KEY) as srv:
        results = await stream_transcribe(
            deepgram(srv), SPEECH.pcm, ENGINE_FORMAT, chunk_seconds=SPEECH.duration
        )
    sizes = srv.sessions[0].chunk_sizes
    assert len(sizes) > 1
    assert max(sizes) <= ENGINE_FORMAT.bytes_for(1.0)
    assert words_of(list(results.results)) == Counter(WORDS)


async def test_a_stop_cut_short_closes_the_socket() -> None:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        async with FakeDeepgramServer(SCRIPT, faults=FaultPlan.stall_after(0.5), api_key=KEY) as s:
            service = deepgram(s)
            await service.start_streaming()
            for chunk in iter_chunks(SPEECH.pcm, ENGINE_FORMAT):
                await service.send_audio(chunk)
            with anyio.move_on_after(0):  # a session's stop deadline, at its tightest
                await service.stop_streaming()
            assert not service.is_streaming
            with anyio.fail_after(10):  # the client's close reaches the server
                while s.sessions[0].close_code is None:  # noqa: ASYNC110 - a server record
                    await anyio.sleep(0.01)
        gc.collect()
        await anyio.lowlevel.checkpoint()
    finally:
        loop.set_exception_handler(None)
    assert not errors, errors


# -- GLM server (OpenAI-compatible) ---------------------------------------------------------------
MARKS = synthetic_speech((3, 3), gap_seconds=0.6, lead_seconds=0.3)
ONE = synthetic_speech((3,), lead_seconds=0.3)  # one segment: one request
VAD = {"backend": "energy", "energy_floor_seconds": 60.0, "min_silence_seconds": 0.3}


def glm(url: str, **options: Any) -> GLMServerSTTService:
    options.setdefault("vad", VAD)
    return GLMServerSTTService(
        STTEndpoint(
            id="glm",
            provider="glm_server",
            location=Location.SELF_HOSTED,
            connection=ConnectionConfig(base_url=url, api_key_env="GLM_KEY", options=options),
        )
    )


@pytest.fixture
async def openai_server(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[FakeOpenAITranscriptionServer]:
    monkeypatch.setenv("GLM_KEY", "glm-secret-9876")
    async with FakeOpenAITranscriptionServer(token="glm-secret-9876") as srv:
        yield srv


async def test_an_html_200_is_malformed_not_a_transcript(
    openai_server: FakeOpenAITranscriptionServer,
) -> None:
    openai_server.fault_next("html_200")
    with pytest.raises(MalformedResponse, match="text/html"):
        await glm(openai_server.url).transcribe(ONE.pcm)


async def test_a_huge_body_is_refused_at_the_cap(
    openai_server: FakeOpenAITranscriptionServer,
) -> None:
    openai_server.fault_next("huge_body")
    with pytest.raises(MalformedResponse, match="cap"):
        await glm(openai_server.url).transcribe(ONE.pcm)
    openai_server.huge_body_bytes = 100_000  # under a raised cap: decoded off the loop
    openai_server.fault_next("huge_body")
    big = await glm(openai_server.url, max_response_bytes=1_000_000).transcribe(ONE.pcm)
    # decoded, found to be a repetition loop and asked again with a penalty
    assert big.text == ONE.text
    assert len(openai_server.transcriptions) == 3


async def test_a_401_echoing_the_bearer_key_is_scrubbed(
    openai_server: FakeOpenAITranscriptionServer,
) -> None:
    openai_server.fault_next("key_echo")
    with pytest.raises(AuthenticationFailed) as info:
        await glm(openai_server.url).transcribe(ONE.pcm)
    assert "glm-secret-9876" not in str(info.value)
    assert REDACTED in str(info.value)


async def test_a_413_for_good_audio_fails_over(
    openai_server: FakeOpenAITranscriptionServer,
) -> None:
    openai_server.fault_next("bad_audio")
    backup = FakeSTTService(fake_endpoint("backup"))
    primary = glm(openai_server.url)
    session = RoutedSession(
        [primary.endpoint, backup.endpoint],
        service_factory=lambda ep: primary if ep.id == "glm" else backup,
    )
    results = await collect(session, MARKS.pcm)
    assert words_of(results) == Counter(MARKS.text.split())
    assert not session.uncovered


async def test_segment_errors_are_all_retrieved() -> None:
    """A host that does not answer fails every segment; only the first error is raised and
    asyncio reports no "Task exception was never retrieved" for the others."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        service = glm("http://127.0.0.1:9", timeout=2.0, max_concurrency=4)
        with pytest.raises(STTError):
            await collect(service, synthetic_speech((2, 2, 2, 2), gap_seconds=0.6).pcm)
        gc.collect()
        await anyio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert not errors, errors


DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"


async def test_the_quiet_liars_snippet_in_the_docs_runs() -> None:
    section = DOCS.read_text().split("## Quiet liars and hostile servers", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    body = "".join(f"    {line}\n" for line in code.splitlines())
    scope: dict[str, Any] = {}
    exec(f"async def snippet():\n{body}", scope)
    await scope["snippet"]()
