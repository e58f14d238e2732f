"""The value modules: the error tree, results/transcripts and metrics."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttrouter import errors
from sttrouter.errors import (
    AlreadyStreaming,
    AudioFormatError,
    AuthenticationFailed,
    CallerError,
    ConfigError,
    ConnectionFailed,
    ConnectTimeout,
    EmptyTranscripts,
    EndpointMisconfigured,
    ErrorKind,
    MalformedResponse,
    MissingDependency,
    NoEndpointAvailable,
    NotStreaming,
    PermanentError,
    QuotaExceeded,
    RateLimited,
    StreamingFailed,
    StreamStalled,
    STTError,
    TransientError,
)
from sttrouter.metrics import LATENCY_BUCKETS, STTMetrics, cost_for
from sttrouter.results import STTResult, Transcript, WordTimestamp

# -- errors -------------------------------------------------------------------------------

KINDS = {
    ConnectionFailed: ErrorKind.TRANSIENT,
    ConnectTimeout: ErrorKind.TRANSIENT,
    StreamingFailed: ErrorKind.TRANSIENT,
    StreamStalled: ErrorKind.TRANSIENT,
    EmptyTranscripts: ErrorKind.TRANSIENT,
    MalformedResponse: ErrorKind.TRANSIENT,
    RateLimited: ErrorKind.TRANSIENT,
    NoEndpointAvailable: ErrorKind.TRANSIENT,
    AuthenticationFailed: ErrorKind.PERMANENT,
    QuotaExceeded: ErrorKind.PERMANENT,
    EndpointMisconfigured: ErrorKind.PERMANENT,
    AudioFormatError: ErrorKind.CALLER,
    ConfigError: ErrorKind.CALLER,
    NotStreaming: ErrorKind.CALLER,
    AlreadyStreaming: ErrorKind.CALLER,
}
BASES = {
    ErrorKind.TRANSIENT: TransientError,
    ErrorKind.PERMANENT: PermanentError,
    ErrorKind.CALLER: CallerError,
}


@pytest.mark.parametrize(("cls", "kind"), KINDS.items(), ids=lambda v: getattr(v, "__name__", v))
def test_every_error_has_its_kind_and_base(cls: type[STTError], kind: ErrorKind) -> None:
    exc = cls("boom") if cls is not ConfigError else ConfigError("boom")
    assert exc.kind is kind
    assert isinstance(exc, BASES[kind])
    assert isinstance(exc, STTError)
    assert exc.retryable is (kind is ErrorKind.TRANSIENT)


def test_every_public_error_is_classified() -> None:
    public = {
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), STTError)
    }
    abstract = {STTError, TransientError, PermanentError, CallerError}
    special = {MissingDependency, errors.UnsupportedOption, errors.BudgetExceeded}
    assert public - abstract - special == set(KINDS)


def test_unsupported_option_is_a_caller_error_naming_the_option() -> None:
    exc = errors.UnsupportedOption("language", "fr", endpoint_id="offline")
    assert exc.kind is ErrorKind.CALLER
    assert (exc.option, exc.value) == ("language", "fr")
    assert str(exc).startswith("[offline] this engine cannot honour the stream option")


def test_endpoint_id_prefixes_the_message() -> None:
    exc = ConnectionFailed("connection refused", endpoint_id="deepgram")
    assert str(exc) == "[deepgram] connection refused"
    assert exc.message == "connection refused"
    assert str(ConnectionFailed("refused")) == "refused"


def test_config_error_names_where() -> None:
    exc = ConfigError(
        "must not be negative", source="endpoints.toml", endpoint="dg", field="cost_per_hour"
    )
    assert str(exc) == "endpoints.toml: endpoint 'dg': field 'cost_per_hour': must not be negative"
    assert (exc.source, exc.endpoint, exc.field) == ("endpoints.toml", "dg", "cost_per_hour")
    assert str(ConfigError("bad", field="x")) == "field 'x': bad"
    assert str(ConfigError("bad")) == "bad"


def test_no_endpoint_available_names_the_interval_and_attempts() -> None:
    exc = NoEndpointAvailable(
        "every endpoint failed",
        uncovered=(12.5, 14.25),
        attempts=(("glm", "stalled"), ("offline", "breaker open")),
    )
    text = str(exc)
    assert "(audio 12.500s..14.250s not transcribed)" in text
    assert text.endswith("; tried glm: stalled; offline: breaker open")
    assert exc.uncovered == (12.5, 14.25)
    assert exc.retryable
    plain = NoEndpointAvailable("nothing to try")
    assert str(plain) == "nothing to try"
    assert plain.uncovered is None
    assert plain.attempts == ()


def test_missing_dependency_names_the_extra() -> None:
    exc = MissingDependency("pocketsphinx", "offline")
    assert (
        str(exc)
        == "pocketsphinx is not installed; install it with: pip install 'sttrouter[offline]'"
    )
    assert (exc.package, exc.extra) == ("pocketsphinx", "offline")
    assert isinstance(exc, ImportError)
    assert exc.kind is ErrorKind.CALLER
    assert not exc.retryable


def test_rate_limited_keeps_retry_after() -> None:
    exc = RateLimited("429", retry_after=2.5, endpoint_id="aai")
    assert exc.retry_after == 2.5
    assert RateLimited("429").retry_after is None


# -- results ------------------------------------------------------------------------------


def result(text: str, start: float, duration: float, *, final: bool = True) -> STTResult:
    words = [
        WordTimestamp(w, start + i * 0.1, start + (i + 1) * 0.1, 0.9)
        for i, w in enumerate(text.split())
    ]
    return STTResult(text, is_final=final, start=start, duration=duration, words=words)


def test_result_end_and_shift() -> None:
    r = result("hello world", 1.0, 0.5)
    assert r.end == 1.5
    moved = r.shifted(2.0)
    assert (moved.start, moved.end) == (3.0, 3.5)
    assert [(w.start, w.end) for w in moved.words] == [
        pytest.approx((3.0, 3.1)),
        pytest.approx((3.1, 3.2)),
    ]
    assert moved.transcript == r.transcript
    assert r.shifted(0) is r
    assert isinstance(r.words, tuple)


@given(
    start=st.floats(0, 1e4),
    duration=st.floats(0, 100),
    a=st.floats(-1e3, 1e3),
    b=st.floats(-1e3, 1e3),
)
def test_shifts_compose(start: float, duration: float, a: float, b: float) -> None:
    r = STTResult("x", is_final=True, start=start, duration=duration)
    assert r.shifted(a).shifted(b).start == pytest.approx(r.shifted(a + b).start, abs=1e-6)
    assert r.shifted(a).duration == duration


def test_result_to_dict() -> None:
    d = result("hi", 0.5, 0.25).to_dict()
    assert d["transcript"] == "hi"
    assert d["is_final"] is True
    assert d["words"] == [{"word": "hi", "start": 0.5, "end": 0.6, "confidence": 0.9}]
    assert set(d) >= {"start", "duration", "latency", "endpoint_id", "language", "confidence"}


def test_transcript_keeps_finals_with_text_in_time_order() -> None:
    results = [
        result("second part", 2.0, 1.0),
        result("ignored interim", 0.0, 1.0, final=False),
        attrs_evolve(result("first", 0.0, 1.0), language="en", endpoint_id="a"),
        result("", 1.0, 1.0),
        attrs_evolve(result("  ", 3.0, 1.0), endpoint_id="x"),
        attrs_evolve(result("third", 4.0, 1.0), endpoint_id="b"),
    ]
    t = Transcript.from_results(results, duration=5.0)
    assert t.text == "first second part third"
    assert [r.start for r in t.results] == [0.0, 2.0, 3.0, 4.0]
    assert t.language == "en"
    assert t.duration == 5.0
    assert [w.word for w in t.words] == ["first", "second", "part", "third"]
    assert t.endpoint_ids == ("a", "x", "b")
    d = t.to_dict()
    assert d["text"] == t.text
    assert len(d["results"]) == 4
    assert Transcript.from_results([], language="de").language == "de"
    assert Transcript(()).text == ""


def attrs_evolve(r: STTResult, **changes: object) -> STTResult:
    import attrs

    return attrs.evolve(r, **changes)  # type: ignore[arg-type]


# -- metrics ------------------------------------------------------------------------------


def test_empty_metrics() -> None:
    m = STTMetrics()
    assert m.median_latency is None
    assert m.p99_latency is None
    assert m.time_to_first_result is None
    assert m.word_emission_rate == 0.0
    assert m.cost == Decimal("0.000000")
    assert m.latency_histogram((0.1, 1.0)) == [0, 0]
    assert m.to_dict()["cost"] == "0.000000"


def test_latency_statistics_time_to_first_and_word_rate() -> None:
    m = STTMetrics(Decimal("0.36"))
    m.audio_sent(1.0, now=10.0)
    m.audio_sent(1.0, now=11.0)
    for i, latency in enumerate([0.4, 0.1, 0.3, 0.2]):
        m.result_received(latency=latency, is_final=i % 2 == 1, words=3, now=10.5 + i)
    m.result_received(latency=None, is_final=True, words=2, now=20.0)  # no latency known
    m.result_received(latency=-1.0, is_final=False, words=0, now=21.0)  # clock skew: ignored
    assert m.median_latency == pytest.approx(0.25)
    assert m.p99_latency == 0.4
    assert m.time_to_first_result == pytest.approx(0.5)
    assert (m.results, m.finals, m.words) == (6, 3, 8)
    assert m.word_emission_rate == pytest.approx(4.0)  # 8 final words over 2 s
    assert m.audio_seconds == 2.0
    assert m.latency_histogram((0.1, 0.25, 1.0)) == [1, 2, 4]
    m.error()
    d = m.to_dict()
    assert d["errors"] == 1
    assert d["median_latency"] == pytest.approx(0.25)
    assert "median_latency=0.25" in repr(m)


def test_odd_count_median_and_p99_nearest_rank() -> None:
    m = STTMetrics()
    for latency in range(1, 102):  # 1..101
        m.result_received(latency=float(latency), is_final=False, words=0, now=0.0)
    assert m.median_latency == 51.0
    assert m.p99_latency == 100.0  # nearest rank: ceil(0.99 * 101) = 100


def test_latency_window_is_bounded() -> None:
    m = STTMetrics(window=3)
    for latency in (9.0, 1.0, 2.0, 3.0):
        m.result_received(latency=latency, is_final=False, words=0, now=0.0)
    assert m.p99_latency == 3.0


def test_cost_is_decimal_and_rounded() -> None:
    m = STTMetrics(Decimal("0.258"))
    m.audio_sent(90.0, now=0.0)
    assert isinstance(m.cost, Decimal)
    assert m.cost == Decimal("0.006450")
    assert cost_for(Decimal("1"), 3600.0) == Decimal("1.000000")
    assert cost_for(Decimal("0.0043"), 1.0) == Decimal("0.000001")


@given(
    seconds=st.lists(st.floats(0, 600, allow_nan=False), max_size=20),
    price=st.decimals(0, 10, places=4),
)
def test_cost_grows_with_audio(seconds: list[float], price: Decimal) -> None:
    m = STTMetrics(price)
    last = Decimal(0)
    for s in seconds:
        m.audio_sent(s, now=0.0)
        assert m.cost >= last
        last = m.cost
    assert m.cost == cost_for(price, m.audio_seconds)


def test_cumulative_latency_buckets_are_never_windowed() -> None:
    m = STTMetrics(window=2)
    for latency in (0.05, 0.12, 0.4, 3.0, 60.0):
        m.result_received(latency=latency, is_final=False, words=0, now=0.0)
    buckets = dict(m.cumulative_latency_buckets())
    assert list(buckets) == list(LATENCY_BUCKETS)
    assert buckets[0.05] == 1  # inclusive upper bound
    assert buckets[0.15] == 2
    assert buckets[0.5] == 3
    assert buckets[10.0] == 4  # 60 s lies only in +Inf
    assert m.latency_count == 5
    assert m.latency_sum == pytest.approx(63.57)
    assert m.p99_latency == 60.0  # the window holds the last two only
    counts = [n for _, n in m.cumulative_latency_buckets()]
    assert counts == sorted(counts)
