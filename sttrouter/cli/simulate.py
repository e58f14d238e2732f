"""``sttrouter simulate TRACE``: replay a session trace and print, for each stretch of constant
conditions, the chain the router picks and why.

Examples::

    sttrouter simulate examples/traces/tutoring_90min.toml
    sttrouter simulate examples/traces/tutoring_90min.toml --assume-keys --json
    sttrouter simulate examples/traces/commute_pro_max.toml --faults   # exit 1: words were lost

With ``--faults`` the exit status is 1 when any spoken word or second of audio went
untranscribed, with a one-line summary on stderr, so scripts and CI can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from sttrouter.cli.route import add_router_arguments, environ_from_args, router_from_args
from sttrouter.simulate import Trace, decision_timeline, format_time

if TYPE_CHECKING:
    from sttrouter.simulate_faults import FaultSimulation

__all__ = ["loss_summary", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a session trace: the routing decision for each stretch of conditions",
        description="Replay a trace (TOML: duration, initial conditions, timed changes, faults) "
        "and print the chain chosen for each interval and why. Faults are listed, not executed, "
        "unless --faults is given; then the exit status is 1 when words or audio were lost.",
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
        if not getattr(args, "faults", False):
            print(json.dumps(out, indent=2))
            return 0
        simulation = _execute(trace, router, args)
        out["simulation"] = simulation.to_dict()
        print(json.dumps(out, indent=2))
        return _verdict(simulation)
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

        simulation = _execute(trace, router, args)
        print("\n" + format_report(simulation))
        return _verdict(simulation)
    if trace.faults:
        print(
            f"\n{len(trace.faults)} fault(s) declared; decisions-only mode does not execute "
            "them (add --faults to run a routed session through them)."
        )
    return 0


def loss_summary(simulation: FaultSimulation) -> str | None:
    """One line saying what a fault simulation lost, or ``None`` when nothing was lost."""
    missing, gap = simulation.words_missing, simulation.uncovered_seconds
    if not missing and not gap:
        return None
    return (
        f"{missing} of {simulation.words} words were not transcribed and {gap:.1f} s of audio "
        f"got no final"
    )


def _verdict(simulation: FaultSimulation) -> int:
    summary = loss_summary(simulation)
    if summary is None:
        return 0
    print(f"sttrouter: simulate: {summary}", file=sys.stderr)
    return 1


def _execute(trace: Trace, router: Any, args: argparse.Namespace) -> FaultSimulation:
    import asyncio

    from sttrouter.simulate_faults import simulate_faults

    return asyncio.run(simulate_faults(trace, router, environ=environ_from_args(args)))
