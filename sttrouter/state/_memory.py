""":class:`InMemoryState`: routing state held in this process (the default store)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.resilience import (
    AdmissionController,
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    HealthStatus,
    HealthView,
    HealthViews,
)
from sttrouter.resilience.breaker import StateListener
from sttrouter.state._ledger import FailureLedger
from sttrouter.state._usage import UsageCounters

__all__ = ["InMemoryState"]


class InMemoryState:
    """Breakers, health views, the failure ledger and admission limits of one process.

    Every failure a breaker is told of is also written to the ledger (a failure that trips the
    breaker at once — a rejected key, no quota — as permanent), and a breaker that closes again
    clears its endpoint's unusable mark.

    Args:
        clock: time source of every part.
        breaker_config: thresholds of every breaker.
        queue_limit: most streams waiting per endpoint for an admission slot.
        queue_timeout: seconds one stream waits for a slot before it spills to the next
            endpoint.
        health: health views to add from the start (e.g. a
            :class:`~sttrouter.resilience.HealthMonitor`).
        on_breaker_change: called as ``(endpoint_id, old, new)`` on every breaker change.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        breaker_config: BreakerConfig | None = None,
        queue_limit: int = 8,
        queue_timeout: float = 2.0,
        health: Iterable[HealthView] = (),
        on_breaker_change: StateListener | None = None,
    ) -> None:
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._on_breaker_change = on_breaker_change
        self._failures = FailureLedger(clock=self._clock)
        self._breakers = BreakerBoard(
            breaker_config,
            clock=self._clock,
            on_change=self._breaker_changed,
            on_failure=self._breaker_failed,
        )
        self._admission = self._make_admission(queue_limit, queue_timeout)
        self._usage = UsageCounters()
        self._health = HealthViews(health)
        self._view = HealthViews([self._breakers, self._health])

    def _make_admission(self, queue_limit: int, queue_timeout: float) -> AdmissionController:
        return AdmissionController(
            clock=self._clock, queue_limit=queue_limit, queue_timeout=queue_timeout
        )

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def breakers(self) -> BreakerBoard:
        return self._breakers

    @property
    def admission(self) -> AdmissionController:
        return self._admission

    @property
    def failures(self) -> FailureLedger:
        return self._failures

    @property
    def health(self) -> HealthViews:
        return self._health

    @property
    def view(self) -> HealthView:
        return self._view

    @property
    def usage(self) -> UsageCounters:
        return self._usage

    def health_changed(self, endpoint_id: str, old: HealthStatus, new: HealthStatus) -> None:
        """A health monitor of this process saw ``endpoint_id`` change (nothing to share in
        memory)."""

    def status(self) -> dict[str, Any]:
        """How the store itself is doing: in memory it always is."""
        return {"store": "memory", "ok": True}

    async def start(self) -> None:
        """Nothing to connect to in memory."""

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Endpoint id → ``breaker`` state, ``available``, ``in_use`` and ``waiting`` streams,
        and ``last_failure`` (or ``None``), for every endpoint the store has seen."""
        breakers = self._breakers.states()
        failures = self._failures.records()
        ids = sorted({*breakers, *failures, *self._admission.endpoint_ids()})
        out: dict[str, dict[str, Any]] = {}
        for eid in ids:
            last = failures.get(eid)
            out[eid] = {
                "breaker": breakers.get(eid, BreakerState.CLOSED).value,
                "available": self._view.is_available(eid),
                "in_use": self._admission.in_use(eid),
                "waiting": self._admission.waiting(eid),
                "last_failure": None if last is None else last.to_dict(),
            }
        return out

    async def aclose(self) -> None:
        """Nothing to release in memory."""

    def __repr__(self) -> str:
        return f"InMemoryState(breakers={self._breakers.states()!r})"

    # -- the ledger follows the breakers ------------------------------------------------
    def _breaker_failed(self, endpoint_id: str, reason: str, permanent: bool) -> None:
        self._failures.record(endpoint_id, reason or "failed", permanent=permanent)

    def _breaker_changed(self, endpoint_id: str, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.CLOSED:
            self._failures.succeeded(endpoint_id)
        if self._on_breaker_change is not None:
            self._on_breaker_change(endpoint_id, old, new)
