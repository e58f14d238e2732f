"""Endpoint pools and cost budgets, side by side in one run.

(a) **Pools.** Four replicas of one engine behind no load balancer, one of them slowed (its
    finals come ``--slow`` times later, so each stream holds it longer while it waits for its
    last final, and its observed latency is higher). Streams arrive at random (Poisson) and
    each asks ``Router.decide(load=PoolLoad(admission counts, latency=observed))`` for its
    replica. Reported: the share of streams the slowed replica got, against the 25 % that
    round-robin sends it, and the mean time a stream waits for its last final under each.

(b) **Budgets.** Four backend replicas (four ``BudgetBook`` objects over one set of spend
    counters, as replicas over the shared store have) serve one tenant whose ``free_only``
    budget is ``--limit`` US$ per day. Streams of that tenant open at random across the
    replicas on a priced endpoint (a free one is next in the chain); each stream meters its
    spend and asks its replica's router again at every utterance boundary, where it moves to
    the free endpoint once the budget is spent. Reported: the spend when the limit is crossed
    and in the end, the streams in flight at that moment, and the overspend against its bound
    (streams in flight × one utterance at the priced endpoint's rate).

Both run on virtual time (an event queue), so the figures do not depend on the machine; the
routing choices are made by the real ``Router``, ``PoolLoad`` and ``BudgetBook``.

    .venv/bin/python benchmarks/routing_features.py [--streams 4000] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
from collections import Counter
from decimal import Decimal

from sttrouter.panel import Conditions, EndpointRegistry, Policy, Router, Rule
from sttrouter.panel.budgets import Budget, BudgetBook, InMemorySpend, Period, Spend
from sttrouter.panel.pools import PoolLoad
from sttrouter.testing import fake_endpoint

T0 = 1_798_000_000.0  # a fixed wall-clock start (UTC), well inside one day


class Held(Counter[str]):
    """Streams per replica (what an admission controller counts)."""

    def in_use(self, endpoint_id: str) -> int:
        return self[endpoint_id]


def pools(streams: int, slow: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    registry = EndpointRegistry()
    members = registry.register_pool(
        fake_endpoint("glm", expected_latency_ms=300),
        [f"http://127.0.0.1:{8000 + i}" for i in range(4)],
    )
    slow_id = members[3].id
    router = Router(registry)
    base_final = 0.3  # seconds from the end of the audio to the last final

    def final_wait(eid: str) -> float:
        return base_final * (slow if eid == slow_id else 1.0) * rng.uniform(0.8, 1.2)

    out: dict[str, float] = {}
    for policy in ("least-loaded", "round-robin"):
        held = Held()
        observed: dict[str, float] = {}  # exponentially weighted recent latency
        load = PoolLoad(held, latency=observed)
        turn = itertools.cycle([m.id for m in members])
        ends: list[tuple[float, str]] = []
        now = 0.0
        chosen: Counter[str] = Counter()
        waits: list[float] = []
        for _ in range(streams):
            now += rng.expovariate(1 / 0.5)  # a new stream every 0.5 s on average
            while ends and ends[0][0] <= now:
                _, eid = heapq.heappop(ends)
                held[eid] -= 1
            if policy == "least-loaded":
                eid = router.decide(Conditions(), load=load).chain[0].id
            else:
                eid = next(turn)
            chosen[eid] += 1
            held[eid] += 1
            audio = rng.uniform(5, 30)  # seconds of speech in the stream
            wait = final_wait(eid)
            waits.append(wait)
            observed[eid] = 0.8 * observed.get(eid, wait) + 0.2 * wait
            heapq.heappush(ends, (now + audio + wait, eid))
        out[f"{policy} share to slow"] = chosen[slow_id] / streams
        out[f"{policy} mean final wait s"] = statistics.fmean(waits)
    return out


def budgets(streams: int, limit: Decimal, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    registry = EndpointRegistry(
        [
            fake_endpoint("cloud", cost_per_hour="0.36", expected_latency_ms=5),
            fake_endpoint("free", expected_latency_ms=50),
        ]
    )
    router = Router(registry, Policy([Rule("cloud-first", prefer=["cloud", "free"])]))
    counters = InMemorySpend()
    now = [0.0]
    books = [
        BudgetBook(
            [Budget("acme", "day", limit_usd=limit)],
            counters=counters,
            wall=lambda: T0 + now[0],
        )
        for _ in range(4)
    ]
    rate = Decimal("0.36") / 3600  # US$ per second of audio on the cloud endpoint
    utterance = 4.0  # seconds between utterance boundaries
    # events: (time, order, stream id, replica, utterances left)
    queue: list[tuple[float, int, int, int, int]] = []
    order = itertools.count()
    t = 0.0
    for sid in range(streams):
        t += rng.expovariate(1 / 0.2)
        heapq.heappush(queue, (t, next(order), sid, rng.randrange(4), rng.randint(3, 60)))
    on_cloud: set[int] = set()
    crossed_at: tuple[float, float, int] | None = None
    while queue:
        when, _, sid, replica, left = heapq.heappop(queue)
        now[0] = when
        book = books[replica]
        if sid in on_cloud:  # an utterance boundary: meter the utterance that just ended
            book.record("acme", Spend(rate * Decimal(utterance), utterance))
            spent = float(book.spent("acme", Period.DAY).cost)
            if crossed_at is None and spent >= float(limit):
                crossed_at = (when, spent, len(on_cloud))
        view = book.view("acme")
        first = router.decide(Conditions(), budget=view).chain[0].id
        if first == "cloud" and left > 0:
            on_cloud.add(sid)
        else:
            on_cloud.discard(sid)
        if left > 0 and sid in on_cloud:
            heapq.heappush(queue, (when + utterance, next(order), sid, replica, left - 1))
    final = float(books[0].spent("acme", Period.DAY).cost)
    assert crossed_at is not None, "raise --streams: the budget was never spent"
    _when, at_cross, in_flight = crossed_at
    bound = in_flight * float(rate) * utterance
    return {
        "limit US$": float(limit),
        "spend when crossed US$": at_cross,
        "final spend US$": final,
        "streams in flight at the crossing": in_flight,
        "overspend US$": final - float(limit),
        "bound US$ (in flight x one utterance)": bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4000)
    parser.add_argument("--slow", type=float, default=5.0, help="how much slower replica 4 is")
    parser.add_argument("--limit", type=Decimal, default=Decimal("2.00"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"(a) pools: 4 replicas, replica 4 {args.slow:g}x slower, {args.streams} streams")
    for name, value in pools(args.streams, args.slow, args.seed).items():
        print(f"    {name:<34} {value:.3f}")
    print(f"(b) budgets: 4 replicas sharing the counters, free_only limit {args.limit} US$/day")
    result = budgets(args.streams, args.limit, args.seed)
    for name, value in result.items():
        print(f"    {name:<38} {value:.4f}")
    ok = result["overspend US$"] <= result["bound US$ (in flight x one utterance)"] + 1e-9
    print(f"    overspend within the bound: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
