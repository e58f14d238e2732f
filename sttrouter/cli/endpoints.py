"""``sttrouter endpoints``: list the endpoints of a registry file, or check one.

Examples::

    sttrouter endpoints list                    # the built-in registry
    sttrouter endpoints list endpoints.toml --json
    sttrouter endpoints check endpoints.toml    # exit 1 and a message naming file, endpoint, field
    sttrouter endpoints status endpoints.toml   # the fleet's shared state (the file's [state])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from sttrouter.endpoint import STTEndpoint
from sttrouter.panel.registry import EndpointRegistry, default_registry, endpoint_to_dict

__all__ = ["fleet_status", "fleet_table", "register", "run", "table"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "endpoints",
        help="list or validate an endpoint registry file",
        description="List the endpoints of a registry TOML file (or the built-in registry), "
        "or validate one.",
    )
    sub = p.add_subparsers(dest="endpoints_command", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="print the endpoints as a table")
    lst.add_argument("file", nargs="?", help="registry TOML (default: the built-in registry)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    chk = sub.add_parser("check", help="validate a registry file and print its table")
    chk.add_argument("file", help="registry TOML")
    st = sub.add_parser(
        "status",
        help="print the fleet view: breakers, leases in use, recent failures, usage",
        description="Read the routing state the replicas share (the registry file's [state] "
        "table; its url_env names the variable holding the Redis URL) and print it. Exit 2 "
        "when the state store does not answer.",
    )
    st.add_argument("file", help="registry TOML with a [state] table")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _key_state(ep: STTEndpoint) -> str:
    env = ep.connection.api_key_env
    if env is None:
        return "-"
    return f"{env} ({'set' if os.environ.get(env) else 'not set'})"


def table(registry: EndpointRegistry) -> str:
    """A fixed-width table of the registry (no secrets: key columns show the variable name)."""
    head = (
        "id", "provider", "location", "latency", "rel", "cost/h", "stream", "network",
        "min tier", "max heat", "mem GB", "languages", "api key",
    )  # fmt: skip
    rows = [head]
    for ep in registry:
        langs = ",".join(sorted(ep.supported_languages)) or "any"
        if len(langs) > 24:
            langs = f"{len(ep.supported_languages)} languages"
        rows.append(
            (
                ep.id,
                ep.provider,
                ep.location.value,
                f"{ep.expected_latency_ms:g}ms",
                f"{ep.reliability_score:g}",
                f"${ep.cost_per_hour}",
                "yes" if ep.supports_streaming else "no",
                "needs" if ep.needs_network else "no",
                ep.min_tier.value,
                ep.max_thermal.value,
                "-" if ep.memory_gb is None else f"{ep.memory_gb:g}",
                langs,
                _key_state(ep),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def fleet_table(rows: dict[str, dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`fleet_status` rows."""
    head = ("id", "breaker", "leases", "last failure", "usage")
    out = [head]
    for eid, row in rows.items():
        limit = row.get("limit")
        leases = f"{row.get('leases_fleet', row.get('in_use', 0))}/{limit if limit else '-'}"
        last = row.get("last_failure")
        failure = "-"
        if last:
            failure = f"{_age(now - last['at'])}: {last['message']}"
            if last["permanent"]:
                failure += " (unusable)"
        usage = row.get("usage") or {}
        used = (
            f"{usage.get('audio_seconds', 0):g}s, {usage.get('sessions', 0)} sessions, "
            f"${usage.get('cost', 0):.4f}"
            if usage
            else "-"
        )
        out.append((eid, row.get("breaker", "closed"), leases, failure[:60], used))
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in out
    )


async def fleet_status(registry: EndpointRegistry) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the store's status, endpoint id → its fleet row) for the registry's ``[state]``."""
    from sttrouter.state import RedisState, store_from_config

    store = store_from_config(registry.state, source=registry.source)
    try:
        await store.start()
        if isinstance(store, RedisState):
            if not store.status()["ok"]:
                return store.status(), {}
            rows = await store.fleet(registry)
        else:
            rows = store.snapshot()
        return store.status(), rows
    finally:
        await store.aclose()


def _status(args: argparse.Namespace) -> int:
    registry = EndpointRegistry.load(args.file)
    if not registry.state:
        print(
            f"{args.file} has no [state] table: routing state lives in each process and "
            'nothing is shared; add [state] url_env = "STTROUTER_REDIS_URL" to share it'
        )
        return 1
    status, rows = asyncio.run(fleet_status(registry))
    if args.json:
        print(json.dumps({"store": status, "endpoints": rows}, indent=2))
    else:
        print(
            f"state store {status.get('server', status['store'])}: "
            f"{'ok' if status['ok'] else 'unreachable (' + str(status.get('error')) + ')'}"
        )
        if rows:
            print(fleet_table(rows, time.monotonic()))
    return 0 if status["ok"] else 2


def run(args: argparse.Namespace) -> int:
    if args.endpoints_command == "status":
        return _status(args)
    if args.endpoints_command == "check":
        registry = EndpointRegistry.load(args.file)
        print(table(registry))
        print(f"{args.file}: {len(registry)} endpoint(s), valid")
        return 0
    registry = default_registry() if args.file is None else EndpointRegistry.load(args.file)
    if args.json:
        print(json.dumps([endpoint_to_dict(ep) for ep in registry], indent=2))
    else:
        print(table(registry))
    return 0
