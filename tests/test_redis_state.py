"""RedisState against a real redis-server: two stores in one process share what they learn,
claim the half-open trial once, keep routing while the server is down, and read [state]."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_fixture import RedisServer

from sttrouter import RoutingContext
from sttrouter.errors import ConfigError
from sttrouter.resilience import BreakerConfig, BreakerState, HealthStatus
from sttrouter.state import InMemoryState, RedisSettings, RedisState, store_from_config
from sttrouter.testing import FakeClock, fake_endpoint

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _pair(server: RedisServer, n: int = 2, **kwargs: Any) -> AsyncIterator[list[RedisState]]:
    settings = kwargs.pop("settings", RedisSettings(lease_ttl=1.0, poll_interval=0.02))
    async with AsyncExitStack() as stack:
        stores = []
        for i in range(n):
            s = RedisState.from_url(server.url, settings=settings, replica_id=f"r{i}", **kwargs)
            await s.start()
            stack.push_async_callback(s.aclose)
            stores.append(s)
        await _until(lambda: all(s.subscribed for s in stores))
        yield stores


async def _until(cond: Callable[[], object], tries: int = 3000) -> None:
    """Bounded poll: yield to the loop until ``cond()`` holds."""
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_a_tripped_breaker_and_its_failure_reach_the_other_replica(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    async with _pair(redis_server, clock=clock, breaker_config=BreakerConfig(cool_down=30)) as (
        a,
        b,
    ):
        a.breakers.breaker("dg").trip("key rejected")
        await _until(lambda: b.breakers.breaker("dg").state is BreakerState.OPEN)
        assert not b.view.is_available("dg")
        assert b.failures.unusable() == {"dg": "key rejected"}
        assert b.breakers.breaker("dg").permanent
        assert b.breakers.breaker("dg").remaining == pytest.approx(30, abs=1)

        # the half-open trial: exactly one replica owns it
        await clock.advance(30)
        ba, bb = a.breakers.breaker("dg"), b.breakers.breaker("dg")
        assert ba.state is BreakerState.HALF_OPEN
        assert bb.state is BreakerState.HALF_OPEN
        ba.is_available(), bb.is_available()  # both ask: the claim goes to the server
        await _until(lambda: len(a._trials.get("dg", ("", 0))[0]) > 0)
        await _until(lambda: len(b._trials.get("dg", ("", 0))[0]) > 0)
        winners = [s for s in (ba, bb) if s.try_acquire()]
        assert len(winners) == 1
        winners[0].record_success()
        other = bb if winners[0] is ba else ba
        await _until(lambda: other.state is BreakerState.CLOSED)
        await _until(lambda: a.failures.unusable() == {} == b.failures.unusable())


async def test_a_new_replica_loads_the_fleet_state(redis_server: RedisServer) -> None:
    async with _pair(redis_server, n=1) as (a,):
        a.breakers.breaker("dg").trip("no quota")
        a.usage.add("dg", audio_seconds=3.0, sessions=1, cost=0.002)
        a.health_changed("gs", HealthStatus.HEALTHY, HealthStatus.UNHEALTHY)
        await a.flush()
        async with _pair(redis_server, n=1) as (late,):
            await _until(lambda: late.breakers.breaker("dg").state is BreakerState.OPEN)
            assert late.failures.unusable() == {"dg": "no quota"}
            assert late.usage.fleet("dg").sessions == 1
            assert not late.view.is_available("gs")
            snap = late.snapshot()
            assert snap["dg"]["breaker"] == "open"
            assert snap["dg"]["usage"]["audio_seconds"] == 3.0


async def test_admission_is_exact_across_replicas(redis_server: RedisServer) -> None:
    ep = fake_endpoint("lim", max_concurrent_sessions=3)
    async with _pair(redis_server, n=3) as stores:
        got = await asyncio.gather(
            *(s.admission.try_acquire_async(ep) for s in stores for _ in range(5))
        )
        held = [p for p in got if p is not None]
        assert len(held) == 3
        waiter = asyncio.ensure_future(stores[2].admission.acquire(ep, max_wait=30))
        await _until(lambda: stores[2].admission.waiting("lim") == 1)
        assert not stores[2].admission.has_capacity(ep)
        held[0].release()
        permit = await waiter  # woken by the release, not by a timer
        assert stores[2].leased.fleet_in_use("lim") == 3
        for p in [*held[1:], permit]:
            p.release()


async def test_redis_down_routes_on_the_local_view_then_resyncs(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RedisSettings(lease_ttl=1.0, deadline=0.2, replicas=2, poll_interval=0.02)
    ep = fake_endpoint("lim", max_concurrent_sessions=4)
    caplog.set_level(logging.WARNING, logger="sttrouter.state")
    async with _pair(redis_server, settings=settings) as (a, b):
        redis_server.stop()
        await _until(lambda: not a.status()["ok"])
        # fallback: ceil(4 / 2) = 2 streams here, and nothing waits on the server
        p1 = await a.admission.acquire(ep)
        p2 = a.admission.try_acquire(ep)
        assert p2 is not None
        assert a.admission.try_acquire(ep) is None
        a.breakers.breaker("dg").trip("key rejected")  # learnt while the server is down
        assert not a.view.is_available("dg")
        redis_server.start()
        await _until(lambda: a.status()["ok"] and b.status()["ok"], tries=10000)
        await _until(lambda: b.breakers.breaker("dg").state is BreakerState.OPEN, tries=10000)
        p1.release()
        p2.release()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 2  # one per replica for the whole outage


async def test_config_from_the_registry_file(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[state]\nurl_env = "TEST_REDIS_URL"\nkey_prefix = "t1"\nlease_ttl = 5\n\n'
        '[[endpoint]]\nid = "a"\nprovider = "fake"\nlocation = "on_device"\n'
        "needs_network = false\n"
    )
    monkeypatch.setenv("TEST_REDIS_URL", redis_server.url)
    async with RoutingContext.from_toml(path) as ctx:
        assert isinstance(ctx.state, RedisState)
        assert ctx.state.settings.key_prefix == "t1"
        assert ctx.state.status()["ok"]
        assert "t1" in repr(ctx.state)
        ctx.state.breakers.breaker("a").trip("x")
        client = aioredis.Redis.from_url(redis_server.url)
        for _ in range(2000):
            if await client.exists("t1:{a}:breaker"):
                break
            await asyncio.sleep(0.001)
        assert await client.exists("t1:{a}:breaker")
        await client.aclose()
    assert "url_env" not in ctx.registry.dumps() or "TEST_REDIS_URL" in ctx.registry.dumps()


def test_state_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="never write"):
        RedisSettings.from_dict({"url": "redis://:pw@host"})
    with pytest.raises(ConfigError, match="unknown key"):
        RedisSettings.from_dict({"lease": 3})
    with pytest.raises(ConfigError, match="positive"):
        RedisSettings.from_dict({"lease_ttl": 0})
    with pytest.raises(ConfigError, match="non-empty"):
        RedisSettings.from_dict({"key_prefix": ""})
    with pytest.raises(ConfigError, match="table"):
        RedisSettings.from_dict([])  # type: ignore[arg-type]
    monkeypatch.delenv("NO_SUCH_REDIS", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_REDIS"):
        store_from_config({"url_env": "NO_SUCH_REDIS"})
    assert isinstance(store_from_config({}), InMemoryState)
    assert isinstance(store_from_config({"store": "memory"}), InMemoryState)
    with pytest.raises(ConfigError, match="no other"):
        store_from_config({"store": "memory", "lease_ttl": 3})
    with pytest.raises(ConfigError, match="must be"):
        store_from_config({"store": "etcd"})
    assert RedisSettings(replicas=4).fallback_limit(10) == 3
    assert RedisSettings(replicas=4).fallback_limit(1) == 1


async def test_status_never_shows_the_password_and_bad_messages_are_skipped(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url.replace("redis://", "redis://user:secret@")
    state = RedisState.from_url(url, settings=RedisSettings(deadline=0.2))
    assert "secret" not in str(state.status())
    assert state.status()["ok"] is False  # not started
    state.apply_message(b"not json")
    state.apply_message('{"t": "breaker"}')
    state.apply_message('{"t": "release", "id": "x"}')
    await state.aclose()
