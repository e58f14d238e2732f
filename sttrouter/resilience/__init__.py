"""Resilience primitives, all pure and clock-injected.

- :class:`CircuitBreaker` / :class:`BreakerBoard`: closed → open → half-open per endpoint.
- :class:`HealthMonitor`: probes that bill no transcription; healthy / degraded / unhealthy.
- :class:`RetryPolicy`: exponential backoff with seedable jitter; permanent errors never retried.
- :class:`AdmissionController`: per-endpoint concurrency limit with a bounded, deadline-bound
  wait queue.

Breaker boards and health monitors are *health views* (:class:`HealthView`:
``is_available(endpoint_id)``, the one protocol the router asks); :class:`HealthViews` and
:func:`all_available` combine several into one for ``Router.decide(..., health=...)``.
"""

from __future__ import annotations

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
from sttrouter.resilience.views import HealthView, HealthViews, all_available

__all__ = [
    "AdmissionController",
    "AdmissionRefused",
    "BreakerBoard",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "HealthConfig",
    "HealthMonitor",
    "HealthStatus",
    "HealthView",
    "HealthViews",
    "Permit",
    "Probe",
    "RetryPolicy",
    "all_available",
    "http_probe",
    "service_probe",
    "websocket_probe",
]
