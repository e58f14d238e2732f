"""Resilience primitives, all pure and clock-injected.

- :class:`CircuitBreaker` / :class:`BreakerBoard`: closed → open → half-open per endpoint.
- :class:`HealthMonitor`: probes that bill no transcription; healthy / degraded / unhealthy.
- :class:`RetryPolicy`: exponential backoff with seedable jitter; permanent errors never retried.
- :class:`AdmissionController`: per-endpoint concurrency limit with a bounded, deadline-bound
  wait queue.

Breaker boards and health monitors are *health views* (``is_available(endpoint_id)``);
:func:`all_available` combines several into one for ``Router.decide(..., health=...)``.
"""

from __future__ import annotations

from typing import Protocol

from sttrouter.resilience.admission import AdmissionController, AdmissionRefused, Permit
from sttrouter.resilience.breaker import BreakerBoard, BreakerConfig, BreakerState, CircuitBreaker
from sttrouter.resilience.health import (
    HealthConfig,
    HealthMonitor,
    HealthStatus,
    Probe,
    http_probe,
    service_probe,
    websocket_probe,
)
from sttrouter.resilience.retry import RetryPolicy

__all__ = [
    "AdmissionController",
    "AdmissionRefused",
    "AvailabilityView",
    "BreakerBoard",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "HealthConfig",
    "HealthMonitor",
    "HealthStatus",
    "Permit",
    "Probe",
    "RetryPolicy",
    "all_available",
    "http_probe",
    "service_probe",
    "websocket_probe",
]


class AvailabilityView(Protocol):
    """Anything that says whether an endpoint may take traffic now."""

    def is_available(self, endpoint_id: str) -> bool: ...


class _AllOf:
    def __init__(self, views: tuple[AvailabilityView, ...]) -> None:
        self.views = views

    def is_available(self, endpoint_id: str) -> bool:
        return all(v.is_available(endpoint_id) for v in self.views)

    def __repr__(self) -> str:
        return f"all_available{self.views!r}"


def all_available(*views: AvailabilityView | None) -> AvailabilityView:
    """One view that is available only where every given view is (``None``s are ignored)."""
    kept = tuple(v for v in views if v is not None)
    if len(kept) == 1:
        return kept[0]
    return _AllOf(kept)
