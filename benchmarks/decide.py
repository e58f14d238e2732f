"""Routing decisions per second, per core: the compiled ``Router.decide`` against a naive
implementation that scans the policy's rules and checks every endpoint on every call.

Both produce identical ``Decision`` values (checked before timing). The registry has 10
endpoints; the inputs cycle over all 48 tier × network × thermal combinations × 4 languages.

    .venv/bin/python benchmarks/decide.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections.abc import Callable, Mapping
from decimal import Decimal

import attrs

from sttrouter.panel import (
    Conditions,
    ConnectionConfig,
    Decision,
    DeviceTier,
    EndpointRegistry,
    NetworkStatus,
    Policy,
    Router,
    SkipReason,
    STTEndpoint,
    ThermalState,
    Verdict,
    default_policy,
    default_registry,
)
from sttrouter.panel.policy import resolve_selector, tie_break_key

GOAL = 200_000


def ten_endpoints() -> EndpointRegistry:
    reg = default_registry()
    extra = [
        ("deepgram-eu", "deepgram", "cloud", "0.30", 320, ("en", "de", "fr")),
        ("assemblyai-2", "assemblyai", "cloud", "0.37", 350, ("en",)),
        ("glm-server-b", "glm_server", "self_hosted", "0", 170, ("en", "zh")),
        ("glm-lan", "glm_server", "local_server", "0", 90, ("en", "zh", "yue")),
        ("fake-lab", "fake", "cloud", "0.01", 50, ()),
    ]
    for eid, prov, loc, cost, lat, langs in extra:
        reg.register(
            STTEndpoint(
                id=eid,
                provider=prov,
                location=loc,
                cost_per_hour=Decimal(cost),
                expected_latency_ms=lat,
                supported_languages=langs,
                connection=ConnectionConfig(api_key_env="BENCH_KEY" if prov != "fake" else None),
            )
        )
    assert len(reg) == 10
    return reg


def naive_decide(
    registry: EndpointRegistry,
    policy: Policy,
    c: Conditions,
    language: str | None,
    streaming: bool,
    environ: Mapping[str, str],
) -> Decision:
    """The obvious implementation: scan rules, resolve selectors, check every endpoint."""
    eps = registry.endpoints
    rule = policy.rule_for(c.tier, c.network, c.thermal)
    order: list[int] = []
    excluded: set[int] = set()
    if rule is not None:
        for sel in rule.prefer:
            for i in resolve_selector(sel, eps):
                if i not in order:
                    order.append(i)
        for sel in rule.exclude:
            excluded.update(resolve_selector(sel, eps))
    rest = sorted(
        (i for i in range(len(eps)) if i not in order), key=lambda i: tie_break_key(eps[i], i)
    )
    if policy.unlisted == "append":
        order += rest
    else:
        excluded.update(rest)
    last = sorted(
        (i for i in range(len(eps)) if eps[i].provider == "offline"),
        key=lambda i: tie_break_key(eps[i], i),
    )
    order = [i for i in order if i not in last] + last
    excluded.difference_update(last)
    lang = language.lower() if language else None
    reasons: dict[int, SkipReason] = {}
    for i, ep in enumerate(eps):
        if ep.needs_network and c.network is NetworkStatus.DISCONNECTED:
            reasons[i] = SkipReason.NEEDS_NETWORK
        elif c.tier.rank < ep.min_tier.rank:
            reasons[i] = SkipReason.TIER_TOO_LOW
        elif c.thermal.rank > ep.max_thermal.rank:
            reasons[i] = SkipReason.TOO_HOT
        elif i in excluded:
            reasons[i] = SkipReason.NOT_IN_POLICY
        elif ep.memory_gb is not None and c.memory_gb is not None and ep.memory_gb > c.memory_gb:
            reasons[i] = SkipReason.INSUFFICIENT_MEMORY
        elif not ep.supports_language(lang):
            reasons[i] = SkipReason.LANGUAGE_UNSUPPORTED
        elif streaming and not ep.supports_streaming:
            reasons[i] = SkipReason.NOT_STREAMING
        elif not ep.connection.has_api_key(environ):
            reasons[i] = SkipReason.NO_API_KEY
    chain = [i for i in order if i not in reasons]
    rank = {i: k for k, i in enumerate(chain)}
    verdicts = tuple(Verdict(ep.id, rank.get(i), reasons.get(i)) for i, ep in enumerate(eps))
    return Decision(
        conditions=c,
        language=lang,
        streaming=streaming,
        chain=tuple(eps[i] for i in chain),
        verdicts=verdicts,
        rule=None if rule is None else rule.name,
        endpoints=eps,
    )


def rate(
    fn: Callable[[Conditions, str | None], Decision],
    inputs: list[tuple[Conditions, str | None]],
    seconds: float,
) -> float:
    """Decisions per CPU-second of this process (per core, and robust to other processes
    sharing the machine, which wall-clock time is not)."""
    n = len(inputs)
    done = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for c, lang in inputs:
            fn(c, lang)
        done += n
        now = time.process_time()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per variant")
    args = ap.parse_args()
    reg = ten_endpoints()
    policy = default_policy()
    env = {"BENCH_KEY": "x", "DEEPGRAM_API_KEY": "x"}
    inputs = [
        (Conditions(t, n, th), lang)
        for t, n, th in itertools.product(DeviceTier, NetworkStatus, ThermalState)
        for lang in (None, "en", "zh", "de")
    ]
    memo = Router(reg, policy)
    plain = Router(reg, policy, memoize=False)
    for c, lang in inputs:  # same answers
        expected = naive_decide(reg, policy, c, lang, True, env)
        assert memo.decide(c, lang, environ=env) == expected
        assert plain.decide(c, lang, environ=env) == expected

    variants = {
        "naive rule scan": lambda c, lang: naive_decide(reg, policy, c, lang, True, env),
        "compiled": lambda c, lang: plain.decide(c, lang, environ=env),
        "compiled + memo": lambda c, lang: memo.decide(c, lang, environ=env),
    }
    results = {name: rate(fn, inputs, args.seconds) for name, fn in variants.items()}
    # apps build a new Conditions per request: equal to the memoised one, not identical
    fresh = [(attrs.evolve(c), lang) for c, lang in inputs]
    name = "memo, new objects"
    results[name] = rate(variants["compiled + memo"], fresh, args.seconds)
    base = results["naive rule scan"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, 1 core, 10 endpoints, "
        f"{len(inputs)} distinct inputs, {args.seconds:g} CPU-s per variant (rates per CPU-second)"
    )
    print(f"{'variant':<18}{'decisions/s':>14}{'vs naive':>10}")
    for name, r in results.items():
        print(f"{name:<18}{r:>14,.0f}{r / base:>9.1f}x")
    best = min(results["compiled + memo"], results[name])
    print(f"goal {GOAL:,}/s: {'met' if best >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
