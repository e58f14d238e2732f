"""Health monitoring with probes that bill no transcription.

A probe is an ``async () -> None`` that raises when the endpoint is not usable. Adapters
provide one as ``service.probe()`` (a WebSocket handshake, a ``GET /health``, a model-list
call — never audio); :func:`http_probe` and :func:`websocket_probe` are the defaults for plain
URLs. :class:`HealthMonitor` runs every probe each ``interval`` seconds of the injected clock
and keeps a status per endpoint with UnaMentis' thresholds::

    HEALTHY ──1 failure──▶ DEGRADED ──3 consecutive failures──▶ UNHEALTHY
       ▲                                                            │
       └──────────── 2 consecutive successes ◀──────────────────────┘

A probe that succeeds but takes longer than ``degraded_latency`` counts as DEGRADED. The
monitor is a health view: ``is_available(endpoint_id)`` is false only while UNHEALTHY.
Real traffic can feed it too (:meth:`HealthMonitor.observe`), so a failing stream counts
without waiting for the next probe.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import attrs

from sttrouter.clock import SYSTEM_CLOCK, Clock, fail_after
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError, ConnectionFailed, ConnectTimeout, STTError
from sttrouter.service import STTService

__all__ = [
    "HealthConfig",
    "HealthMonitor",
    "HealthStatus",
    "Probe",
    "http_probe",
    "service_probe",
    "websocket_probe",
]

log = logging.getLogger("sttrouter.resilience")

Probe = Callable[[], Awaitable[None]]
"""An ``async () -> None`` that raises when the endpoint is not usable."""


class HealthStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    """Not probed yet (counts as available)."""
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Failing now and then, or slow; still used."""
    UNHEALTHY = "unhealthy"
    """Failed ``unhealthy_after`` probes in a row; routers skip it."""


@attrs.frozen
class HealthConfig:
    """Probe schedule and thresholds (UnaMentis: 30 s, unhealthy after 3, healthy after 2).

    Attributes:
        interval: seconds between probe rounds.
        timeout: seconds one probe may take before it counts as failed.
        unhealthy_after: consecutive failures that make an endpoint UNHEALTHY.
        healthy_after: consecutive successes that make it HEALTHY again.
        degraded_latency: a successful probe slower than this (seconds) reads DEGRADED.
    """

    interval: float = 30.0
    timeout: float = 5.0
    unhealthy_after: int = 3
    healthy_after: int = 2
    degraded_latency: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ConfigError("health interval and timeout must be positive")
        if self.unhealthy_after < 1 or self.healthy_after < 1:
            raise ConfigError("unhealthy_after and healthy_after must be at least 1")


@attrs.define
class _Record:
    probe: Probe
    status: HealthStatus = HealthStatus.UNKNOWN
    failures: int = 0
    successes: int = 0
    last_error: str | None = None
    last_latency: float | None = None
    last_checked: float | None = None


StatusListener = Callable[[str, HealthStatus, HealthStatus], None]


class HealthMonitor:
    """Probes endpoints on a schedule and tracks healthy / degraded / unhealthy.

    Args:
        probes: ``endpoint_id -> probe`` to start with (more with :meth:`add`).
        config: schedule and thresholds.
        clock: time source for the schedule, timeouts and latencies.
        on_change: called as ``on_change(endpoint_id, old, new)`` on every status change.
    """

    def __init__(
        self,
        probes: Mapping[str, Probe] | None = None,
        *,
        config: HealthConfig | None = None,
        clock: Clock | None = None,
        on_change: StatusListener | None = None,
    ) -> None:
        self.config = config or HealthConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._on_change = on_change
        self._records: dict[str, _Record] = {}
        for eid, probe in (probes or {}).items():
            self.add(eid, probe)

    @classmethod
    def for_endpoints(
        cls,
        endpoints: Iterable[STTEndpoint],
        *,
        factory: Callable[[STTEndpoint], STTService] | None = None,
        **kwargs: Any,
    ) -> HealthMonitor:
        """A monitor probing each endpoint through its adapter's ``probe()``
        (:func:`service_probe`); ``kwargs`` go to the constructor."""
        return cls({ep.id: service_probe(ep, factory) for ep in endpoints}, **kwargs)

    def add(self, endpoint_id: str, probe: Probe) -> None:
        """Watch ``endpoint_id`` with ``probe`` (replaces an earlier probe)."""
        old = self._records.get(endpoint_id)
        if old is None:
            self._records[endpoint_id] = _Record(probe)
        else:
            old.probe = probe

    def remove(self, endpoint_id: str) -> None:
        self._records.pop(endpoint_id, None)

    def status(self, endpoint_id: str) -> HealthStatus:
        rec = self._records.get(endpoint_id)
        return rec.status if rec else HealthStatus.UNKNOWN

    def statuses(self) -> dict[str, HealthStatus]:
        return {eid: r.status for eid, r in self._records.items()}

    def last_error(self, endpoint_id: str) -> str | None:
        rec = self._records.get(endpoint_id)
        return rec.last_error if rec else None

    def is_available(self, endpoint_id: str) -> bool:
        """False only while the endpoint is UNHEALTHY."""
        return self.status(endpoint_id) is not HealthStatus.UNHEALTHY

    async def check(self, endpoint_id: str) -> HealthStatus:
        """Run the endpoint's probe once now and update its status."""
        rec = self._records[endpoint_id]
        start = self.clock.now()
        try:
            async with fail_after(self.clock, self.config.timeout):
                await rec.probe()
        except TimeoutError:
            self._failure(endpoint_id, rec, f"probe timed out after {self.config.timeout:g}s")
        except Exception as exc:  # a probe's failure is data, whatever it raised
            self._failure(endpoint_id, rec, f"{type(exc).__name__}: {exc}")
        else:
            self._success(endpoint_id, rec, self.clock.now() - start)
        rec.last_checked = self.clock.now()
        return rec.status

    async def check_all(self) -> dict[str, HealthStatus]:
        """Probe every endpoint concurrently once."""
        async with anyio.create_task_group() as tg:
            for eid in list(self._records):
                tg.start_soon(self.check, eid)
        return self.statuses()

    async def run(self) -> None:
        """Probe every ``interval`` seconds until cancelled (run it in a task group)."""
        while True:
            await self.check_all()
            await self.clock.sleep(self.config.interval)

    def observe(self, endpoint_id: str, ok: bool, reason: str = "") -> None:
        """Feed the outcome of real traffic (a stream that worked or failed)."""
        rec = self._records.get(endpoint_id)
        if rec is None:
            return
        if ok:
            self._success(endpoint_id, rec, None)
        else:
            self._failure(endpoint_id, rec, reason or "stream failed")

    # -- internals ----------------------------------------------------------------------
    def _success(self, eid: str, rec: _Record, latency: float | None) -> None:
        rec.failures = 0
        rec.successes += 1
        rec.last_latency = latency
        slow = (
            latency is not None
            and self.config.degraded_latency is not None
            and latency > self.config.degraded_latency
        )
        if slow:
            new = HealthStatus.DEGRADED
        elif (
            rec.status in (HealthStatus.UNKNOWN, HealthStatus.HEALTHY)
            or rec.successes >= self.config.healthy_after
        ):
            new = HealthStatus.HEALTHY
        else:
            new = rec.status  # UNHEALTHY/DEGRADED hold until `healthy_after` successes
        self._set(eid, rec, new)

    def _failure(self, eid: str, rec: _Record, reason: str) -> None:
        rec.successes = 0
        rec.failures += 1
        rec.last_error = reason
        if rec.failures >= self.config.unhealthy_after:
            new = HealthStatus.UNHEALTHY
        else:
            new = (
                HealthStatus.UNHEALTHY
                if rec.status is HealthStatus.UNHEALTHY
                else HealthStatus.DEGRADED
            )
        self._set(eid, rec, new)

    def _set(self, eid: str, rec: _Record, new: HealthStatus) -> None:
        old = rec.status
        if old is new:
            return
        rec.status = new
        log.info(
            "health %s: %s -> %s%s",
            eid,
            old.value,
            new.value,
            f" ({rec.last_error})" if new is HealthStatus.UNHEALTHY else "",
        )
        if self._on_change is not None:
            self._on_change(eid, old, new)


def service_probe(
    endpoint: STTEndpoint, factory: Callable[[STTEndpoint], STTService] | None = None
) -> Probe:
    """A probe that builds a fresh adapter for ``endpoint`` (default
    :func:`sttrouter.providers.create_service`) and awaits its ``probe()``: a handshake, a
    health or model-list request — never audio, so nothing is billed."""

    async def probe() -> None:
        if factory is None:
            from sttrouter.providers import create_service

            service = create_service(endpoint)
        else:
            service = factory(endpoint)
        await service.probe()

    return probe


def http_probe(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    transport: object | None = None,
) -> Probe:
    """A probe that GETs ``url`` (a health or model-list URL) and wants a 2xx answer.

    Args:
        headers: sent with the request (for example an ``Authorization`` header).
        timeout: socket timeout, seconds.
        transport: an ``httpx`` transport, for tests (``httpx.MockTransport``).
    """

    async def probe() -> None:
        import httpx  # a core dependency, imported only when probing

        kwargs: dict[str, object] = {"timeout": timeout}
        if transport is not None:
            kwargs["transport"] = transport
        try:
            async with httpx.AsyncClient(**kwargs) as client:  # type: ignore[arg-type]
                response = await client.get(url, headers=dict(headers or {}))
        except httpx.TimeoutException as exc:
            raise ConnectTimeout(f"GET {url} timed out after {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise ConnectionFailed(f"GET {url} answered HTTP {response.status_code}")

    return probe


def websocket_probe(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> Probe:
    """A probe that opens a WebSocket to ``url`` (the handshake only) and closes it again.

    No audio is sent, so nothing is billed by engines that bill audio seconds.
    """

    async def probe() -> None:
        from websockets.asyncio.client import connect  # a core dependency

        try:
            async with connect(url, additional_headers=dict(headers or {}), open_timeout=timeout):
                pass
        except TimeoutError as exc:
            raise ConnectTimeout(f"WebSocket {url} did not open within {timeout:g}s") from exc
        except STTError:
            raise
        except Exception as exc:
            raise ConnectionFailed(
                f"WebSocket {url} handshake failed: {type(exc).__name__}: {exc}"
            ) from exc

    return probe
