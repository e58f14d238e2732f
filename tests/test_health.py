from __future__ import annotations

import anyio
import httpx
import pytest
from websockets.asyncio.server import serve

from sttrouter.errors import ConfigError, ConnectionFailed, ConnectTimeout
from sttrouter.resilience import (
    BreakerBoard,
    HealthConfig,
    HealthMonitor,
    HealthStatus,
    HealthViews,
    all_available,
    http_probe,
    service_probe,
    websocket_probe,
)
from sttrouter.testing import FakeClock, FakeSTTService, fake_endpoint

pytestmark = pytest.mark.anyio


class Switch:
    """A probe whose outcome the test flips."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.delay = 0.0
        self.clock: FakeClock | None = None

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay and self.clock is not None:
            await self.clock.sleep(self.delay)
        if not self.up:
            raise ConnectionFailed("down")


async def test_thresholds_unhealthy_after_3_healthy_after_2() -> None:
    clock = FakeClock()
    sw = Switch()
    changes: list[str] = []
    mon = HealthMonitor({"glm": sw}, clock=clock, on_change=lambda e, o, n: changes.append(n.value))
    assert mon.status("glm") is HealthStatus.UNKNOWN
    assert mon.is_available("glm")
    assert await mon.check("glm") is HealthStatus.HEALTHY
    sw.up = False
    assert await mon.check("glm") is HealthStatus.DEGRADED
    assert mon.is_available("glm")
    assert await mon.check("glm") is HealthStatus.DEGRADED
    assert await mon.check("glm") is HealthStatus.UNHEALTHY
    assert not mon.is_available("glm")
    assert "ConnectionFailed" in (mon.last_error("glm") or "")
    sw.up = True
    assert await mon.check("glm") is HealthStatus.UNHEALTHY  # one success is not enough
    assert await mon.check("glm") is HealthStatus.HEALTHY
    assert changes == ["healthy", "degraded", "unhealthy", "healthy"]


async def test_degraded_recovers_after_two_successes_and_slow_probe_degrades() -> None:
    clock = FakeClock()
    sw = Switch()
    sw.clock = clock
    mon = HealthMonitor(
        {"a": sw}, clock=clock, config=HealthConfig(degraded_latency=1.0, timeout=5.0)
    )
    sw.up = False
    await mon.check("a")
    sw.up = True
    assert await mon.check("a") is HealthStatus.DEGRADED
    assert await mon.check("a") is HealthStatus.HEALTHY
    sw.delay = 2.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(mon.check, "a")
        await clock.advance(2.0)
    assert mon.status("a") is HealthStatus.DEGRADED


async def test_probe_timeout_counts_as_failure() -> None:
    clock = FakeClock()
    sw = Switch()
    sw.clock = clock
    sw.delay = 100.0
    mon = HealthMonitor({"a": sw}, clock=clock, config=HealthConfig(timeout=5.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(mon.check, "a")
        await clock.advance(5.0)
    assert mon.status("a") is HealthStatus.DEGRADED
    assert "timed out" in (mon.last_error("a") or "")


async def test_run_probes_every_interval_on_the_clock() -> None:
    clock = FakeClock()
    a, b = Switch(), Switch()
    mon = HealthMonitor({"a": a}, clock=clock)
    mon.add("b", b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mon.run)
        await clock.advance(0)
        assert (a.calls, b.calls) == (1, 1)
        await clock.advance(29.0)
        assert a.calls == 1
        await clock.advance(1.0)
        assert (a.calls, b.calls) == (2, 2)
        await clock.advance(60.0)
        assert a.calls == 4
        tg.cancel_scope.cancel()
    mon.remove("b")
    assert mon.statuses() == {"a": HealthStatus.HEALTHY}
    mon.add("a", b)  # replace the probe, keep the record
    assert mon.status("a") is HealthStatus.HEALTHY


async def test_observe_real_traffic() -> None:
    mon = HealthMonitor({"a": Switch()}, clock=FakeClock())
    for _ in range(3):
        mon.observe("a", False, "stream dropped")
    assert mon.status("a") is HealthStatus.UNHEALTHY
    mon.observe("a", True)
    mon.observe("a", True)
    assert mon.status("a") is HealthStatus.HEALTHY
    mon.observe("unknown", False)  # ignored
    assert mon.status("unknown") is HealthStatus.UNKNOWN


async def test_fake_service_probe_bills_nothing() -> None:
    clock = FakeClock()
    svc = FakeSTTService(fake_endpoint("f"), clock=clock)
    mon = HealthMonitor({"f": svc.probe}, clock=clock)
    assert await mon.check("f") is HealthStatus.HEALTHY
    svc.down = True
    assert await mon.check("f") is HealthStatus.DEGRADED
    assert svc.streams_started == 0
    assert svc.metrics.audio_seconds == 0


async def test_http_probe() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            assert request.headers["authorization"] == "Bearer t"
            return httpx.Response(200, json={"ok": True})
        if request.url.path == "/slow":
            raise httpx.ReadTimeout("slow", request=request)
        if request.url.path == "/refused":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503)

    t = httpx.MockTransport(handler)
    await http_probe("http://x/health", headers={"authorization": "Bearer t"}, transport=t)()
    with pytest.raises(ConnectionFailed, match="HTTP 503"):
        await http_probe("http://x/down", transport=t)()
    with pytest.raises(ConnectTimeout):
        await http_probe("http://x/slow", transport=t)()
    with pytest.raises(ConnectionFailed, match="ConnectError"):
        await http_probe("http://x/refused", transport=t)()


async def test_websocket_probe_real_socket() -> None:
    async def echo(ws: object) -> None:
        return None

    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await websocket_probe(f"ws://127.0.0.1:{port}/v1/audio/stream")()
    with pytest.raises(ConnectionFailed, match="handshake failed"):
        await websocket_probe(f"ws://127.0.0.1:{port}/", timeout=2.0)()


async def test_all_available_combines_views() -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    mon = HealthMonitor({"a": Switch()}, clock=clock)
    view = all_available(board, mon, None)
    assert view.is_available("a")
    for _ in range(3):
        mon.observe("a", False)
    assert not view.is_available("a")
    assert view.is_available("b")
    assert all_available(board) is board
    assert "HealthViews" in repr(view)


async def test_health_views_change_and_forward_traffic() -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    mon = HealthMonitor({"a": Switch()}, config=HealthConfig(unhealthy_after=1), clock=clock)
    views = HealthViews([board])
    views.add(board)  # held once
    assert len(views) == 1
    views.observe("a", False, "nobody listens yet")  # the board takes no traffic outcomes
    views.add(mon)
    assert len(views) == 2
    views.observe("a", False, "stream failed")
    assert not views.is_available("a")
    assert mon.last_error("a") == "stream failed"
    views.observe("a", True)
    views.observe("a", True)
    assert views.is_available("a")
    views.remove(mon)
    assert views.views == [board]


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        HealthConfig(interval=0)
    with pytest.raises(ConfigError):
        HealthConfig(unhealthy_after=0)


async def test_service_probe_and_for_endpoints() -> None:
    clock = FakeClock()
    down = FakeSTTService(fake_endpoint("down"), clock=clock)
    down.down = True
    made: list[str] = []

    def factory(ep: object) -> FakeSTTService:
        made.append(ep.id)  # type: ignore[attr-defined]
        return down if ep.id == "down" else FakeSTTService(ep, clock=clock)  # type: ignore[attr-defined,arg-type]

    mon = HealthMonitor.for_endpoints(
        [fake_endpoint("up"), fake_endpoint("down")], factory=factory, clock=clock
    )
    await mon.check_all()
    assert mon.status("up") is HealthStatus.HEALTHY
    assert mon.status("down") is HealthStatus.DEGRADED
    assert sorted(made) == ["down", "up"]
    # the default factory builds the real adapter (the fake provider here)
    await service_probe(fake_endpoint("real"))()
