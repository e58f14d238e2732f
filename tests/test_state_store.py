"""One suite, both state stores: what routing keeps behaves the same in memory and in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sttrouter.resilience import AdmissionRefused, BreakerConfig, BreakerState, HealthStatus
from sttrouter.state import InMemoryState, RedisSettings, RedisState, StateStore, Usage
from sttrouter.testing import FakeClock, fake_endpoint

pytestmark = pytest.mark.anyio

StoreMaker = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreMaker:
    """``async with make_store(clock=..., **kw) as store`` for the parametrised kind."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory(**kwargs: Any) -> AsyncIterator[StateStore]:
            store = InMemoryState(**kwargs)
            await store.start()
            yield store
            await store.aclose()

        return memory
    server = request.getfixturevalue("redis_server")

    @asynccontextmanager
    async def redis(**kwargs: Any) -> AsyncIterator[StateStore]:
        store = RedisState.from_url(
            server.url, settings=RedisSettings(lease_ttl=2.0, poll_interval=0.05), **kwargs
        )
        await store.start()
        assert store.status()["ok"]
        yield store
        await store.aclose()

    return redis


async def test_breaker_failures_reach_the_ledger_and_snapshot(make_store: StoreMaker) -> None:
    clock = FakeClock()
    cfg = BreakerConfig(failure_threshold=2, cool_down=10)
    async with make_store(clock=clock, breaker_config=cfg) as store:
        assert store.clock is clock
        store.breakers.breaker("a").record_failure("timeout")
        rec = store.failures.last("a")
        assert rec is not None
        assert (rec.permanent, rec.count) == (False, 1)
        store.breakers.breaker("b").trip("key rejected")
        assert store.failures.unusable() == {"b": "key rejected"}
        assert not store.view.is_available("b")
        assert store.view.is_available("a")
        snap = store.snapshot()
        assert snap["b"]["breaker"] == "open"
        assert snap["b"]["last_failure"]["permanent"] is True
        await clock.advance(10)
        b = store.breakers.breaker("b")
        assert b.state is BreakerState.HALF_OPEN
        await _until(lambda: b.try_acquire())  # a shared store claims the trial first
        b.record_success()
        assert store.failures.unusable() == {}
        assert store.status()["ok"] is True


async def test_admission_limit_queue_and_spill(make_store: StoreMaker) -> None:
    clock = FakeClock()
    ep = fake_endpoint("lim", max_concurrent_sessions=2)
    async with make_store(clock=clock, queue_limit=1, queue_timeout=5) as store:
        adm = store.admission
        first = await adm.acquire(ep)
        second = await adm.try_acquire_async(ep)
        assert second is not None
        assert await adm.try_acquire_async(ep) is None  # full: no waiting
        waiter = asyncio.ensure_future(adm.acquire(ep))
        await _until(lambda: adm.waiting("lim") == 1)
        with pytest.raises(AdmissionRefused):  # the queue of one is taken
            await adm.acquire(ep)
        first.release()
        third = await waiter
        assert adm.in_use("lim") == 2
        late = asyncio.ensure_future(adm.acquire(ep))
        await _until(lambda: adm.waiting("lim") == 1)
        await clock.advance(5)
        with pytest.raises(AdmissionRefused):
            await late
        second.release()
        third.release()
        assert adm.in_use("lim") == 0
        assert await adm.try_acquire_async(fake_endpoint("free")) is not None  # no limit


async def test_usage_counters(make_store: StoreMaker) -> None:
    async with make_store() as store:
        store.usage.add("a", audio_seconds=1.5, sessions=1, cost=0.01)
        store.usage.add("a", audio_seconds=0.5)
        assert store.usage.local("a") == Usage(2.0, 1, 0.01)
        if isinstance(store, RedisState):
            await _until_async(store, lambda: store.usage.fleet("a") == Usage(2.0, 1, 0.01))
        assert store.usage.fleet("a") == Usage(2.0, 1, 0.01)
        assert store.usage.endpoint_ids() == ("a",)


async def test_health_changes_are_accepted(make_store: StoreMaker) -> None:
    async with make_store() as store:
        store.health_changed("a", HealthStatus.HEALTHY, HealthStatus.UNHEALTHY)
        assert store.view.is_available("a")  # this replica's own monitor is the local view


async def _until(cond: Callable[[], object], tries: int = 2000) -> None:
    """Bounded poll: yield to the loop (and the server) until ``cond()`` holds."""
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def _until_async(store: RedisState, cond: Callable[[], object]) -> None:
    for _ in range(500):
        await store.refresh()
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never held")
