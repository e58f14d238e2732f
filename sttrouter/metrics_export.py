"""Export :class:`~sttrouter.metrics.STTMetrics` to Prometheus, OpenTelemetry or any callback.

Pure: no I/O, no global registry, no threads. A :class:`MetricsSnapshot` (per-endpoint and
per-session metrics plus the number of active sessions) becomes a list of
:class:`MetricFamily` values (:func:`collect`); those render as Prometheus text exposition
(:func:`render_prometheus`), feed a ``prometheus_client`` registry (:func:`prometheus_collector`,
extra ``metrics``), record into an OpenTelemetry ``Meter`` (:class:`OpenTelemetryBridge`), or go
to any callback (:func:`publish`). Only numbers, endpoint ids, provider kinds and session ids are
exported: never audio, never transcript text.

The names follow the UnaMentis GLM-ASR gateway's plan (``glm_asr_requests_total``,
``_latency_ms``, ``_audio_duration_ms``, ``_errors_total``, ``_failovers_total``,
``_active_sessions``) with the prefix ``sttrouter_``:

=======================================  =========  ===============================================
name                                     type       what
=======================================  =========  ===============================================
``sttrouter_requests_total``             counter    final results delivered (one per transcribed
                                                    segment or utterance)
``sttrouter_latency_ms``                 histogram  result latency: audio sent → result received
``sttrouter_latency_median_ms``          gauge      median latency (recent window)
``sttrouter_latency_p99_ms``             gauge      99th-percentile latency (recent window)
``sttrouter_time_to_first_result_ms``    gauge      first audio → first result
``sttrouter_word_emission_rate``         gauge      final words per second of audio
``sttrouter_audio_duration_ms_total``    counter    audio sent
``sttrouter_cost_total``                 counter    what that audio cost (currency units)
``sttrouter_errors_total``               counter    streams that failed
``sttrouter_failovers_total``            counter    failovers
``sttrouter_active_sessions``            gauge      sessions streaming now
=======================================  =========  ===============================================

Endpoint metrics carry the labels ``endpoint`` and ``provider``; the same measures per session
are named ``sttrouter_session_*`` with the label ``session`` (use session ids that are not
personal data, and mind the cardinality).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Final, Literal

import attrs

from sttrouter.errors import ConfigError, MissingDependency
from sttrouter.metrics import STTMetrics

__all__ = [
    "PREFIX",
    "EndpointSnapshot",
    "MetricFamily",
    "MetricsBook",
    "MetricsObserver",
    "MetricsSnapshot",
    "OpenTelemetryBridge",
    "Sample",
    "SessionSnapshot",
    "collect",
    "escape_label_value",
    "prometheus_collector",
    "publish",
    "render_prometheus",
    "snapshot",
]

PREFIX: Final = "sttrouter_"
MetricType = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]


# -- snapshots -----------------------------------------------------------------------------------


@attrs.frozen
class EndpointSnapshot:
    """The metrics of one endpoint (every stream it served, or one service's)."""

    endpoint_id: str
    provider: str
    metrics: STTMetrics = attrs.field(eq=False)


@attrs.frozen
class SessionSnapshot:
    """The metrics of one routed session."""

    session_id: str
    metrics: STTMetrics = attrs.field(eq=False)


def _endpoints(value: Iterable[EndpointSnapshot]) -> tuple[EndpointSnapshot, ...]:
    out = tuple(value)
    _unique([e.endpoint_id for e in out], "endpoint")
    return out


def _sessions(value: Iterable[SessionSnapshot]) -> tuple[SessionSnapshot, ...]:
    out = tuple(value)
    _unique([s.session_id for s in out], "session")
    return out


def _unique(ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ConfigError(
                f"{what} {i!r} appears twice in a metrics snapshot; give one STTMetrics per {what}"
            )
        seen.add(i)


@attrs.frozen
class MetricsSnapshot:
    """What to export at one scrape.

    Attributes:
        endpoints: one entry per endpoint id (ids must be unique).
        sessions: one entry per session id (ids must be unique).
        active_sessions: sessions streaming now; ``None`` leaves the gauge out.
    """

    endpoints: tuple[EndpointSnapshot, ...] = attrs.field(default=(), converter=_endpoints)
    sessions: tuple[SessionSnapshot, ...] = attrs.field(default=(), converter=_sessions)
    active_sessions: int | None = None


def _merged(cost_per_hour: Decimal, parts: Iterable[STTMetrics]) -> STTMetrics:
    total = STTMetrics(cost_per_hour)
    for m in parts:
        total.merge(m)
    return total


def snapshot(
    services: Iterable[Any] = (),
    *,
    sessions: Mapping[str, STTMetrics] | None = None,
    active_sessions: int | None = None,
) -> MetricsSnapshot:
    """A snapshot of services (anything with ``endpoint`` and ``metrics``) and sessions.

    Services of the same endpoint (one per stream, as a routed session makes them) are
    added up into one entry per endpoint.
    """
    grouped: dict[str, tuple[Any, list[STTMetrics]]] = {}
    for s in services:
        grouped.setdefault(s.endpoint.id, (s.endpoint, []))[1].append(s.metrics)
    endpoints = [
        EndpointSnapshot(
            eid,
            str(ep.provider),
            parts[0] if len(parts) == 1 else _merged(ep.cost_per_hour, parts),
        )
        for eid, (ep, parts) in grouped.items()
    ]
    return MetricsSnapshot(
        endpoints,
        [SessionSnapshot(sid, m) for sid, m in (sessions or {}).items()],
        active_sessions,
    )


class MetricsBook:
    """Per-endpoint totals over every service that ever served an endpoint.

    A routed session builds a fresh service for each endpoint stream; wrap its factory so the
    book sees them all::

        book = MetricsBook()
        session = RoutedSession(router=router, service_factory=book.factory(create_service))
        ...
        text = render_prometheus(book.snapshot(active_sessions=live))

    Services that have streamed and stopped are folded into their endpoint's total at the next
    snapshot and released, so memory stays bounded (do not reuse a retired service).
    """

    def __init__(self) -> None:
        self._totals: dict[str, tuple[Any, STTMetrics]] = {}
        self._live: list[Any] = []

    @property
    def tracked(self) -> int:
        """Services counted individually now (running, or not started yet)."""
        return len(self._live)

    def track(self, service: Any) -> Any:
        """Count ``service`` (anything with ``endpoint``, ``metrics``, ``is_streaming``)."""
        self._live.append(service)
        return service

    def factory(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        """A service factory that builds with ``inner`` and tracks what it builds."""

        def build(endpoint: Any, *args: Any, **kwargs: Any) -> Any:
            return self.track(inner(endpoint, *args, **kwargs))

        return build

    def retire(self, service: Any) -> None:
        """Fold a finished service into its endpoint's total and stop tracking it."""
        self._live = [s for s in self._live if s is not service]
        ep = service.endpoint
        entry = self._totals.get(ep.id)
        if entry is None:
            entry = self._totals[ep.id] = (ep, STTMetrics(ep.cost_per_hour))
        entry[1].merge(service.metrics)

    def snapshot(
        self,
        *,
        sessions: Mapping[str, STTMetrics] | None = None,
        active_sessions: int | None = None,
    ) -> MetricsSnapshot:
        """Every endpoint's total so far, including streams still running."""
        for service in list(self._live):
            m = service.metrics
            if not service.is_streaming and (m.audio_seconds or m.results or m.errors):
                self.retire(service)
        grouped: dict[str, tuple[Any, list[STTMetrics]]] = {
            eid: (ep, [total]) for eid, (ep, total) in self._totals.items()
        }
        for service in self._live:
            grouped.setdefault(service.endpoint.id, (service.endpoint, []))[1].append(
                service.metrics
            )
        endpoints = [
            EndpointSnapshot(eid, str(ep.provider), _merged(ep.cost_per_hour, parts))
            for eid, (ep, parts) in grouped.items()
        ]
        return MetricsSnapshot(
            endpoints,
            [SessionSnapshot(sid, m) for sid, m in (sessions or {}).items()],
            active_sessions,
        )


# -- metric families -------------------------------------------------------------------------


@attrs.frozen
class Sample:
    """One line of exposition: ``name`` is the full sample name (with ``_total``, ``_bucket``)."""

    name: str
    labels: Labels
    value: float


@attrs.frozen
class MetricFamily:
    """One metric with its samples, in the Prometheus data model.

    ``name`` is the name on the ``# TYPE`` line (counters keep their ``_total``).
    """

    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...]

    @property
    def base_name(self) -> str:
        """The name without a counter's ``_total`` (what OpenTelemetry and prometheus_client
        call the metric)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


_Getter = Callable[[STTMetrics], float | None]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


_MEASURES: Final[tuple[tuple[str, MetricType, str, _Getter], ...]] = (
    ("requests_total", "counter", "Final results delivered.", lambda m: m.finals),
    (
        "latency_median_ms",
        "gauge",
        "Median result latency over the recent window, milliseconds.",
        lambda m: _ms(m.median_latency),
    ),
    (
        "latency_p99_ms",
        "gauge",
        "99th-percentile result latency over the recent window, milliseconds.",
        lambda m: _ms(m.p99_latency),
    ),
    (
        "time_to_first_result_ms",
        "gauge",
        "Time from the first audio to the first result, milliseconds.",
        lambda m: _ms(m.time_to_first_result),
    ),
    (
        "word_emission_rate",
        "gauge",
        "Final words per second of audio.",
        lambda m: m.word_emission_rate,
    ),
    (
        "audio_duration_ms_total",
        "counter",
        "Audio sent, milliseconds.",
        lambda m: m.audio_seconds * 1000.0,
    ),
    ("cost_total", "counter", "What the audio sent cost, currency units.", lambda m: float(m.cost)),
    ("errors_total", "counter", "Streams that failed.", lambda m: m.errors),
    ("failovers_total", "counter", "Failovers to another endpoint.", lambda m: m.failovers),
)


def _histogram(name: str, rows: Iterable[tuple[Labels, STTMetrics]], what: str) -> MetricFamily:
    samples: list[Sample] = []
    for labels, m in rows:
        for bound, count in m.cumulative_latency_buckets():
            samples.append(Sample(f"{name}_bucket", (*labels, ("le", _le(bound))), count))
        samples.append(Sample(f"{name}_bucket", (*labels, ("le", "+Inf")), m.latency_count))
        samples.append(Sample(f"{name}_sum", labels, m.latency_sum * 1000.0))
        samples.append(Sample(f"{name}_count", labels, m.latency_count))
    return MetricFamily(
        name,
        "histogram",
        f"Result latency: audio sent to result received, milliseconds. {what}",
        tuple(samples),
    )


def _le(bound_seconds: float) -> str:
    return repr(bound_seconds * 1000.0)  # "50.0", as prometheus_client writes bounds


def _families(prefix: str, rows: list[tuple[Labels, STTMetrics]], what: str) -> list[MetricFamily]:
    out = [_histogram(f"{prefix}latency_ms", rows, what)] if rows else []
    for suffix, typ, help_text, get in _MEASURES:
        samples = []
        for labels, m in rows:
            value = get(m)
            if value is not None:
                samples.append(Sample(prefix + suffix, labels, float(value)))
        if samples:
            out.append(MetricFamily(prefix + suffix, typ, f"{help_text} {what}", tuple(samples)))
    return out


def collect(snap: MetricsSnapshot) -> list[MetricFamily]:
    """Every metric family of ``snap``. Families with no samples are left out."""
    endpoint_rows: list[tuple[Labels, STTMetrics]] = [
        ((("endpoint", e.endpoint_id), ("provider", e.provider)), e.metrics) for e in snap.endpoints
    ]
    session_rows: list[tuple[Labels, STTMetrics]] = [
        ((("session", s.session_id),), s.metrics) for s in snap.sessions
    ]
    families = _families(PREFIX, endpoint_rows, "Per endpoint.")
    families += _families(f"{PREFIX}session_", session_rows, "Per session.")
    if snap.active_sessions is not None:
        families.append(
            MetricFamily(
                f"{PREFIX}active_sessions",
                "gauge",
                "Sessions streaming now.",
                (Sample(f"{PREFIX}active_sessions", (), float(snap.active_sessions)),),
            )
        )
    return families


# -- Prometheus text -------------------------------------------------------------------------


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def render_prometheus(families: Iterable[MetricFamily] | MetricsSnapshot) -> str:
    """Prometheus text exposition format (version 0.0.4) of ``families`` or a snapshot."""
    if isinstance(families, MetricsSnapshot):
        families = collect(families)
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            if s.labels:
                body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels)
                lines.append(f"{s.name}{{{body}}} {_value(s.value)}")
            else:
                lines.append(f"{s.name} {_value(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


# -- observers ---------------------------------------------------------------------------------

MetricsObserver = Callable[[MetricFamily], None]
"""A callback given every :class:`MetricFamily` of a snapshot (statsd, logs, a custom backend)."""


def publish(snap: MetricsSnapshot, observer: MetricsObserver) -> None:
    """Hand every family of ``snap`` to ``observer``."""
    for family in collect(snap):
        observer(family)


# -- prometheus_client ---------------------------------------------------------------------------


def prometheus_collector(source: Callable[[], MetricsSnapshot]) -> Any:
    """A ``prometheus_client`` collector that exports ``source()`` at each scrape.

    Usage::

        from prometheus_client import REGISTRY
        REGISTRY.register(prometheus_collector(lambda: snapshot(services, active_sessions=n)))

    Raises:
        MissingDependency: ``prometheus-client`` is not installed (extra ``metrics``).
    """
    try:
        from prometheus_client.core import Metric
    except ImportError as exc:
        raise MissingDependency("prometheus-client", "metrics") from exc

    class SttrouterCollector:
        """Exports sttrouter's metrics into a prometheus_client registry."""

        def describe(self) -> list[Any]:
            return []  # do not call source() at registration time

        def collect(self) -> Iterator[Any]:
            for fam in collect(source()):
                metric = Metric(fam.base_name, fam.help, fam.type)
                for s in fam.samples:
                    metric.add_sample(s.name, dict(s.labels), s.value)
                yield metric

    return SttrouterCollector()


# -- OpenTelemetry ------------------------------------------------------------------------------


class OpenTelemetryBridge:
    """Record sttrouter's metrics into an OpenTelemetry ``Meter`` as observable instruments.

    Counters become observable counters, gauges observable gauges (the latency histogram is
    left out: OpenTelemetry has no observable histogram; the median and p99 gauges and
    ``latency_ms`` sum/count counters carry it). Each collection calls ``source()`` once.

    Args:
        meter: an ``opentelemetry.metrics.Meter`` (from ``metrics.get_meter("sttrouter")``).
        source: returns the snapshot to export.
        observation: the ``Observation`` class; defaults to ``opentelemetry.metrics.Observation``.

    Raises:
        MissingDependency: ``opentelemetry-api`` is not installed and no ``observation`` given.
    """

    def __init__(
        self,
        meter: Any,
        source: Callable[[], MetricsSnapshot],
        *,
        observation: Callable[..., Any] | None = None,
    ) -> None:
        if observation is None:
            try:
                from opentelemetry.metrics import (  # type: ignore[import-not-found,unused-ignore]
                    Observation,
                )
            except ImportError as exc:
                error = MissingDependency("opentelemetry-api", "otel")
                error.message = (
                    "opentelemetry-api is not installed; install it with: "
                    "pip install opentelemetry-api (or pass observation=...)"
                )
                raise error from exc
            observation = Observation
        self._observation = observation
        self._source = source
        self._cache: dict[str, list[Sample]] | None = None
        self._pending: set[str] = set()
        self.instruments: list[Any] = []
        for name, typ, help_text in self._catalogue():
            create = (
                meter.create_observable_counter
                if typ == "counter"
                else meter.create_observable_gauge
            )
            self.instruments.append(
                create(name, callbacks=[self._callback(name)], description=help_text)
            )

    @staticmethod
    def _catalogue() -> list[tuple[str, MetricType, str]]:
        out: list[tuple[str, MetricType, str]] = []
        for prefix in (PREFIX, f"{PREFIX}session_"):
            out.append((f"{prefix}latency_ms_sum", "counter", "Sum of result latencies, ms."))
            out.append((f"{prefix}latency_ms_count", "counter", "Results with a latency."))
            for suffix, typ, help_text, _ in _MEASURES:
                name = prefix + suffix
                out.append(
                    (name.removesuffix("_total") if typ == "counter" else name, typ, help_text)
                )
        out.append((f"{PREFIX}active_sessions", "gauge", "Sessions streaming now."))
        return out

    def _samples(self, name: str) -> list[Sample]:
        # one source() call per collection round: refill when every instrument has read
        if self._cache is None or not self._pending:
            cache: dict[str, list[Sample]] = {}
            for fam in collect(self._source()):
                for s in fam.samples:
                    if s.name.endswith("_bucket"):
                        continue
                    cache.setdefault(s.name.removesuffix("_total"), []).append(s)
            self._cache = cache
            self._pending = {n for n, _, _ in self._catalogue()}
        self._pending.discard(name)
        return self._cache.get(name, [])

    def _callback(self, name: str) -> Callable[[Any], Iterable[Any]]:
        def callback(_options: Any) -> Iterable[Any]:
            return [self._observation(s.value, dict(s.labels)) for s in self._samples(name)]

        return callback
