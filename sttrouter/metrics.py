"""Latency, throughput and cost accounting for one service or session.

Pure bookkeeping: callers feed it observations, it answers with statistics.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

__all__ = ["LATENCY_BUCKETS", "STTMetrics", "cost_for"]

_SECONDS_PER_HOUR: Final = Decimal(3600)
_CENT_FRACTION: Final = Decimal("0.000001")

LATENCY_BUCKETS: Final = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
"""Upper bounds (seconds) of the cumulative latency histogram every :class:`STTMetrics` keeps."""


def cost_for(cost_per_hour: Decimal, audio_seconds: float) -> Decimal:
    """Price of ``audio_seconds`` at ``cost_per_hour``, rounded to a millionth of the unit."""
    return (cost_per_hour * Decimal(repr(audio_seconds)) / _SECONDS_PER_HOUR).quantize(
        _CENT_FRACTION
    )


class STTMetrics:
    """Running statistics of a stream (or of every stream an endpoint served).

    Latency samples are kept in a bounded window (the most recent ``window`` results), so a
    long-lived service does not grow without bound.
    """

    def __init__(self, cost_per_hour: Decimal = Decimal(0), *, window: int = 10_000) -> None:
        self.cost_per_hour = cost_per_hour
        self._latencies: deque[float] = deque(maxlen=window)
        self.latency_count = 0
        """Latency observations ever made (not windowed)."""
        self.latency_sum = 0.0
        """Sum of every latency observed, seconds (not windowed)."""
        self._latency_buckets = [0] * len(LATENCY_BUCKETS)
        self.audio_seconds = 0.0
        self.results = 0
        self.finals = 0
        self.words = 0
        self.errors = 0
        self.failovers = 0
        self.time_to_first_result: float | None = None
        self._first_audio_at: float | None = None
        self._last_result_at: float | None = None
        self._cost_source: Callable[[], Decimal] | None = None

    def price_by(self, cost: Callable[[], Decimal]) -> None:
        """Take :attr:`cost` from ``cost`` instead of ``cost_per_hour`` times the audio sent
        (a routed session's audio is billed by the endpoints that served it, replays
        included)."""
        self._cost_source = cost

    # -- observations -------------------------------------------------------------------
    def audio_sent(self, seconds: float, now: float) -> None:
        if self._first_audio_at is None:
            self._first_audio_at = now
        self.audio_seconds += seconds

    def result_received(
        self, *, latency: float | None, is_final: bool, words: int, now: float
    ) -> None:
        self.results += 1
        if latency is not None and latency >= 0:
            self._latencies.append(latency)
            self.latency_count += 1
            self.latency_sum += latency
            i = bisect.bisect_left(LATENCY_BUCKETS, latency)
            if i < len(self._latency_buckets):
                self._latency_buckets[i] += 1
        if is_final:
            self.finals += 1
            self.words += words
        if self.time_to_first_result is None and self._first_audio_at is not None:
            self.time_to_first_result = max(0.0, now - self._first_audio_at)
        self._last_result_at = now

    def error(self) -> None:
        self.errors += 1

    def merge(self, other: STTMetrics) -> None:
        """Fold ``other``'s observations into this one (one endpoint's many streams into a
        total). Counters and the histogram add up; the latency window takes ``other``'s
        samples after its own; time to first result keeps the smaller. ``cost_per_hour`` stays
        this one's."""
        self._latencies.extend(other._latencies)
        self.latency_count += other.latency_count
        self.latency_sum += other.latency_sum
        for i, n in enumerate(other._latency_buckets):
            self._latency_buckets[i] += n
        self.audio_seconds += other.audio_seconds
        self.results += other.results
        self.finals += other.finals
        self.words += other.words
        self.errors += other.errors
        self.failovers += other.failovers
        firsts = [
            t for t in (self.time_to_first_result, other.time_to_first_result) if t is not None
        ]
        self.time_to_first_result = min(firsts) if firsts else None

    # -- statistics ---------------------------------------------------------------------
    def _percentile(self, q: float) -> float | None:
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        # nearest-rank percentile
        rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
        return ordered[rank - 1]

    @property
    def median_latency(self) -> float | None:
        """Median latency in seconds, ``None`` before the first result."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        mid = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[mid]
        return (ordered[mid - 1] + ordered[mid]) / 2

    @property
    def p99_latency(self) -> float | None:
        """99th-percentile latency (nearest rank) in seconds."""
        return self._percentile(0.99)

    @property
    def word_emission_rate(self) -> float:
        """Final words per second of audio sent."""
        return self.words / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def cost(self) -> Decimal:
        """What the audio sent so far costs at ``cost_per_hour`` (or what the source given to
        :meth:`price_by` says)."""
        if self._cost_source is not None:
            return self._cost_source()
        return cost_for(self.cost_per_hour, self.audio_seconds)

    def latency_histogram(self, bounds: tuple[float, ...]) -> list[int]:
        """Cumulative counts of latencies ``<= b`` for each bound (for Prometheus export)."""
        ordered = sorted(self._latencies)
        return [bisect.bisect_right(ordered, b) for b in bounds]

    def cumulative_latency_buckets(self) -> list[tuple[float, int]]:
        """``(bound, count of every latency <= bound)`` for :data:`LATENCY_BUCKETS`, never
        windowed, so the counts only grow (a Prometheus histogram; ``+Inf`` is
        ``latency_count``)."""
        out, total = [], 0
        for bound, n in zip(LATENCY_BUCKETS, self._latency_buckets, strict=True):
            total += n
            out.append((bound, total))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_latency": self.median_latency,
            "p99_latency": self.p99_latency,
            "time_to_first_result": self.time_to_first_result,
            "word_emission_rate": self.word_emission_rate,
            "audio_seconds": self.audio_seconds,
            "results": self.results,
            "finals": self.finals,
            "words": self.words,
            "errors": self.errors,
            "failovers": self.failovers,
            "cost": str(self.cost),
        }

    def __repr__(self) -> str:
        return (
            f"STTMetrics(audio_seconds={self.audio_seconds:.3f}, results={self.results}, "
            f"median_latency={self.median_latency}, p99_latency={self.p99_latency}, "
            f"cost={self.cost})"
        )
