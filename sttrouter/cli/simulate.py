"""``sttrouter simulate TRACE``: replay a session trace and print, for each stretch of constant
conditions, the chain the router picks and why.

Examples::

    sttrouter simulate examples/traces/tutoring_90min.toml
    sttrouter simulate examples/traces/tutoring_90min.toml --assume-keys --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sttrouter.cli.route import add_router_arguments, environ_from_args, router_from_args
from sttrouter.simulate import Trace, decision_timeline, format_time

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a session trace: the routing decision for each stretch of conditions",
        description="Replay a trace (TOML: duration, initial conditions, timed changes, faults) "
        "and print the chain chosen for each interval and why. Faults are listed, not executed.",
    )
    p.add_argument("trace", help="trace TOML file (see examples/traces/)")
    add_router_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--faults",
        action="store_true",
        help="also execute the trace: run a real routed session over fake engines on a virtual "
        "clock with the trace's faults; report failovers, coverage, time without "
        "transcription and cost per endpoint",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trace = Trace.load(args.trace)
    router = router_from_args(args)
    trace.check_endpoints(router.registry)
    timeline = decision_timeline(trace, router, environ=environ_from_args(args))
    notes = {start: n for start, _end, _c, n in trace.intervals()}
    if args.json:
        out: dict[str, Any] = {
            "trace": {
                "name": trace.name,
                "source": trace.source,
                "duration": trace.duration,
                "language": trace.language,
                "streaming": trace.streaming,
            },
            "intervals": [
                {
                    "start": start,
                    "end": end,
                    "notes": list(notes.get(start, ())),
                    "faults": [f.to_dict() for f in trace.faults_during(start, end)],
                    "decision": decision.to_dict(),
                }
                for start, end, decision in timeline
            ],
            "faults": [f.to_dict() for f in trace.faults],
            "faults_executed": bool(getattr(args, "faults", False)),
        }
        if getattr(args, "faults", False):
            out["simulation"] = _execute(trace, router, args).to_dict()
        print(json.dumps(out, indent=2))
        return 0
    lang = trace.language or "any"
    print(f"{trace.name}  ({trace.source}; {format_time(trace.duration)}, language {lang})")
    for start, end, decision in timeline:
        c = decision.conditions
        span = f"{format_time(start):>8} - {format_time(end):<8}"
        label = "; ".join(notes.get(start, ()))
        print(
            f"\n{span} {c.tier.value} / {c.network.value} / {c.thermal.value}"
            f"   rule {decision.rule}" + (f"   [{label}]" if label else "")
        )
        chain = " -> ".join(decision.chain_ids) or "(none: no endpoint can serve)"
        print(f"    chain:  {chain}")
        for eid, reason in decision.skipped().items():
            print(f"    out:    {eid}: {decision.describe(eid) or reason}")
        executed = "executed below" if getattr(args, "faults", False) else "not executed here"
        for fault in trace.faults_during(start, end):
            print(f"    fault:  {fault.describe(trace.duration)} ({executed})")
    if getattr(args, "faults", False):
        from sttrouter.simulate_faults import format_report

        print("\n" + format_report(_execute(trace, router, args)))
    elif trace.faults:
        print(
            f"\n{len(trace.faults)} fault(s) declared; decisions-only mode does not execute "
            "them (add --faults to run a routed session through them)."
        )
    return 0


def _execute(trace: Trace, router: Any, args: argparse.Namespace) -> Any:
    import asyncio

    from sttrouter.simulate_faults import simulate_faults

    return asyncio.run(simulate_faults(trace, router, environ=environ_from_args(args)))
