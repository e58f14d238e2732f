"""The :class:`StateStore` protocol: where routing keeps what it learns."""

from __future__ import annotations

from typing import Any, Protocol

from sttrouter.clock import Clock
from sttrouter.resilience import (
    AdmissionController,
    BreakerBoard,
    HealthStatus,
    HealthView,
    HealthViews,
)
from sttrouter.state._ledger import FailureLedger
from sttrouter.state._usage import UsageCounters

__all__ = ["StateStore"]


class StateStore(Protocol):
    """What routing learns, held for every session of a routing context.

    Each part is a *local view*: routers and sessions read it synchronously on the hot path
    (deciding, sending audio) and never wait on anything remote. A store shared between
    processes keeps these same objects and keeps them in sync in the background: it publishes
    the changes its own sessions make and applies the ones other processes make. Claims that
    must hold exactly across processes (an admission slot, a half-open breaker's one trial) are
    taken through the parts' own methods, and the ones that may wait are already ``async``
    (:meth:`AdmissionController.acquire`).

    :class:`~sttrouter.state.InMemoryState` is the default: everything lives in this process.
    """

    @property
    def clock(self) -> Clock:
        """The time source of every part (breaker cool-downs, queue deadlines, records)."""
        ...

    @property
    def breakers(self) -> BreakerBoard:
        """One circuit breaker per endpoint."""
        ...

    @property
    def admission(self) -> AdmissionController:
        """Per-endpoint concurrency limits and their wait queues."""
        ...

    @property
    def failures(self) -> FailureLedger:
        """The last failure of every endpoint, and which are unusable."""
        ...

    @property
    def health(self) -> HealthViews:
        """Health views besides the breakers (health monitors); add more at any time."""
        ...

    @property
    def view(self) -> HealthView:
        """Breakers and health together: the view routing decisions ask."""
        ...

    @property
    def usage(self) -> UsageCounters:
        """Audio seconds, sessions and cost per endpoint."""
        ...

    def health_changed(self, endpoint_id: str, old: HealthStatus, new: HealthStatus) -> None:
        """A health monitor of this process saw ``endpoint_id`` change status (a shared store
        tells the other processes)."""
        ...

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Endpoint id → what the store knows about it, JSON-ready."""
        ...

    def status(self) -> dict[str, Any]:
        """How the store itself is doing, JSON-ready: ``ok`` is false while a shared store
        cannot reach its server (routing goes on from the local view); for readiness checks
        and metrics."""
        ...

    async def start(self) -> None:
        """Connect and load what is already known (a no-op in memory); returns within the
        store's deadline even when its server is down."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (connections, background tasks)."""
        ...
