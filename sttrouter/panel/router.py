"""``Router.decide``: conditions in, an ordered chain of endpoints and the reason for every
endpoint out. Pure and deterministic; no I/O.

How a decision is made (see ``docs/routing.md``):

1. When the registry changes (its ``version``), the policy is *compiled* against it: for each of
   the 48 tier × network × thermal combinations, the first matching rule's selectors are
   resolved into an ordered candidate list, and every endpoint whose static needs fail
   (network, tier, heat) or that the rule excludes gets its reason. The offline engine is moved
   to the end.
2. Per call: one dict lookup on ``(tier, network, thermal)``, then the candidates are filtered
   by what only the call knows: memory, language, streaming, API key present in the
   environment, the session's budget (priced endpoints are left out once a ``free_only``
   budget is spent) and the health view (breaker). The result is memoised on exactly those
   inputs.
3. A pool's replicas stand next to each other in the chain; with a load view they are ordered
   fewest outstanding streams first (ties: higher weight, lower recent latency, declaration
   order), so a new stream goes to the least loaded replica and a failed one's stream moves to
   a sibling before it moves down the chain.

Policy rules with ``budget_below`` are compiled once per budget band (the intervals between
the policy's thresholds), so the budget costs one bisection per call.

Reasons, in precedence order (the first that applies is reported): ``needs_network``,
``tier_too_low``, ``too_hot``, ``not_in_policy``, ``insufficient_memory``,
``language_unsupported``, ``not_streaming``, ``no_api_key``, ``budget_exhausted``,
``breaker_open``.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import attrs

from sttrouter.endpoint import STTEndpoint
from sttrouter.panel.budgets import BudgetView, Standing
from sttrouter.panel.device import Conditions, DeviceTier, NetworkStatus, ThermalState
from sttrouter.panel.policy import ALL_COMBOS, Combo, Policy, Unlisted, default_policy
from sttrouter.panel.policy import resolve_selector as _resolve
from sttrouter.panel.policy import tie_break_key as _tie_key
from sttrouter.panel.pools import BoundRouter, LatencyView, LoadView, balance, group_pools
from sttrouter.panel.registry import EndpointRegistry

__all__ = ["BoundRouter", "Decision", "HealthView", "Router", "SkipReason", "Verdict"]


class SkipReason(enum.StrEnum):
    """Why an endpoint is not in a decision's chain."""

    NEEDS_NETWORK = "needs_network"
    TIER_TOO_LOW = "tier_too_low"
    TOO_HOT = "too_hot"
    NOT_IN_POLICY = "not_in_policy"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    LANGUAGE_UNSUPPORTED = "language_unsupported"
    NOT_STREAMING = "not_streaming"
    NO_API_KEY = "no_api_key"
    BREAKER_OPEN = "breaker_open"
    BUDGET_EXHAUSTED = "budget_exhausted"


class HealthView(Protocol):
    """The one health-view protocol: may an endpoint take traffic now?

    The router asks it while deciding, and routed sessions while failing over. Breaker boards,
    health monitors and the routing state's combined view implement it; nothing else is asked.
    """

    def is_available(self, endpoint_id: str) -> bool:
        """False when the endpoint's breaker is open or it is known unhealthy."""
        ...


@attrs.frozen
class Verdict:
    """One endpoint's place in a decision: its ``rank`` in the chain, or why it is out."""

    endpoint_id: str
    rank: int | None
    reason: SkipReason | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint_id,
            "rank": self.rank,
            "reason": None if self.reason is None else self.reason.value,
        }


def describe(reason: SkipReason, ep: STTEndpoint, d: Decision) -> str:
    """A sentence saying why ``ep`` was left out of ``d``."""
    c = d.conditions
    if reason is SkipReason.NEEDS_NETWORK:
        return "needs the network; the device is disconnected"
    if reason is SkipReason.TIER_TOO_LOW:
        return f"needs device tier {ep.min_tier.value} or better; this one is {c.tier.value}"
    if reason is SkipReason.TOO_HOT:
        return f"allowed up to {ep.max_thermal.value} heat; the device is {c.thermal.value}"
    if reason is SkipReason.NOT_IN_POLICY:
        return f"left out by policy rule {d.rule!r}"
    if reason is SkipReason.INSUFFICIENT_MEMORY:
        return f"needs {ep.memory_gb:g} GB of memory; {c.memory_gb:g} GB available"
    if reason is SkipReason.LANGUAGE_UNSUPPORTED:
        return f"does not transcribe {d.language!r}"
    if reason is SkipReason.NOT_STREAMING:
        return "cannot stream, and a streaming session was asked for"
    if reason is SkipReason.NO_API_KEY:
        return f"environment variable {ep.connection.api_key_env} is not set"
    if reason is SkipReason.BUDGET_EXHAUSTED:
        who = f"tenant {d.budget.tenant!r}" if d.budget is not None else "the tenant"
        return f"costs {ep.cost_per_hour} US$/h and {who} has spent its budget (free_only)"
    return "unavailable: circuit breaker open or unhealthy"


@attrs.frozen
class Decision:
    """The outcome of :meth:`Router.decide`.

    Attributes:
        conditions: what it was decided for.
        language: the requested language (lower case) or ``None``.
        streaming: whether a streaming session was asked for.
        chain: endpoints to try, best first.
        verdicts: one per registered endpoint, in registration order.
        rule: the policy rule that matched (``None`` when none did).
        endpoints: every registered endpoint at decision time (for explanations).
        load: ``(replica id, streams held)`` of every pool replica in the chain, when the
            decision was given a load view.
        budget: the session's budget standing, when it has a budget.
    """

    conditions: Conditions
    language: str | None
    streaming: bool
    chain: tuple[STTEndpoint, ...]
    verdicts: tuple[Verdict, ...]
    rule: str | None = None
    endpoints: tuple[STTEndpoint, ...] = attrs.field(default=(), repr=False)
    load: tuple[tuple[str, int], ...] = ()
    budget: Standing | None = None

    @property
    def chain_ids(self) -> tuple[str, ...]:
        return tuple(ep.id for ep in self.chain)

    @property
    def primary(self) -> STTEndpoint | None:
        return self.chain[0] if self.chain else None

    def verdict(self, endpoint_id: str) -> Verdict:
        for v in self.verdicts:
            if v.endpoint_id == endpoint_id:
                return v
        raise KeyError(endpoint_id)

    def skipped(self) -> dict[str, SkipReason]:
        return {v.endpoint_id: v.reason for v in self.verdicts if v.reason is not None}

    def describe(self, endpoint_id: str) -> str | None:
        """Why ``endpoint_id`` was left out, as a sentence; ``None`` when it is in the chain."""
        return self._detail(self.verdict(endpoint_id))

    def _detail(self, v: Verdict) -> str | None:
        if v.reason is None:
            return None
        ep = next((e for e in self.endpoints if e.id == v.endpoint_id), None)
        return v.reason.value if ep is None else describe(v.reason, ep, self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (only ids, enums as strings; never connection secrets)."""
        c = self.conditions
        return {
            "conditions": {
                "tier": c.tier.value,
                "network": c.network.value,
                "thermal": c.thermal.value,
                "memory_gb": c.memory_gb,
            },
            "language": self.language,
            "streaming": self.streaming,
            "rule": self.rule,
            "chain": [ep.id for ep in self.chain],
            "verdicts": [{**v.to_dict(), "detail": self._detail(v)} for v in self.verdicts],
            "load": dict(self.load),
            "budget": None if self.budget is None else self.budget.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def explain(self) -> str:
        """A human table: the chain in order, then every skipped endpoint and why."""
        c = self.conditions
        head = (
            f"tier={c.tier.value} network={c.network.value} thermal={c.thermal.value}"
            + (f" memory={c.memory_gb:g}GB" if c.memory_gb is not None else "")
            + f" language={self.language or 'any'} streaming={'yes' if self.streaming else 'no'}"
        )
        lines = [head, f"rule: {self.rule or '(none matched)'}"]
        if self.budget is not None:
            lines += [s.describe() for s in self.budget.statuses]
        by_id = {ep.id: ep for ep in self.endpoints}
        load = dict(self.load)
        rows = [("#", "endpoint", "provider", "location", "why")]
        for v in sorted(self.verdicts, key=lambda v: (v.rank is None, v.rank or 0)):
            ep = by_id.get(v.endpoint_id)
            prov = ep.provider if ep else "?"
            loc = ep.location.value if ep else "?"
            if v.rank is not None:
                why = "chosen"
                if ep is not None and ep.pool is not None:
                    held = load.get(ep.id)
                    why += f" (pool {ep.pool}, weight {ep.weight:g}" + (
                        ")" if held is None else f", {held} streams)"
                    )
                rows.append((str(v.rank + 1), v.endpoint_id, prov, loc, why))
            else:
                rows.append(("-", v.endpoint_id, prov, loc, f"{v.reason}: {self._detail(v)}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if not self.chain:
            lines.append("no endpoint can serve under these conditions")
        return "\n".join(lines)


# --- compiled state ---------------------------------------------------------------------------

_OK = None
# Per-call outcomes are small ints (index into _REASONS), not enum members: enum hashing runs
# Python code, and the memo hashes a tuple of outcomes on every call.
_REASONS: tuple[SkipReason, ...] = tuple(SkipReason)
_CODE = {r: k for k, r in enumerate(_REASONS)}
_NO_MEMORY = _CODE[SkipReason.INSUFFICIENT_MEMORY]
_NO_LANGUAGE = _CODE[SkipReason.LANGUAGE_UNSUPPORTED]
_NO_STREAMING = _CODE[SkipReason.NOT_STREAMING]
_NO_KEY = _CODE[SkipReason.NO_API_KEY]
_BREAKER = _CODE[SkipReason.BREAKER_OPEN]
_BUDGET = _CODE[SkipReason.BUDGET_EXHAUSTED]
_PlanKey = tuple[int, str, str, str]  # budget band, then the enums' plain string values


# (registration index, endpoint, languages, streams, api key env, memory needed, id): a plain
# tuple, because unpacking one is the cheapest thing the per-call loop can do.
_Candidate = tuple[int, STTEndpoint, frozenset[str], bool, str | None, float | None, str]


@attrs.frozen
class _Plan:
    rule: str | None
    candidates: tuple[_Candidate, ...]
    template: tuple[Verdict | None, ...]  # static verdicts by registration index; None = candidate
    pooled: tuple[int, ...] = ()  # positions of candidates that are pool replicas
    priced: tuple[int, ...] = ()  # positions of candidates with a price


@attrs.frozen
class _Compiled:
    version: int
    endpoints: tuple[STTEndpoint, ...]
    plans: Mapping[_PlanKey, _Plan]  # keyed by the enums' plain string values
    # prebuilt verdicts: ranked[i][rank] and skipped[i][reason code]
    ranked: tuple[tuple[Verdict, ...], ...]
    skipped: tuple[tuple[Verdict, ...], ...]
    bands: tuple[float, ...] = ()


def _static_reason(ep: STTEndpoint, combo: Combo) -> SkipReason | None:
    tier, network, thermal = combo
    if ep.needs_network and network is NetworkStatus.DISCONNECTED:
        return SkipReason.NEEDS_NETWORK
    if tier.rank < ep.min_tier.rank:
        return SkipReason.TIER_TOO_LOW
    if thermal.rank > ep.max_thermal.rank:
        return SkipReason.TOO_HOT
    return None


def _is_last_resort(ep: STTEndpoint) -> bool:
    return ep.provider == "offline"


def _order(
    policy: Policy, endpoints: tuple[STTEndpoint, ...], combo: Combo, remaining: float | None
) -> tuple[str | None, list[int], set[int]]:
    """(rule name, ordered indices of endpoints in the chain before filtering, excluded set)."""
    rule = policy.rule_for(*combo, remaining)
    excluded: set[int] = set()
    order: list[int] = []
    if rule is not None:
        for sel in rule.exclude:
            excluded.update(_resolve(sel, endpoints))
        for sel in rule.prefer:
            for i in _resolve(sel, endpoints):
                if i not in order:
                    order.append(i)
    rest = sorted(
        (i for i in range(len(endpoints)) if i not in order),
        key=lambda i: _tie_key(endpoints[i], i),
    )
    if policy.unlisted is Unlisted.APPEND:
        order.extend(rest)
    else:
        excluded.update(i for i in rest if not _is_last_resort(endpoints[i]))
    # the last resort: always allowed, always last
    last = [i for i in order if _is_last_resort(endpoints[i])]
    last += [i for i in rest if _is_last_resort(endpoints[i]) and i not in last]
    last.sort(key=lambda i: _tie_key(endpoints[i], i))
    order = group_pools([i for i in order if i not in last] + last, endpoints)
    excluded.difference_update(last)
    return (None if rule is None else rule.name), order, excluded


def _compile(policy: Policy, registry: EndpointRegistry) -> _Compiled:
    endpoints = registry.endpoints
    n = len(endpoints)
    skipped = tuple(tuple(Verdict(ep.id, None, r) for r in _REASONS) for ep in endpoints)
    ranked = tuple(tuple(Verdict(ep.id, k, None) for k in range(n)) for ep in endpoints)
    plans: dict[_PlanKey, _Plan] = {}
    bands = policy.budget_bands()
    # band k holds remaining shares in [bands[k-1], bands[k]); the last band is "no budget
    # rule matches", as for a session without a budget
    for band, combo in itertools.product(range(len(bands) + 1), ALL_COMBOS):
        remaining = None if band == len(bands) else (bands[band - 1] if band else 0.0)
        rule, order, excluded = _order(policy, endpoints, combo, remaining)
        template: list[Verdict | None] = [None] * n
        candidates = []
        for i, ep in enumerate(endpoints):
            reason = _static_reason(ep, combo)
            if reason is None and (i in excluded or i not in order):
                reason = SkipReason.NOT_IN_POLICY
            if reason is not None:
                template[i] = skipped[i][_CODE[reason]]
        for i in order:
            if template[i] is None:
                ep = endpoints[i]
                candidates.append(
                    (
                        i,
                        ep,
                        ep.supported_languages,
                        ep.supports_streaming,
                        ep.connection.api_key_env,
                        ep.memory_gb,
                        ep.id,
                    )
                )
        key = (band, combo[0]._value_, combo[1]._value_, combo[2]._value_)
        pooled = tuple(p for p, c in enumerate(candidates) if c[1].pool is not None)
        priced = tuple(p for p, c in enumerate(candidates) if c[1].cost_per_hour > 0)
        plans[key] = _Plan(rule, tuple(candidates), tuple(template), pooled, priced)
    return _Compiled(registry.version, endpoints, plans, ranked, skipped, bands)


_MEMO_LIMIT = 4096

# (outcome per candidate from the checks that depend only on the call's arguments,
#  (position, api key env, id) of usable candidates that need a key,
#  (position, api key env, id) of every usable candidate)
_Check = tuple[int, str | None, str]
_Prefiltered = tuple[tuple[int | None, ...], tuple[_Check, ...], tuple[_Check, ...]]


def _prefilter(
    plan: _Plan, lang: str | None, base: str | None, streaming: bool, mem: float | None
) -> _Prefiltered:
    """Memory, language and streaming checks: a function of the call's arguments only."""
    outcome: list[int | None] = []
    usable: list[_Check] = []
    for pos, (_i, _ep, langs, streams, key_env, need_mem, eid) in enumerate(plan.candidates):
        if need_mem is not None and mem is not None and need_mem > mem:
            outcome.append(_NO_MEMORY)
        elif lang is not None and langs and lang not in langs and base not in langs:
            outcome.append(_NO_LANGUAGE)
        elif streaming and not streams:
            outcome.append(_NO_STREAMING)
        else:
            outcome.append(_OK)
            usable.append((pos, key_env, eid))
    keyed = tuple(c for c in usable if c[1] is not None)
    return tuple(outcome), keyed, tuple(usable)


class Router:
    """Decides, for given conditions, which endpoints to try and in what order.

    Args:
        registry: the endpoints to choose from. The router recompiles when it changes.
        policy: the rules; :func:`~sttrouter.panel.policy.default_policy` when ``None``.
        memoize: keep up to 4096 recent decisions, keyed on every input that can change one
            (conditions, language, streaming, and the per-endpoint outcome of the key and
            health checks), so a repeated question returns the same ``Decision`` object.
    """

    def __init__(
        self, registry: EndpointRegistry, policy: Policy | None = None, *, memoize: bool = True
    ) -> None:
        self.registry = registry
        self.policy = default_policy() if policy is None else policy
        self._compiled: _Compiled | None = None
        self._memo: dict[tuple[Any, ...], Decision] = {}
        self._filters: dict[tuple[Any, ...], _Prefiltered] = {}
        self._memoize = memoize

    def _state(self) -> _Compiled:
        compiled = self._compiled
        if compiled is None or compiled.version != self.registry.version:
            compiled = self._compiled = _compile(self.policy, self.registry)
            self._memo.clear()
            self._filters.clear()
        return compiled

    def decide(
        self,
        conditions: Conditions,
        language: str | None = None,
        streaming: bool = True,
        health: HealthView | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        load: LoadView | None = None,
        budget: BudgetView | None = None,
    ) -> Decision:
        """The ordered chain for ``conditions`` and a verdict for every registered endpoint.

        Args:
            conditions: device tier, network, thermal state and (optional) free memory.
            language: BCP-47 code the session needs (``"en"``, ``"zh-CN"``), or ``None``.
            streaming: the session streams (endpoints that cannot are skipped).
            health: breaker/health view; endpoints it reports unavailable are skipped.
            environ: where API keys are looked up (default ``os.environ``); only presence
                is checked, values are never read into the decision.
            load: streams held per endpoint (an admission controller, or a
                :class:`~sttrouter.panel.pools.PoolLoad` with recent latencies): orders each
                pool's replicas, least loaded first.
            budget: the session's budget (``book.view(tenant)``): rules with
                ``budget_below`` match on it, and a spent ``free_only`` budget leaves priced
                endpoints out (``budget_exhausted``).
        """
        state = self._compiled
        if state is None or state.version != self.registry.version:
            state = self._state()
        standing = budget.standing() if budget is not None else None
        band = len(state.bands)
        free_only = False
        if standing is not None:
            remaining = standing.remaining
            if state.bands and remaining is not None:
                band = bisect.bisect_right(state.bands, remaining)
            free_only = standing.free_only
        plan = state.plans[
            (
                band,
                conditions.tier._value_,
                conditions.network._value_,
                conditions.thermal._value_,
            )
        ]
        env = os.environ if environ is None else environ
        lang = base = None
        if language is not None:
            lang = language.lower()
            base = lang.partition("-")[0]
        mem = conditions.memory_gb
        fkey = (id(plan), lang, streaming, mem)
        pre = self._filters.get(fkey) if self._memoize else None
        if pre is None:
            pre = _prefilter(plan, lang, base, streaming, mem)
            if self._memoize:
                if len(self._filters) >= _MEMO_LIMIT:
                    self._filters.clear()
                self._filters[fkey] = pre
        outcome, keyed, usable = pre
        checks = keyed if health is None and not free_only else usable
        if checks:
            # what can change between calls without the router seeing it: keys, budget, health
            dynamic = list(outcome)
            priced = plan.priced if free_only else ()
            for pos, key_env, eid in checks:
                if key_env is not None and not env.get(key_env):
                    dynamic[pos] = _NO_KEY
                elif pos in priced:
                    dynamic[pos] = _BUDGET
                elif health is not None and not health.is_available(eid):
                    dynamic[pos] = _BREAKER
            outcome = tuple(dynamic)
        loads: tuple[tuple[str, int], ...] = ()
        latency: LatencyView | None = None
        if load is not None and plan.pooled:
            if callable(getattr(load, "latency", None)):
                latency = cast("LatencyView", load)
            cands = plan.candidates
            loads = tuple(
                (cands[p][6], load.in_use(cands[p][6])) for p in plan.pooled if outcome[p] is None
            )
        # a budget's spend and recent latencies change with every call: not memoised
        memoize = self._memoize and standing is None and latency is None
        if memoize:
            key = (fkey, outcome, loads)
            hit = self._memo.get(key)
            if hit is not None and (hit.conditions is conditions or hit.conditions == conditions):
                return hit
        verdicts = list(plan.template)
        order: list[tuple[int, STTEndpoint]] = []
        ranked, skipped = state.ranked, state.skipped
        for (i, ep, *_), reason in zip(plan.candidates, outcome, strict=True):
            if reason is None:
                order.append((i, ep))
            else:
                verdicts[i] = skipped[i][reason]
        if loads:
            assert load is not None
            order = balance(order, load, latency)
        for rank, (i, _ep) in enumerate(order):
            verdicts[i] = ranked[i][rank]
        decision = Decision(
            conditions=conditions,
            language=lang,
            streaming=streaming,
            chain=tuple(ep for _i, ep in order),
            verdicts=cast("tuple[Verdict, ...]", tuple(verdicts)),
            rule=plan.rule,
            endpoints=state.endpoints,
            load=loads,
            budget=standing,
        )
        if memoize:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = decision
        return decision

    def bind(
        self,
        *,
        load: LoadView | None = None,
        budget: BudgetView | None = None,
        before: Callable[[], object] | None = None,
    ) -> BoundRouter:
        """This router with a load view and a budget given to every decision: what a routed
        session takes as its ``router`` (``RoutedSession(router=router.bind(...))``).

        Args:
            load: streams held per endpoint (``state.admission``), for pool balancing.
            budget: the session's budget (``book.view(tenant)``).
            before: called before every decision (e.g. a budget meter's ``sample``, so spend
                is metered at each start, failover and utterance boundary).
        """
        return BoundRouter(self, load=load, budget=budget, before=before)

    def plan(
        self, tier: DeviceTier, network: NetworkStatus, thermal: ThermalState
    ) -> tuple[str | None, tuple[str, ...]]:
        """The matched rule and the candidate ids before per-call filtering, for a session
        without a budget (for tooling)."""
        state = self._state()
        p = state.plans[
            (
                len(state.bands),
                DeviceTier(tier).value,
                NetworkStatus(network).value,
                ThermalState(thermal).value,
            )
        ]
        return p.rule, tuple(c[6] for c in p.candidates)
