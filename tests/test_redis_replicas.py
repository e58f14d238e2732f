"""Replicas as real processes sharing one real redis-server: a breaker opened in one is seen by
all, a limit holds exactly across them, a SIGKILLed replica's leases expire, and a Redis that
dies and comes back mid-run is re-synced."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_fixture import RedisServer
from redis_replica import Replica


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[Callable[[int], list[Replica]]]:
    started: list[Replica] = []

    def make(n: int) -> list[Replica]:
        replicas = [Replica(redis_server.url, lease_ttl=1.0) for _ in range(n)]
        started.extend(replicas)
        return [r.wait_ready() for r in replicas]

    yield make
    for r in started:
        r.close()


def _until(cond: Callable[[], Any], limit: float = 20.0) -> None:
    """Bounded poll of a condition other processes make true."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_a_breaker_opened_in_one_replica_is_seen_by_all(
    fleet: Callable[[int], list[Replica]],
) -> None:
    first, *others = fleet(3)
    assert first.ask("state dg") == "closed"
    first.ask("trip dg")
    for r in others:
        r.send("wait_open dg")
    for r in others:
        r.read()
        assert r.ask("state dg") == "open"


def test_a_limit_holds_exactly_across_replicas(fleet: Callable[[int], list[Replica]]) -> None:
    replicas = fleet(4)
    for r in replicas:
        r.send("hold lim 5 10")  # 40 simultaneous attempts on a limit of 5
    admitted = [r.read() for r in replicas]
    assert sum(admitted) == 5
    holder = next(r for r, n in zip(replicas, admitted, strict=True) if n)
    waiter = next(r for r in replicas if r is not holder)
    waiter.send("acquire lim 5 10")
    holder.ask("release")
    assert waiter.read() is not False  # the released slot went to the waiting replica


def test_a_killed_replicas_leases_expire(fleet: Callable[[int], list[Replica]]) -> None:
    doomed, survivor = fleet(2)
    assert doomed.ask("hold lim 3 3") == 3
    assert survivor.ask("hold lim 3 1") == 0
    survivor.send("acquire lim 3 15")
    doomed.kill()  # its leases are no longer renewed: they expire after the lease TTL
    assert survivor.read() is not False


def test_redis_killed_and_restarted_mid_run(
    redis_server: RedisServer, fleet: Callable[[int], list[Replica]]
) -> None:
    a, b = fleet(2)
    redis_server.stop()
    _until(lambda: not a.ask("status")["ok"])
    a.ask("trip dg")  # learnt while Redis is down: routing goes on locally
    assert a.ask("state dg") == "open"
    assert a.ask("hold free 1 1") == 1  # the fallback limit admits locally
    redis_server.start()
    _until(lambda: a.ask("status")["ok"] and b.ask("status")["ok"])
    _until(lambda: b.ask("state dg") == "open")  # re-synced from a's re-asserted breaker
