"""The gateway's own counters, exported as Prometheus text on ``GET /metrics``.

Names follow UnaMentis' gateway spec with an ``sttrouter_gateway_`` prefix: requests, a
latency histogram (seconds from the audio that ends a result reaching the gateway until the
result is sent), audio seconds, errors by code, active sessions. Plain in-memory numbers,
rendered with :func:`sttrouter.metrics_export.render_prometheus`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Final

from sttrouter.metrics_export import MetricFamily, Sample, render_prometheus

__all__ = ["LATENCY_BUCKETS", "GatewayMetrics"]

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
PREFIX: Final = "sttrouter_gateway"


class GatewayMetrics:
    """Counters of one gateway process."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.audio_seconds = 0.0
        self.active_sessions = 0
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_count = 0
        self._latency_sum = 0.0

    def request(self, kind: str) -> None:
        self.requests[kind] += 1

    def error(self, code: str) -> None:
        self.errors[code] += 1

    def audio(self, seconds: float) -> None:
        self.audio_seconds += seconds

    def latency(self, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if i < len(self._buckets):
            self._buckets[i] += 1
        self._latency_count += 1
        self._latency_sum += seconds

    def families(self) -> list[MetricFamily]:
        cumulative, samples = 0, []
        for bound, n in zip(LATENCY_BUCKETS, self._buckets, strict=True):
            cumulative += n
            samples.append(
                Sample(f"{PREFIX}_latency_seconds_bucket", (("le", repr(bound)),), cumulative)
            )
        samples += [
            Sample(f"{PREFIX}_latency_seconds_bucket", (("le", "+Inf"),), self._latency_count),
            Sample(f"{PREFIX}_latency_seconds_count", (), self._latency_count),
            Sample(f"{PREFIX}_latency_seconds_sum", (), self._latency_sum),
        ]
        return [
            MetricFamily(
                f"{PREFIX}_requests_total",
                "counter",
                "Sessions and HTTP transcriptions served, by kind.",
                tuple(
                    Sample(f"{PREFIX}_requests_total", (("kind", k),), v)
                    for k, v in sorted(self.requests.items())
                ),
            ),
            MetricFamily(
                f"{PREFIX}_latency_seconds",
                "histogram",
                "Seconds from receiving the audio that ends a result to sending the result.",
                tuple(samples),
            ),
            MetricFamily(
                f"{PREFIX}_audio_seconds_total",
                "counter",
                "Seconds of audio received.",
                (Sample(f"{PREFIX}_audio_seconds_total", (), self.audio_seconds),),
            ),
            MetricFamily(
                f"{PREFIX}_errors_total",
                "counter",
                "Errors reported to clients, by protocol error code.",
                tuple(
                    Sample(f"{PREFIX}_errors_total", (("code", k),), v)
                    for k, v in sorted(self.errors.items())
                ),
            ),
            MetricFamily(
                f"{PREFIX}_active_sessions",
                "gauge",
                "Streaming sessions open now.",
                (Sample(f"{PREFIX}_active_sessions", (), self.active_sessions),),
            ),
        ]

    def render(self) -> str:
        return render_prometheus(self.families())
