"""Metrics export: Prometheus text parsed back, prometheus_client collector, OTel bridge."""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sttrouter.errors import ConfigError, MissingDependency
from sttrouter.metrics import LATENCY_BUCKETS, STTMetrics
from sttrouter.metrics_export import (
    EndpointSnapshot,
    MetricFamily,
    MetricsBook,
    MetricsSnapshot,
    OpenTelemetryBridge,
    Sample,
    SessionSnapshot,
    collect,
    escape_label_value,
    prometheus_collector,
    publish,
    render_prometheus,
    snapshot,
)
from sttrouter.testing import FakeClock, FakeSTTService, Utterance, fake_endpoint

pytestmark = pytest.mark.anyio


def _metrics(
    latencies: tuple[float, ...] = (0.05, 0.07, 0.3),
    *,
    audio: float = 10.0,
    price: str = "0.26",
    errors: int = 0,
    failovers: int = 0,
) -> STTMetrics:
    m = STTMetrics(Decimal(price))
    m.audio_sent(audio, now=0.0)
    for lat in latencies:
        m.result_received(latency=lat, is_final=True, words=2, now=1.0)
    m.result_received(latency=None, is_final=False, words=1, now=1.5)  # no latency: not counted
    for _ in range(errors):
        m.error()
    m.failovers = failovers
    return m


def _parse(text: str) -> dict[str, Any]:
    """family name -> {(sample name, frozenset(labels)): value}"""
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {
            "type": fam.type,
            "samples": {(s.name, frozenset(s.labels.items())): s.value for s in fam.samples},
        }
    return out


EP = frozenset({("endpoint", "dg"), ("provider", "deepgram")})


def test_text_exposition_parses_back_with_values() -> None:
    snap = MetricsSnapshot(
        [EndpointSnapshot("dg", "deepgram", _metrics(errors=1, failovers=2))], active_sessions=3
    )
    fams = _parse(render_prometheus(snap))
    req = fams["sttrouter_requests"]
    assert req["type"] == "counter"
    assert req["samples"] == {("sttrouter_requests_total", EP): 3.0}
    s = lambda name: fams[name]["samples"]  # noqa: E731
    assert s("sttrouter_errors")[("sttrouter_errors_total", EP)] == 1
    assert s("sttrouter_failovers")[("sttrouter_failovers_total", EP)] == 2
    assert s("sttrouter_audio_duration_ms")[("sttrouter_audio_duration_ms_total", EP)] == 10_000
    # 10 s at $0.26/h
    assert s("sttrouter_cost")[("sttrouter_cost_total", EP)] == pytest.approx(0.000722)
    assert s("sttrouter_latency_median_ms")[("sttrouter_latency_median_ms", EP)] == 70
    assert s("sttrouter_latency_p99_ms")[("sttrouter_latency_p99_ms", EP)] == 300
    assert s("sttrouter_time_to_first_result_ms")[("sttrouter_time_to_first_result_ms", EP)] == 1000
    assert s("sttrouter_word_emission_rate")[("sttrouter_word_emission_rate", EP)] == 0.6
    assert fams["sttrouter_active_sessions"]["samples"] == {
        ("sttrouter_active_sessions", frozenset()): 3
    }


def test_latency_histogram_is_cumulative_in_milliseconds() -> None:
    snap = MetricsSnapshot([EndpointSnapshot("dg", "deepgram", _metrics((0.05, 0.07, 0.3, 20.0)))])
    hist = _parse(render_prometheus(snap))["sttrouter_latency_ms"]
    assert hist["type"] == "histogram"
    samples = hist["samples"]
    bucket = lambda le: samples[("sttrouter_latency_ms_bucket", EP | {("le", le)})]  # noqa: E731
    assert bucket("50.0") == 1  # <= 50 ms, inclusive
    assert bucket("100.0") == 2
    assert bucket("300.0") == 3
    assert bucket("10000.0") == 3
    assert bucket("+Inf") == 4  # 20 s is only in +Inf
    assert samples[("sttrouter_latency_ms_count", EP)] == 4
    assert samples[("sttrouter_latency_ms_sum", EP)] == pytest.approx(20_420)
    assert len([k for k in samples if k[0].endswith("_bucket")]) == len(LATENCY_BUCKETS) + 1


def test_histogram_counts_are_not_windowed() -> None:
    m = STTMetrics(window=2)
    for lat in (0.01, 0.01, 0.01, 0.01):
        m.result_received(latency=lat, is_final=True, words=1, now=0.0)
    assert m.latency_histogram((0.05,)) == [2]  # the window forgets
    assert m.cumulative_latency_buckets()[0] == (0.05, 4)  # the exported histogram does not
    assert m.latency_count == 4


def test_per_session_metrics_and_labels() -> None:
    snap = MetricsSnapshot(
        [EndpointSnapshot("dg", "deepgram", _metrics())],
        [SessionSnapshot("s-1", _metrics((0.2,), failovers=1))],
    )
    fams = _parse(render_prometheus(snap))
    sess = frozenset({("session", "s-1")})
    assert fams["sttrouter_session_failovers"]["samples"] == {
        ("sttrouter_session_failovers_total", sess): 1
    }
    assert (
        fams["sttrouter_session_latency_ms"]["samples"][
            ("sttrouter_session_latency_ms_count", sess)
        ]
        == 1
    )
    assert "sttrouter_active_sessions" not in fams  # None leaves the gauge out


def test_gauges_without_data_are_left_out() -> None:
    fresh = STTMetrics()
    fams = _parse(render_prometheus(MetricsSnapshot([EndpointSnapshot("x", "fake", fresh)])))
    assert "sttrouter_latency_median_ms" not in fams
    assert "sttrouter_time_to_first_result_ms" not in fams
    assert fams["sttrouter_requests"]["samples"] == {
        ("sttrouter_requests_total", frozenset({("endpoint", "x"), ("provider", "fake")})): 0
    }
    assert render_prometheus(MetricsSnapshot()) == ""


@given(st.text(min_size=1, max_size=30))
def test_label_values_are_escaped_and_round_trip(value: str) -> None:
    snap = MetricsSnapshot([EndpointSnapshot(value, "custom", STTMetrics())])
    text = render_prometheus(snap)
    fams = list(text_string_to_metric_families(text))
    labels = {s.labels["endpoint"] for f in fams for s in f.samples}
    assert labels == {value}


def test_escape_label_value() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_duplicate_ids_are_refused() -> None:
    m = STTMetrics()
    with pytest.raises(ConfigError, match="appears twice"):
        MetricsSnapshot([EndpointSnapshot("a", "fake", m), EndpointSnapshot("a", "fake", m)])
    with pytest.raises(ConfigError, match="session"):
        MetricsSnapshot(sessions=[SessionSnapshot("s", m), SessionSnapshot("s", m)])


def test_render_special_values() -> None:
    fam = MetricFamily("x", "gauge", "odd\\help\nline", ())
    assert "# HELP x odd\\\\help\\nline" in render_prometheus([fam])
    inf = MetricFamily(
        "y",
        "gauge",
        "h",
        (Sample("y", (), float("inf")), Sample("y", (("a", "b"),), float("-inf"))),
    )
    nan = MetricFamily(
        "z", "gauge", "h", (Sample("z", (), float("nan")), Sample("z", (("k", "v"),), 1.5))
    )
    text = render_prometheus([inf, nan])
    assert "y +Inf" in text
    assert 'y{a="b"} -Inf' in text
    assert "z NaN" in text
    assert 'z{k="v"} 1.5' in text


async def test_snapshot_of_real_streams_has_no_transcript_or_audio() -> None:
    clock = FakeClock()
    secret = "my secret password is hunter two"
    service = FakeSTTService(
        fake_endpoint("fake-a", cost_per_hour="0.36"),
        script=[Utterance(secret, end=0.5)],
        clock=clock,
    )
    pcm = b"\x10\x27" * 16_000  # one second of a loud constant
    async with service.stream() as s:
        await s.send(pcm)
        await s.stop()
        texts = [r.transcript async for r in s]
    assert secret in texts
    snap = snapshot([service], sessions={"sess-1": service.metrics}, active_sessions=0)
    text = render_prometheus(snap)
    assert "secret" not in text
    assert "hunter" not in text
    assert "\x10\x27" not in text
    fams = _parse(text)
    ep = frozenset({("endpoint", "fake-a"), ("provider", "fake")})
    assert fams["sttrouter_requests"]["samples"][("sttrouter_requests_total", ep)] == 1
    assert (
        fams["sttrouter_audio_duration_ms"]["samples"][("sttrouter_audio_duration_ms_total", ep)]
        == 1000
    )
    assert fams["sttrouter_cost"]["samples"][("sttrouter_cost_total", ep)] == pytest.approx(0.0001)


def test_publish_hands_every_family_to_the_observer() -> None:
    seen: list[MetricFamily] = []
    snap = MetricsSnapshot([EndpointSnapshot("dg", "deepgram", _metrics())], active_sessions=1)
    publish(snap, seen.append)
    assert [f.name for f in seen] == [f.name for f in collect(snap)]
    assert seen[-1].name == "sttrouter_active_sessions"
    assert {f.base_name for f in seen if f.type == "counter"} >= {
        "sttrouter_requests",
        "sttrouter_errors",
    }


# -- prometheus_client -----------------------------------------------------------------------------


def test_prometheus_client_collector_matches_own_text() -> None:
    m = _metrics(errors=2)
    calls = 0

    def source() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        return MetricsSnapshot([EndpointSnapshot("dg", "deepgram", m)], active_sessions=4)

    registry = CollectorRegistry()
    registry.register(prometheus_collector(source))
    assert calls == 0  # registering does not scrape
    scraped = _parse(generate_latest(registry).decode())
    ours = _parse(render_prometheus(source()))
    assert scraped == ours
    assert scraped["sttrouter_errors"]["samples"][("sttrouter_errors_total", EP)] == 2
    m.error()  # the next scrape sees the new value
    again = _parse(generate_latest(registry).decode())
    assert again["sttrouter_errors"]["samples"][("sttrouter_errors_total", EP)] == 3


def test_prometheus_collector_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(MissingDependency) as info:
        prometheus_collector(MetricsSnapshot)
    assert info.value.extra == "metrics"
    assert "sttrouter[metrics]" in str(info.value)


# -- OpenTelemetry -----------------------------------------------------------------------------
# opentelemetry is not installed here; these fakes follow its Meter API
# (create_observable_counter/gauge(name, callbacks=[cb], description=...), cb(CallbackOptions)
# -> Iterable[Observation(value, attributes)]) so the bridge is checked against that shape.


class FakeObservation:
    def __init__(self, value: float, attributes: dict[str, str] | None = None) -> None:
        self.value = value
        self.attributes = attributes or {}


class FakeInstrument:
    def __init__(self, kind: str, name: str, callbacks: list[Any], description: str) -> None:
        self.kind, self.name, self.callbacks, self.description = kind, name, callbacks, description

    def observe(self) -> list[FakeObservation]:
        return [o for cb in self.callbacks for o in cb(None)]


class FakeMeter:
    def __init__(self) -> None:
        self.instruments: dict[str, FakeInstrument] = {}

    def _make(self, kind: str, name: str, callbacks: list[Any], description: str) -> FakeInstrument:
        inst = FakeInstrument(kind, name, callbacks, description)
        self.instruments[name] = inst
        return inst

    def create_observable_counter(
        self, name: str, callbacks: list[Any], description: str = ""
    ) -> FakeInstrument:
        return self._make("counter", name, callbacks, description)

    def create_observable_gauge(
        self, name: str, callbacks: list[Any], description: str = ""
    ) -> FakeInstrument:
        return self._make("gauge", name, callbacks, description)


def test_opentelemetry_bridge_records_into_a_meter() -> None:
    calls = 0
    m = _metrics(failovers=1)

    def source() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        return MetricsSnapshot(
            [EndpointSnapshot("dg", "deepgram", m)],
            [SessionSnapshot("s", m)],
            active_sessions=5,
        )

    meter = FakeMeter()
    bridge = OpenTelemetryBridge(meter, source, observation=FakeObservation)
    assert calls == 0
    assert len(bridge.instruments) == len(meter.instruments)
    assert meter.instruments["sttrouter_requests"].kind == "counter"
    assert meter.instruments["sttrouter_latency_p99_ms"].kind == "gauge"
    # one collection round: every instrument observes once, the source is read once
    observed = {name: inst.observe() for name, inst in meter.instruments.items()}
    assert calls == 1
    (req,) = observed["sttrouter_requests"]
    assert req.value == 3
    assert req.attributes == {"endpoint": "dg", "provider": "deepgram"}
    assert [o.value for o in observed["sttrouter_failovers"]] == [1]
    assert [o.value for o in observed["sttrouter_session_failovers"]] == [1]
    assert [o.value for o in observed["sttrouter_latency_ms_count"]] == [3]
    assert observed["sttrouter_latency_ms_sum"][0].value == pytest.approx(420)
    assert [o.value for o in observed["sttrouter_active_sessions"]] == [5]
    # the next round reads the source again
    meter.instruments["sttrouter_requests"].observe()
    assert calls == 2


def test_opentelemetry_bridge_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(MissingDependency, match="pip install opentelemetry-api"):
        OpenTelemetryBridge(FakeMeter(), MetricsSnapshot)


# -- one endpoint, many services --------------------------------------------------------------


def test_merge_adds_up_two_streams() -> None:
    a = _metrics((0.05, 0.07), audio=4.0, errors=1, failovers=1)
    b = _metrics((0.3,), audio=6.0)
    a.merge(b)
    assert a.audio_seconds == 10.0
    assert a.finals == 3
    assert a.results == 5  # 3 finals + one latency-less interim each
    assert a.errors == 1
    assert a.failovers == 1
    assert a.latency_count == 3
    assert a.latency_sum == pytest.approx(0.42)
    assert a.median_latency == 0.07
    assert a.cumulative_latency_buckets()[0] == (0.05, 1)
    assert a.cost == Decimal("0.000722")
    fresh = STTMetrics()
    fresh.merge(STTMetrics())
    assert fresh.time_to_first_result is None


def test_snapshot_groups_services_of_one_endpoint() -> None:
    class Service:
        def __init__(self, endpoint_id: str, metrics: STTMetrics) -> None:
            self.endpoint = fake_endpoint(endpoint_id, cost_per_hour="0.26")
            self.metrics = metrics

    snap = snapshot(
        [
            Service("a", _metrics(audio=4.0)),
            Service("b", _metrics()),
            Service("a", _metrics(audio=6.0)),
        ]
    )
    assert [e.endpoint_id for e in snap.endpoints] == ["a", "b"]
    merged = snap.endpoints[0].metrics
    assert merged.audio_seconds == 10.0
    assert merged.finals == 6


async def test_metrics_book_counts_every_leg_of_a_routed_session() -> None:
    from sttrouter.session import RoutedSession
    from sttrouter.testing import FaultPlan, synthetic_speech

    clock = FakeClock()
    faults = {"primary": FaultPlan.drop_after(1.4)}
    book = MetricsBook()

    def build(endpoint: Any, **_: Any) -> FakeSTTService:
        return FakeSTTService(endpoint, faults=faults.get(endpoint.id), clock=clock)

    chain = [fake_endpoint("primary", cost_per_hour="0.26"), fake_endpoint("backup")]
    speech = synthetic_speech((5, 5, 5))
    for _ in range(2):  # two sessions, each failing over: four services in all
        session = RoutedSession(chain, service_factory=book.factory(build), clock=clock)
        transcript = await session.transcribe(speech.pcm)
        assert transcript.text == speech.text
    text = render_prometheus(book.snapshot(active_sessions=0))
    fams = _parse(text)
    primary = frozenset({("endpoint", "primary"), ("provider", "fake")})
    backup = frozenset({("endpoint", "backup"), ("provider", "fake")})
    errors = fams["sttrouter_errors"]["samples"]
    assert errors[("sttrouter_errors_total", primary)] == 2  # one drop per session
    assert errors[("sttrouter_errors_total", backup)] == 0
    requests = fams["sttrouter_requests"]["samples"]
    assert requests[("sttrouter_requests_total", backup)] >= 2
    audio = fams["sttrouter_audio_duration_ms"]["samples"]
    # the primary heard 1.4 s before dropping, twice
    assert audio[("sttrouter_audio_duration_ms_total", primary)] == pytest.approx(2 * 1400, abs=100)
    assert book.snapshot().endpoints  # retired services stay counted
    assert book.tracked == 0  # and are released


async def test_metrics_book_counts_running_and_unstarted_services() -> None:
    book = MetricsBook()
    idle = book.track(FakeSTTService(fake_endpoint("idle")))
    running = book.track(FakeSTTService(fake_endpoint("run")))
    snap = book.snapshot()
    assert {e.endpoint_id for e in snap.endpoints} == {"idle", "run"}
    async with running.stream() as s:
        await s.send(b"\x00\x00" * 8000)  # half a second
        during = {e.endpoint_id: e.metrics.audio_seconds for e in book.snapshot().endpoints}
        assert during["run"] == pytest.approx(0.5)
        assert book.tracked == 2  # running: still tracked individually
    after = {e.endpoint_id: e.metrics.audio_seconds for e in book.snapshot().endpoints}
    assert after == {"idle": 0.0, "run": pytest.approx(0.5)}
    assert book.tracked == 1  # the finished one was folded into its total; idle stays
    assert idle.is_streaming is False
