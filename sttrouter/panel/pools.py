"""Endpoint pools: one logical endpoint served by several replicas.

Each replica is a real :class:`~sttrouter.endpoint.STTEndpoint` with its own id (``glm#1``,
``glm#2``, ...), so it has its own circuit breaker, health and concurrency limit, and a
``pool`` field naming the logical endpoint. A router keeps a pool's replicas next to each other
in a chain, fewest outstanding streams first (ties: higher ``weight``, then lower recent
latency, then declaration order), so a new stream goes to the least loaded replica and a stream
whose replica fails moves first to a sibling — the same engine, no change of model in the middle
of an utterance — and only then down the chain.

In a registry file a pool is one ``[[endpoint]]`` table with its replicas::

    [[endpoint]]
    id = "glm"
    provider = "glm_server"
    location = "self_hosted"
    replicas = ["https://glm-1.internal", "https://glm-2.internal"]

    # or, with a weight and a concurrency limit per replica:
    [[endpoint.replica]]
    url = "https://glm-3.internal"
    weight = 2
    max_concurrent_sessions = 8

In code: ``registry.register_pool(endpoint, ["https://a.internal", Replica("https://b.internal")])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError

if TYPE_CHECKING:
    from sttrouter.panel.budgets import BudgetView
    from sttrouter.panel.device import Conditions
    from sttrouter.panel.registry import EndpointRegistry
    from sttrouter.panel.router import Decision, HealthView, Router

__all__ = [
    "BoundRouter",
    "LatencyView",
    "LoadView",
    "PoolLoad",
    "Replica",
    "balance",
    "expand_pool",
    "group_pools",
    "pool_to_dict",
    "replica_key",
    "replicas_from_dict",
]


class LoadView(Protocol):
    """How many streams an endpoint holds now (an admission controller is one)."""

    def in_use(self, endpoint_id: str) -> int: ...


class LatencyView(Protocol):
    """An endpoint's recent latency in seconds, when known."""

    def latency(self, endpoint_id: str) -> float | None: ...


class PoolLoad:
    """A :class:`LoadView` with recent latencies for the tie-break.

    Args:
        in_use: streams held per endpoint (``state.admission``, local or fleet-wide).
        latency: endpoint id -> recent latency (seconds) or ``None``; a mapping or a callable.
    """

    def __init__(
        self,
        in_use: LoadView,
        latency: Mapping[str, float] | Callable[[str], float | None] | None = None,
    ) -> None:
        self._in_use = in_use
        self._latency = latency

    def in_use(self, endpoint_id: str) -> int:
        return self._in_use.in_use(endpoint_id)

    def latency(self, endpoint_id: str) -> float | None:
        source = self._latency
        if source is None:
            return None
        if callable(source):
            return source(endpoint_id)
        return source.get(endpoint_id)


def _url(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"a replica needs a url, got {value!r}", field="url")
    return value


@attrs.frozen
class Replica:
    """One server of a pool.

    Attributes:
        url: its ``base_url``.
        weight: its share among equally loaded siblings (higher goes first).
        max_concurrent_sessions: its own admission limit (default: the pool's).
        id: its endpoint id (default ``<pool>#<n>``, counting from 1).
    """

    url: str = attrs.field(converter=_url)
    weight: float = 1.0
    max_concurrent_sessions: int | None = None
    id: str | None = None


def expand_pool(base: STTEndpoint, replicas: Sequence[Replica | str]) -> tuple[STTEndpoint, ...]:
    """The replicas of pool ``base.id`` as endpoints: ``base`` with each replica's url, id,
    weight and limit."""
    if not replicas:
        raise ConfigError("a pool needs at least one replica", endpoint=base.id, field="replica")
    out = []
    for n, item in enumerate(replicas, start=1):
        r = Replica(item) if isinstance(item, str) else item
        limit = base.max_concurrent_sessions
        out.append(
            attrs.evolve(
                base,
                id=r.id or f"{base.id}#{n}",
                pool=base.id,
                weight=r.weight,
                max_concurrent_sessions=limit
                if r.max_concurrent_sessions is None
                else r.max_concurrent_sessions,
                connection=attrs.evolve(base.connection, base_url=r.url),
            )
        )
    return tuple(out)


_REPLICA_KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "weight": (int, float),
    "max_concurrent_sessions": int,
    "id": str,
}


def replicas_from_dict(value: Any, *, source: str, endpoint: str | None) -> list[Replica]:
    """The ``replicas = [urls]`` list or ``[[endpoint.replica]]`` tables of one endpoint."""
    if not isinstance(value, list) or not value:
        raise ConfigError(
            "must be a non-empty list of URLs or [[endpoint.replica]] tables",
            source=source,
            endpoint=endpoint,
            field="replica",
        )
    out = []
    for i, item in enumerate(value):
        where = f"replica[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"must be a URL or a table, got {item!r}", source=source, endpoint=endpoint
            )
        for key, val in item.items():
            kind = _REPLICA_KEYS.get(key)
            if kind is None:
                raise ConfigError(
                    f"unknown key (known: {', '.join(sorted(_REPLICA_KEYS))})",
                    source=source,
                    endpoint=endpoint,
                    field=f"{where}.{key}",
                )
            if not isinstance(val, kind) or isinstance(val, bool):
                raise ConfigError(
                    f"has the wrong type: {val!r}",
                    source=source,
                    endpoint=endpoint,
                    field=f"{where}.{key}",
                )
        if "url" not in item:
            raise ConfigError(
                "a replica needs a url", source=source, endpoint=endpoint, field=f"{where}.url"
            )
        out.append(Replica(**item))
    return out


def pool_to_dict(members: Sequence[STTEndpoint], table: dict[str, Any]) -> dict[str, Any]:
    """The ``[[endpoint]]`` table of a pool: ``table`` (its first replica's) with the pool's
    id and one ``[[endpoint.replica]]`` per member."""
    first = members[0]
    assert first.pool is not None
    out = {k: v for k, v in table.items() if k not in ("id", "weight", "max_concurrent_sessions")}
    out["id"] = first.pool
    conn = {k: v for k, v in out.pop("connection", {}).items() if k != "base_url"}
    if conn:
        out["connection"] = conn
    rows = []
    for n, ep in enumerate(members, start=1):
        row: dict[str, Any] = {"url": ep.connection.base_url}
        if ep.id != f"{first.pool}#{n}":
            row["id"] = ep.id
        if ep.weight != 1.0:
            row["weight"] = ep.weight
        if ep.max_concurrent_sessions is not None:
            row["max_concurrent_sessions"] = ep.max_concurrent_sessions
        rows.append(row)
    out["replica"] = rows
    return out


def group_pools(order: Iterable[int], endpoints: Sequence[STTEndpoint]) -> list[int]:
    """``order`` with each pool's replicas moved up next to the first of them."""
    order = list(order)
    out: list[int] = []
    seen: set[int] = set()
    for i in order:
        if i in seen:
            continue
        pool = endpoints[i].pool
        if pool is None:
            out.append(i)
            seen.add(i)
            continue
        for j in order:
            if j not in seen and endpoints[j].pool == pool:
                out.append(j)
                seen.add(j)
    return out


def replica_key(
    ep: STTEndpoint, index: int, load: LoadView, latency: LatencyView | None
) -> tuple[int, float, float, int]:
    """Order among a pool's replicas: fewest streams, highest weight, lowest latency, index."""
    recent = latency.latency(ep.id) if latency is not None else None
    return (
        load.in_use(ep.id),
        -ep.weight,
        ep.expected_latency_ms / 1000 if recent is None else recent,
        index,
    )


def balance(
    order: list[tuple[int, STTEndpoint]], load: LoadView, latency: LatencyView | None
) -> list[tuple[int, STTEndpoint]]:
    """Each run of one pool's replicas in ``order``, least loaded first."""
    out: list[tuple[int, STTEndpoint]] = []
    k = 0
    while k < len(order):
        pool = order[k][1].pool
        end = k + 1
        if pool is not None:
            while end < len(order) and order[end][1].pool == pool:
                end += 1
        run = order[k:end]
        if len(run) > 1:
            run.sort(key=lambda item: replica_key(item[1], item[0], load, latency))
        out += run
        k = end
    return out


class BoundRouter:
    """A router that gives every decision the same load view and budget (see
    :meth:`~sttrouter.panel.router.Router.bind`); it has the ``decide`` a routed session
    asks."""

    def __init__(
        self,
        router: Router,
        *,
        load: LoadView | None = None,
        budget: BudgetView | None = None,
        before: Callable[[], object] | None = None,
    ) -> None:
        self.router, self.load, self.budget, self.before = router, load, budget, before

    @property
    def registry(self) -> EndpointRegistry:
        return self.router.registry

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: HealthView | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Decision:
        if self.before is not None:
            self.before()
        return self.router.decide(
            conditions,
            language,
            streaming,
            health,
            environ,
            load=self.load,
            budget=self.budget,
        )
